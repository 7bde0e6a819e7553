import numpy as np
import pytest

from ladder.errors import TargetUnreachable
from ladder.policies.calibrate import Target, calibrate, pareto, simulate, sweep


def synthetic(n: int, seed: int):
    rng = np.random.default_rng(seed)
    hard = rng.random(n)
    quality = np.stack([(rng.random(n) > hard).astype(float), (rng.random(n) > hard * 0.4).astype(float)], axis=1)
    scores = np.clip(1 - hard + rng.normal(0, 0.2, n), 0, 1)[:, None]  # P(weak is good enough)
    costs = np.tile([1.0, 10.0], (n, 1))
    return scores, quality, costs


def test_simulate_starts_at_first_confident_rung_and_counts_cost_of_every_call():
    scores = np.array([[0.9, 0.9], [0.1, 0.9], [0.1, 0.1]])
    q = np.ones((3, 3))
    costs = np.tile([1.0, 2.0, 4.0], (3, 1))
    sim = simulate(scores, (0.5, 0.5), q, costs)
    assert sim.answered_by.tolist() == [0, 1, 2]
    accept = np.array([[0.1, 0.9], [0.9, 0.1], [0.9, 0.9]])
    cascade = simulate(scores, (0.5, 0.5), q, costs, accept, (0.5, 0.5))
    assert cascade.answered_by.tolist() == [1, 2, 2]  # row 0: small rejected -> medium accepted
    assert cascade.cost.tolist() == [3.0, 6.0, 4.0]


def test_call_rate_target_is_met_on_held_out_data_in_most_splits():
    met = 0
    for seed in range(20):
        s, q, c = synthetic(4000, seed)
        val, test = slice(0, 2000), slice(2000, 4000)
        point, _ = calibrate(Target({1: 0.3}), s[val], q[val], c[val], n_future=2000)
        realized = simulate(s[test], point.thresholds, q[test], c[test]).reached[:, 1].mean()
        met += realized <= 0.3
        assert point.reach_ci[1][0] <= point.reach[1] <= point.reach_ci[1][1]
    assert met >= 18


def test_quality_floor_picks_the_cheapest_point_meeting_it():
    s, q, c = synthetic(3000, 5)
    point, frontier = calibrate(Target(min_quality=0.75), s, q, c)
    assert point.quality_ci[0] <= point.quality
    assert point.quality >= 0.75
    cheaper = [p for p in frontier if p.cost_per_1k < point.cost_per_1k]
    assert all(p.quality < 0.75 + 0.05 for p in cheaper)


def test_cost_budget_is_respected():
    s, q, c = synthetic(3000, 6)
    point, _ = calibrate(Target(max_cost_per_1k=4000.0), s, q, c)
    assert point.cost_per_1k <= 4000.0


def test_impossible_target_names_the_problem():
    s, q, c = synthetic(2000, 7)
    with pytest.raises(TargetUnreachable, match="quality>=0.99"):
        calibrate(Target({1: 0.0}, min_quality=0.99), s, q, c)


def test_target_needs_something_and_caps_are_fractions():
    with pytest.raises(ValueError):
        Target()
    with pytest.raises(ValueError):
        Target({1: 1.5})


def test_pareto_frontier_is_monotone():
    s, q, c = synthetic(1000, 8)
    frontier = pareto([p for p, _ in sweep(s, q, c)])
    costs = [p.cost_per_1k for p in frontier]
    quals = [p.quality for p in frontier]
    assert costs == sorted(costs) and quals == sorted(quals)
