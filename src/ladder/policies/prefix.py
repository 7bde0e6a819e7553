"""Prefix decisions: accept or escalate a rung's answer from its first k tokens, so it can stream.

A full-answer IDK step makes a routed stream wait for the whole answer before its first token
reaches the client (an answer must be accepted before it is shown: two rungs are never spliced).
A prefix gate reads the first ``k`` tokens' log-probabilities and the router's prior and says
ACCEPT (stream the rest live), ESCALATE (stop the rung now: it costs only k tokens) or WAIT (let the
full-answer IDK step judge the whole answer, as before). With ``accept_at`` above 1 and
``escalate_below`` below 0 a gate always waits, i.e. the policy is exactly the full-answer one.

Fitting: one logistic model per (rung, k) on the same labels as the IDK model (is this rung as
good as the next?), trained on collected outcomes, which carry per-token log-probabilities.
Calibration (``calibrate_prefix``): with the router and full-answer IDK thresholds already chosen
for the target, pick k and each rung's two gate thresholds on the validation part so that the
target still holds with its margin, quality stays within ``tolerance`` of the full-answer policy
and cost within ``max_cost_increase`` of it, minimising the mean delay before the client's first
token, counted in generated tokens (k per prefix decision, a whole answer per WAIT; ties: the
cheaper). Waiting everywhere is always a candidate, so the choice is never worse than it. Pure
numpy.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ladder.policies.calibrate import (
    OperatingPoint,
    Simulation,
    Target,
    _meets,
    _point,
    start_rungs,
)
from ladder.policies.idk import AnswerView, IdkModel
from ladder.types import PrefixVerdict

# Exact on the first k tokens both when fitting (outcomes store every token's log-probability)
# and when serving (deltas carry them); text features of a prefix would need the tier's tokenizer
# to cut the recorded answers at k tokens, so they are left out.
PREFIX_SIGNALS = ("first_logprob", "mean_logprob", "min_logprob", "p10_logprob", "prior", "prior_logit")
CANDIDATE_TOKENS = (1, 4, 16, 32)
NEVER_ACCEPT, NEVER_ESCALATE = 2.0, -1.0  # gate thresholds that make it always WAIT


def prefix_view(logprobs: tuple[float, ...], prior: float, k: int) -> AnswerView:
    """What a gate sees of an answer: its first k log-probabilities and the router's prior — the
    same when fitting on recorded answers as when judging a live stream."""
    return AnswerView("", tuple(logprobs[:k]), prior)


@dataclass(frozen=True)
class PrefixGate:
    tokens: int  # k: how many tokens of the answer the gate reads
    model: IdkModel  # P(this rung is good enough | the first k tokens, the router's prior)
    accept_at: float = NEVER_ACCEPT
    escalate_below: float = NEVER_ESCALATE

    def score(self, logprobs: tuple[float, ...], prior: float) -> float:
        return float(self.model.proba([prefix_view(logprobs, prior, self.tokens)])[0])

    def judge(self, logprobs: tuple[float, ...], prior: float) -> PrefixVerdict:
        p = self.score(logprobs, prior)
        if p >= self.accept_at:
            return PrefixVerdict.ACCEPT
        if p < self.escalate_below:
            return PrefixVerdict.ESCALATE
        return PrefixVerdict.WAIT

    @property
    def active(self) -> bool:
        return self.accept_at <= 1.0 or self.escalate_below >= 0.0


@dataclass(frozen=True)
class PrefixSimulation:
    sim: Simulation
    live: np.ndarray  # [n] bool: the answer streamed as generated (no whole-answer wait on the way)
    decided_early: np.ndarray  # [n] bool: some rung was accepted or escalated on its prefix
    delay: np.ndarray  # [n] tokens generated before the client's first token


def simulate_prefix(
    route_scores: np.ndarray,  # [n, R-1]
    thresholds: tuple[float, ...],
    quality: np.ndarray,  # [n, R]
    rung_cost: np.ndarray,  # [n, R] a whole answer
    prefix_cost: np.ndarray,  # [n, R] the prompt and the first k tokens
    accept_scores: np.ndarray,  # [n, R-1] full-answer IDK
    accept_thresholds: tuple[float, ...],
    gate_scores: np.ndarray,  # [n, R-1] prefix gate
    accept_at: tuple[float, ...],
    escalate_below: tuple[float, ...],
    tokens: np.ndarray | None = None,  # [n, R] answer lengths (for ``delay``)
    k: int = 0,
) -> PrefixSimulation:
    """Replays a streamed cascade with prefix gates: the same start rule as ``simulate``."""
    n, r = quality.shape
    start = start_rungs(route_scores, thresholds)
    done = np.zeros(n, bool)
    answered = np.full(n, r - 1)
    reached = np.zeros((n, r), bool)
    cost = np.zeros(n)
    waited = np.zeros(n, bool)
    early = np.zeros(n, bool)
    delay = np.zeros(n)
    tokens = np.zeros((n, r)) if tokens is None else np.nan_to_num(tokens)  # an unrecorded length counts 0
    for b in range(r - 1):
        here = ~done & (start <= b)
        ok_early = here & (gate_scores[:, b] >= accept_at[b])
        no_early = here & ~ok_early & (gate_scores[:, b] < escalate_below[b])
        wait = here & ~ok_early & ~no_early
        ok = ok_early | (wait & (accept_scores[:, b] >= accept_thresholds[b]))
        reached[:, b] = here
        cost += np.where(no_early, prefix_cost[:, b], np.where(here, rung_cost[:, b], 0.0))
        answered = np.where(ok, b, answered)
        delay += np.where(wait, tokens[:, b], np.where(here, min(k, 1 << 30), 0))
        waited |= wait
        early |= ok_early | no_early
        done |= ok
    reached[:, r - 1] = ~done
    cost += np.where(~done, rung_cost[:, r - 1], 0.0)
    sim = Simulation(answered, reached, quality[np.arange(n), answered], cost)
    return PrefixSimulation(sim, ~waited, early, delay)


def _grid(scores: np.ndarray, per_dim: int) -> list[float]:
    return sorted(set(np.quantile(scores, np.linspace(0, 1, per_dim)).tolist()))


@dataclass(frozen=True)
class PrefixChoice:
    tokens: int  # 0: no k met the constraints better than waiting (the policy waits)
    accept_at: tuple[float, ...]
    escalate_below: tuple[float, ...]
    point: OperatingPoint
    live: float  # share of validation requests that stream live
    delay: float  # mean tokens generated before the client's first token
    full_point: OperatingPoint  # the full-answer policy on the same rows
    full_delay: float

    def as_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "accept_at": list(self.accept_at),
            "escalate_below": list(self.escalate_below),
            "live": self.live,
            "delay_tokens": self.delay,
            "full_delay_tokens": self.full_delay,
            "quality": self.point.quality,
            "cost_per_1k": self.point.cost_per_1k,
            "full_quality": self.full_point.quality,
            "full_cost_per_1k": self.full_point.cost_per_1k,
        }


def calibrate_prefix(
    target: Target,
    route_scores: np.ndarray,
    thresholds: tuple[float, ...],
    quality: np.ndarray,
    rung_cost: np.ndarray,
    prefix_costs: dict[int, np.ndarray],  # k -> [n, R]
    accept_scores: np.ndarray,
    accept_thresholds: tuple[float, ...],
    gate_scores: dict[int, np.ndarray],  # k -> [n, R-1]
    tokens: np.ndarray,  # [n, R] answer lengths
    tolerance: float = 0.01,
    max_cost_increase: float = 0.05,
    n_future: int | None = None,
    per_dim: int = 9,
) -> PrefixChoice:
    """k and the gate thresholds (see the module docstring); waiting is always a candidate."""
    n, r = quality.shape
    n_future = n_future or n
    never = ((NEVER_ACCEPT,) * (r - 1), (NEVER_ESCALATE,) * (r - 1))

    def run(k: int, acc: tuple[float, ...], esc: tuple[float, ...]) -> tuple[PrefixSimulation, OperatingPoint]:
        gates = gate_scores.get(k, np.zeros((n, r - 1)))
        ps = simulate_prefix(
            route_scores,
            thresholds,
            quality,
            rung_cost,
            prefix_costs.get(k, rung_cost),
            accept_scores,
            accept_thresholds,
            gates,
            acc,
            esc,
            tokens,
            k,
        )
        return ps, _point(ps.sim, thresholds, accept_thresholds, n_future)

    full_sim, full = run(0, *never)
    full_delay = float(full_sim.delay.mean())
    best = PrefixChoice(0, *never, full, float(full_sim.live.mean()), full_delay, full, full_delay)
    best_key = (-full_delay, -full.cost_per_1k)
    for k, gates in sorted(gate_scores.items()):
        per_rung = []
        for b in range(r - 1):
            grid = _grid(gates[:, b], per_dim)
            per_rung.append([(a, e) for a in [*grid, NEVER_ACCEPT] for e in [NEVER_ESCALATE, *grid] if e <= a])
        for combo in itertools.product(*per_rung):
            acc, esc = tuple(c[0] for c in combo), tuple(c[1] for c in combo)
            ps, point = run(k, acc, esc)
            if point.quality < full.quality - tolerance or point.cost_per_1k > full.cost_per_1k * (
                1 + max_cost_increase
            ):
                continue
            if not _meets(point, ps.sim, target, n_future):
                continue
            key = (-float(ps.delay.mean()), -point.cost_per_1k)
            if key > best_key:
                best = PrefixChoice(k, acc, esc, point, float(ps.live.mean()), -key[0], full, full_delay)
                best_key = key
    return best
