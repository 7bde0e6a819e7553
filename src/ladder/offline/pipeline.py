"""Shared steps of ``ladder train / calibrate / eval`` and the routing benchmark."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ladder.errors import OutcomesError
from ladder.outcomes import Outcomes
from ladder.outcomes.io import load_routellm, read_jsonl
from ladder.outcomes.schema import stable_split

# USD per 1M tokens (input, output) used for RouteLLM's models when a $ figure is wanted:
# Mixtral-8x7B at a typical hosted price, GPT-4-1106-preview at OpenAI's list price.
ROUTELLM_PRICES = {"weak": (0.6, 0.6), "strong": (10.0, 30.0)}


@dataclass(frozen=True)
class Split:
    train: Outcomes
    test: Outcomes


def load_outcomes(source: str, data_root: Path | None = None) -> tuple[Outcomes, np.ndarray]:
    """``routellm:mmlu`` / ``routellm:gsm8k`` (read from data_root) or a Ladder JSONL path.

    Returns the outcomes and a mask of rows to keep out of test sets (contaminated prompts).
    """
    if source.startswith("routellm:"):
        if data_root is None:
            raise OutcomesError("routellm sources need --data (the shared data folder)")
        return load_routellm(Path(data_root), source.split(":", 1)[1])
    outcomes = read_jsonl(Path(source))
    return outcomes, np.zeros(len(outcomes), bool)


def split(outcomes: Outcomes, exclude_from_test: np.ndarray, test_fraction: float = 0.2) -> Split:
    """80/20 by a stable hash of the id; excluded rows never enter the test part."""
    is_test = stable_split(outcomes.ids, test_fraction)
    return Split(outcomes.take(~is_test), outcomes.take(is_test & ~exclude_from_test))


def answer_tokens(outcomes: Outcomes) -> np.ndarray:
    """[n, R] output tokens of each rung's answer: recorded, else response length/4, else 1 token
    (a multiple-choice letter)."""
    n = len(outcomes)
    if outcomes.tokens is not None:
        return outcomes.tokens
    return np.stack(
        [
            np.array([len(t) / 4 for t in outcomes.responses[rung]]) if rung in outcomes.responses else np.ones(n)
            for rung in outcomes.rungs
        ],
        axis=1,
    )


def rung_costs(outcomes: Outcomes, prices: dict[str, tuple[float, float]], output_cap: int | None = None) -> np.ndarray:
    """[n, R] USD per call — the one cost model of calibration, benchmarks and serving (where
    ``x-ladder-cost-usd`` prices the same tokens): the prompt's tokens as the rung recorded them
    (chars/4 where outcomes carry no count), output = ``answer_tokens``, at most ``output_cap`` of
    them (the cost of a rung stopped after a prefix decision)."""
    estimate = np.array([len(q) / 4 for q in outcomes.queries])
    tokens = answer_tokens(outcomes)
    cols = []
    for j, rung in enumerate(outcomes.rungs):
        if rung not in prices:
            raise OutcomesError(f"no price for rung {rung!r}; prices given for {sorted(prices)}")
        recorded = outcomes.signals.get(f"{rung}/prompt_tokens")
        prompt_tokens = estimate if recorded is None else np.where(np.isfinite(recorded), recorded, estimate)
        out = tokens[:, j]
        if output_cap is not None:
            out = np.minimum(out, output_cap)
        p_in, p_out = prices[rung]
        cols.append((prompt_tokens * p_in + out * p_out) / 1e6)
    return np.stack(cols, axis=1)


def parse_prices(items: list[str] | None, rungs: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """``rung=IN:OUT`` strings (USD per 1M tokens); defaults to RouteLLM's when rungs are weak/strong."""
    if not items:
        if set(rungs) <= set(ROUTELLM_PRICES):
            return dict(ROUTELLM_PRICES)
        raise OutcomesError(f"give --price RUNG=IN:OUT for every rung of {list(rungs)}")
    prices = {}
    for item in items:
        try:
            rung, pair = item.split("=", 1)
            p_in, p_out = (float(x) for x in pair.split(":", 1))
        except ValueError:
            raise OutcomesError(f"bad --price {item!r}; expected RUNG=IN:OUT, e.g. strong=10:30") from None
        prices[rung] = (p_in, p_out)
    return prices


@dataclass(frozen=True)
class ThreeWay:
    fit: Outcomes
    validation: Outcomes
    test: Outcomes


def three_way(outcomes: Outcomes, exclude_from_test: np.ndarray) -> ThreeWay:
    """Test = the stable 20% (as in ``split``); the rest splits again, stably, 80/20 into
    fit (train) and validation (calibration)."""
    parts = split(outcomes, exclude_from_test)
    is_val = stable_split(parts.train.ids, 0.2, salt="ladder-validation")
    return ThreeWay(parts.train.take(~is_val), parts.train.take(is_val), parts.test)


def parse_target(text: str, rungs: tuple[str, ...]):  # noqa: ANN201 (Target)
    """``strong<=0.3``, ``large<=0.2,medium<=0.5``, ``cost<=1.5`` ($/1K queries), ``quality>=0.8``
    (``policies.calibrate.parse_target``; a bad one is an ``OutcomesError`` here: one CLI line)."""
    from ladder.policies.calibrate import parse_target as parse

    try:
        return parse(text, rungs)
    except ValueError as exc:
        raise OutcomesError(str(exc)) from None


def measured_prices(outcomes: Outcomes, usd_per_hour: float = 1.0) -> dict[str, tuple[float, float]]:
    """Per rung, (input, output) USD per 1M tokens from the compute each call was measured to take:
    ``compute_s`` (the engine's batch time shared per request, recorded by ``ladder collect``)
    fitted per rung by non-negative least squares as a × prompt tokens + b × output tokens, priced
    at ``usd_per_hour`` of the machine that ran them. Prices that the hardware set, not chosen."""
    from scipy.optimize import nnls

    out = {}
    for j, rung in enumerate(outcomes.rungs):
        compute = outcomes.signals.get(f"{rung}/compute_s")
        prompt = outcomes.signals.get(f"{rung}/prompt_tokens")
        if compute is None or prompt is None or outcomes.tokens is None:
            raise OutcomesError(f"rung {rung!r}: the outcomes carry no compute_s/prompt_tokens (collect them anew)")
        ok = np.isfinite(compute) & np.isfinite(prompt) & np.isfinite(outcomes.tokens[:, j])
        x = np.stack([prompt[ok], outcomes.tokens[ok, j]], axis=1)
        (per_in, per_out), _ = nnls(x, compute[ok])
        scale = 1e6 * usd_per_hour / 3600  # seconds per token -> USD per 1M tokens
        out[rung] = (round(float(per_in * scale), 4), round(float(per_out * scale), 4))
    return out
