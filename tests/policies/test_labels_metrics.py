import numpy as np
import pytest

from ladder.policies.labels import LabelScheme, boundary_labels, relaxation
from ladder.policies.metrics import oracle_curve, random_curve, routing_curve

Q3 = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [1, 0, 0], [0, 0, 0]], float)


def test_deterministic_labels_compare_with_the_best_rung_above():
    assert boundary_labels(Q3, 0, LabelScheme.DETERMINISTIC).tolist() == [1, 0, 0, 1, 1]
    assert boundary_labels(Q3, 1, LabelScheme.DETERMINISTIC).tolist() == [1, 1, 0, 1, 1]


def test_probabilistic_equals_deterministic_on_binary_and_is_soft_on_rates():
    assert np.array_equal(boundary_labels(Q3, 0, LabelScheme.PROBABILISTIC), boundary_labels(Q3, 0, "deterministic"))
    rates = np.array([[0.5, 0.5], [0.9, 0.1]])
    y = boundary_labels(rates, 0, LabelScheme.PROBABILISTIC)
    assert y == pytest.approx([1 - 0.5 * 0.5, 1 - 0.1 * 0.1])


def test_transformed_relaxation_balances_labels():
    rates = np.array([[0.2, 0.5], [0.3, 0.4], [0.1, 0.9], [0.6, 0.6]])
    t = relaxation(rates, 0)
    y = boundary_labels(rates, 0, LabelScheme.TRANSFORMED)
    assert 0 < t < 1 and y.mean() == pytest.approx(0.5)


def test_boundary_out_of_range_is_rejected():
    with pytest.raises(ValueError):
        boundary_labels(Q3, 2, LabelScheme.DETERMINISTIC)


def test_random_and_constant_score_give_apgr_one_half_and_oracle_dominates():
    rng = np.random.default_rng(1)
    q = (rng.random((4000, 2)) < [0.6, 0.8]).astype(float)
    assert random_curve(q).apgr == pytest.approx(0.5)
    assert routing_curve("const", np.zeros(len(q)), q).apgr == pytest.approx(0.5, abs=1e-9)
    oracle = oracle_curve(q)
    assert oracle.apgr > 1.0 and oracle.cpt(0.5) < 0.2
    assert oracle.pgr[0] == pytest.approx(0) and oracle.pgr[-1] == pytest.approx(1)


def test_an_informative_score_beats_random():
    rng = np.random.default_rng(2)
    q = (rng.random((4000, 2)) < [0.6, 0.8]).astype(float)
    need = (q[:, 1] - q[:, 0]) + rng.normal(0, 1.0, len(q))
    curve = routing_curve("noisy", need, q)
    assert 0.55 < curve.apgr < oracle_curve(q).apgr
    assert curve.cpt(0.5) < 0.5
