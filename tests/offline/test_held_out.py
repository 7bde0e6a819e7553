"""held_out_check replays a calibrated policy on exactly the rows its fit and calibration did not
read, and reports what it realised there."""

from pathlib import Path

import numpy as np

from ladder.cluster.settings import BUNDLED_POLICY
from ladder.offline.held_out import held_out_check
from ladder.offline.pipeline import three_way
from ladder.offline.training import replay
from ladder.outcomes.io import read_jsonl
from ladder.policies.store import load_policy

OUTCOMES = Path(__file__).resolve().parents[2] / "data" / "outcomes" / "humaneval.jsonl"


def test_held_out_check_reports_the_test_part_only():
    policy, outcomes = load_policy(BUNDLED_POLICY), read_jsonl(OUTCOMES)
    parts = three_way(outcomes, np.zeros(len(outcomes), bool))
    check = held_out_check(policy, outcomes)
    assert check["held_out_rows"] == len(parts.test) > 0
    # nothing the fit or the calibration read is among the rows it reports on
    assert not set(parts.test.ids) & (set(parts.fit.ids) | set(parts.validation.ids))
    sim, _, _ = replay(policy, parts.test)
    assert check["quality"] == round(float(sim.quality.mean()), 4)
    assert check["always_top_quality"] == round(float(parts.test.quality[:, -1].mean()), 4)
    assert abs(sum(check["answered_by"].values()) - 1) < 1e-3
    assert check["reach"]["large"] >= check["answered_by"]["large"]  # answering at a rung means reaching it
    assert set(check["inside"]) == set(policy.rungs) and check["all_inside"] == all(check["inside"].values())
