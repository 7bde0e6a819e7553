import numpy as np
import pytest
from benchmarks.harness.frontier import aiq, cell_ceiling, cost_to_reach, frontier

from ladder.outcomes.io import load_model_ladder
from tests.shared_data import DATA, needs_data


def test_frontier_keeps_only_points_that_buy_quality():
    xs, ys = frontier(np.array([1.0, 2.0, 2.0, 3.0, 4.0]), np.array([0.5, 0.4, 0.7, 0.6, 0.9]))
    assert xs.tolist() == [1.0, 2.0, 4.0] and ys.tolist() == [0.5, 0.7, 0.9]
    assert cost_to_reach(xs, ys, 0.7) == 2.0 and cost_to_reach(xs, ys, 0.95) is None


def test_aiq_of_a_flat_curve_is_its_quality_and_steps_count_by_width():
    assert aiq(np.array([0.0]), np.array([0.8]), 0.0, 1.0) == pytest.approx(0.8)
    assert aiq(np.array([0.0, 0.5]), np.array([0.2, 1.0]), 0.0, 1.0) == pytest.approx(0.6, abs=1e-3)


def test_cell_ceiling_spends_first_where_quality_is_cheapest():
    # Cell "a": the cheap action is as good as the dear one (never upgrade); cell "b": upgrading
    # buys +1 per query at cost +9. Two queries each; costs and quality are per-query means.
    cells = np.array(["a", "a", "b", "b"])
    quality = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    costs = np.array([[1.0, 10.0]] * 4)
    xs, ys = cell_ceiling(cells, quality, costs)
    assert xs.tolist() == pytest.approx([1.0, 5.5]) and ys.tolist() == pytest.approx([0.5, 1.0])
    # A dominated middle action (dearer, no better) never enters the curve.
    q3 = np.array([[0.0, 0.0, 1.0]] * 2)
    xs, ys = cell_ceiling(np.array(["c", "c"]), q3, np.array([[1.0, 2.0, 3.0]] * 2))
    assert xs.tolist() == pytest.approx([1.0, 3.0]) and ys.tolist() == pytest.approx([0.0, 1.0])


@needs_data
def test_model_ladders_load_with_published_accuracies():
    g = load_model_ladder(
        DATA / "zeroeval_gsm/outcomes.parquet", ["gemma-2-2b-it", "gemma-2-9b-it", "gemma-2-27b-it@together"]
    )
    assert g.quality.mean(0) == pytest.approx([0.516, 0.874, 0.902], abs=0.01)
    assert (g.tokens > 1).all()
    m = load_model_ladder(DATA / "mmlu_pro/outcomes.parquet", ["Llama-2-7b-hf", "Llama-2-13b-hf", "Llama-2-70b-hf"])
    assert m.quality[:, 2].mean() == pytest.approx(0.363, abs=0.01)
    # The extracted answers come along ("" where none parsed): the cascade ceilings need them.
    assert set(m.responses) == {"Llama-2-7b-hf", "Llama-2-13b-hf", "Llama-2-70b-hf"}
    assert {"", "A", "J"} <= set(m.response("Llama-2-13b-hf"))
    assert g.responses == {}
