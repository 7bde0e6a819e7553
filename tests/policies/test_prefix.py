"""Prefix gates: fitted on the collected outcomes' per-token log-probabilities, calibrated to
never be worse than waiting for the whole answer, stored in the policy file, served."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ladder.offline.commands import calibrate_policy
from ladder.offline.pipeline import answer_tokens, parse_prices, parse_target, rung_costs, three_way
from ladder.offline.training import TrainSpec, gate_scores, idk_scores, train_policy
from ladder.outcomes.io import read_jsonl
from ladder.outcomes.schema import Outcomes
from ladder.policies.calibrate import simulate
from ladder.policies.features import FeaturizerKind
from ladder.policies.prefix import calibrate_prefix, simulate_prefix
from ladder.policies.store import load_policy, save_policy
from ladder.types import Generation, PrefixVerdict, Query, Route

ROOT = Path(__file__).resolve().parents[2]
PRICES = ["small=0.02:0.04", "medium=0.08:0.16", "large=0.24:0.48"]


@pytest.fixture(scope="module")
def code_math(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prefix") / "code-math.jsonl"
    path.write_text("".join((ROOT / "data" / "outcomes" / f).read_text() for f in ("humaneval.jsonl", "gsm8k.jsonl")))
    return path


@pytest.fixture(scope="module")
def fitted(code_math: Path):
    outcomes = read_jsonl(code_math)
    return train_policy(
        three_way(outcomes, np.zeros(len(outcomes), bool)).fit, TrainSpec(FeaturizerKind.TFIDF)
    ), outcomes


def test_gates_are_fitted_per_rung_and_candidate_k_and_wait_until_calibrated(fitted):
    policy, _ = fitted
    assert sorted(policy.prefix) == [0, 1]  # small and medium; the top rung is never judged
    assert [g.tokens for g in policy.prefix[0]] == [1, 4, 16, 32]
    partial = Generation("small", "def f", (1, 2), (-0.1, -0.2), 9, "length", 0, 0)
    route = Route(0, policy.version, (0.9, 0.9), (0.5, 0.5))
    assert policy.prefix_tokens(0) == 0 and policy.judge_prefix(partial, route) is PrefixVerdict.WAIT


def test_gates_that_never_decide_replay_exactly_as_the_full_answer_policy(fitted):
    policy, outcomes = fitted
    part = three_way(outcomes, np.zeros(len(outcomes), bool)).validation
    x = policy.featurizer.transform(list(part.queries))
    route = np.stack([s.proba(x) for s in policy.boundaries], axis=1)
    accept = idk_scores(policy, part, route)
    costs = rung_costs(part, parse_prices(PRICES, policy.rungs))
    th, ath = (0.6, 0.4), (0.5, 0.5)
    plain = simulate(route, th, part.quality, costs, accept, ath)
    gated = simulate_prefix(
        route,
        th,
        part.quality,
        costs,
        costs * 0,
        accept,
        ath,
        gate_scores(policy, part, route)[4],
        (2.0, 2.0),
        (-1.0, -1.0),
        answer_tokens(part),
        4,
    )
    assert (gated.sim.answered_by == plain.answered_by).all() and np.allclose(gated.sim.cost, plain.cost)
    # every routed request that starts below the top waits for a whole answer there
    assert (gated.live == (plain.reached[:, :2].sum(axis=1) == 0)).all()


def test_calibrated_gates_decide_early_without_losing_quality_or_the_target(code_math, fitted, tmp_path):
    policy, outcomes = fitted
    save_policy(policy, tmp_path / "fitted.json")
    info = calibrate_policy(tmp_path / "fitted.json", str(code_math), None, "large<=0.5", PRICES, tmp_path / "cal.json")
    prefix = info["prefix"]
    assert prefix["tokens"] in (1, 4, 16, 32)  # on these outcomes some k beats waiting
    assert (
        prefix["quality"] >= prefix["full_quality"] - 0.01
        and prefix["cost_per_1k"] <= prefix["full_cost_per_1k"] * 1.05
    )
    assert prefix["delay_tokens"] < prefix["full_delay_tokens"]
    served = load_policy(tmp_path / "cal.json", ["small", "medium", "large"])
    k = served.prefix_tokens(0)
    assert k == prefix["tokens"] and all(len(g) == 1 for g in served.prefix.values())
    route = served.route(Query.of("def add(a, b): return a + b"))
    verdicts = {
        served.judge_prefix(Generation("small", "x", (1,) * k, (lp,) * k, 9, "length", 0, 0), route)
        for lp in (-0.001, -0.5, -3.0, -8.0)
    }
    assert verdicts <= set(PrefixVerdict) and len(verdicts) >= 2  # confidence moves the verdict
    # the gates are part of the version: the same policy without them is a different policy
    assert replace(served, prefix={}).version != served.version


def test_calibration_never_picks_gates_worse_than_waiting():
    rng = np.random.default_rng(1)
    n = 200
    quality = np.stack([rng.random(n) < 0.5, np.ones(n)], axis=1).astype(float)
    noise = {4: rng.random((n, 1))}  # a gate that knows nothing
    route = np.full((n, 1), 0.9)
    accept = quality[:, :1] * 0.8 + 0.1  # the whole answer tells exactly
    costs = np.tile([1.0, 10.0], (n, 1))
    target = parse_target("strong<=0.9", ("weak", "strong"))
    choice = calibrate_prefix(
        target, route, (0.5,), quality, costs, {4: costs * 0.1}, accept, (0.5,), noise, np.full((n, 2), 100.0)
    )
    assert choice.point.quality >= choice.full_point.quality - 0.01
    assert choice.point.cost_per_1k <= choice.full_point.cost_per_1k * 1.05


def test_policy_files_without_gates_still_load(fitted, tmp_path):
    policy, _ = fitted
    path = save_policy(replace(policy, prefix={}), tmp_path / "old.json")
    doc = path.read_text().replace('"prefix": {},', "")
    path.write_text(doc)
    loaded = load_policy(path)
    assert loaded.prefix == {} and loaded.prefix_tokens(0) == 0


def test_an_outcomes_file_without_logprobs_gets_no_gates():
    n = 60
    outcomes = Outcomes(
        tuple(map(str, range(n))),
        tuple(f"q {i % 7} {i}" for i in range(n)),
        ("weak", "strong"),
        np.stack([np.arange(n) % 2, np.ones(n)], axis=1).astype(float),
        responses={"weak": tuple("#### 4" if i % 2 else "I cannot" for i in range(n))},
    )
    assert train_policy(outcomes, TrainSpec(FeaturizerKind.TFIDF)).prefix == {}
