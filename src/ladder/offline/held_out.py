"""A calibrated policy replayed on rows no fitted or selected parameter saw: the test part of
``pipeline.three_way`` of the outcomes it was fitted and calibrated on. What the benchmarks report
as held out, so each reports it the same way."""

from __future__ import annotations

import numpy as np

from ladder.offline.pipeline import three_way
from ladder.offline.training import replay
from ladder.outcomes import Outcomes
from ladder.policies.hybrid import HybridRouterPolicy


def held_out_check(policy: HybridRouterPolicy, outcomes: Outcomes) -> dict:
    """Realised reach per rung on the test part against the interval calibration printed (reach is
    what a target constrains), the answer mix, and quality beside always-large's on the same rows."""
    test = three_way(outcomes, np.zeros(len(outcomes), bool)).test
    if not len(test):
        return {"policy": policy.version, "held_out_rows": 0}
    sim, _, _ = replay(policy, test)
    reach = sim.reached.mean(axis=0)
    point = policy.meta.get("operating_point", {})
    intervals = point.get("reach_ci")
    out = {
        "policy": policy.version,
        "target": policy.meta.get("target"),
        "held_out_rows": len(test),
        "reach": dict(zip(policy.rungs, reach.round(4).tolist())),
        "answered_by": {r: round(float((sim.answered_by == j).mean()), 4) for j, r in enumerate(policy.rungs)},
        "quality": round(float(sim.quality.mean()), 4),
        "always_top_quality": round(float(test.quality[:, -1].mean()), 4),
        "quality_ci_at_calibration": point.get("quality_ci"),
    }
    if intervals:
        inside = [bool(lo <= x <= hi) for x, (lo, hi) in zip(reach, intervals)]
        out |= {"reach_ci": dict(zip(policy.rungs, intervals)), "inside": dict(zip(policy.rungs, inside))}
        out["all_inside"] = all(inside)
    return out
