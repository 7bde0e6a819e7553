"""Many operating points from one fitted policy: the rows of its calibration's Pareto table.

Calibration (``policies.calibrate``) keeps the whole cost–quality frontier it searched on the
validation rows (``meta["pareto"]``: thresholds, reach per rung, quality, cost per 1K queries).
A key plan names a point on it by a target (``large<=0.2``, ``cost<=0.8``, ``quality>=0.4``) and
a request is routed with that point's thresholds — no re-fit. The table's figures are the
validation estimates (the one-sided margin of ``calibrate`` was applied to the policy's own point
only), so a key's rung mix is expected within the calibration's intervals, not exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ladder.policies.calibrate import Target
from ladder.policies.hybrid import HybridRouterPolicy


@dataclass(frozen=True)
class FrontierPoint:
    thresholds: tuple[float, ...]
    accept_thresholds: tuple[float, ...] | None
    reach: tuple[float, ...]
    quality: float
    cost_per_1k: float
    # what the tuning page shows beside the point (absent from older tables)
    answer_mix: tuple[float, ...] = ()
    quality_ci: tuple[float, float] | None = None
    cost_ci: tuple[float, float] | None = None
    row: dict | None = field(default=None, compare=False, hash=False)  # the table's row as calibration wrote it

    @classmethod
    def of(cls, row: dict) -> FrontierPoint:
        ath = row.get("accept_thresholds")
        pair = lambda k: tuple(float(x) for x in row[k]) if row.get(k) else None  # noqa: E731
        return cls(
            tuple(float(t) for t in row["thresholds"]),
            None if ath is None else tuple(float(t) for t in ath),
            tuple(float(r) for r in row["reach"]),
            float(row["quality"]),
            float(row["cost_per_1k"]),
            tuple(float(m) for m in row.get("answer_mix", ())),
            pair("quality_ci"),
            pair("cost_ci"),
            row,
        )


def frontier(policy: object) -> list[FrontierPoint]:
    """The policy's calibrated frontier, cheapest first ([] for a policy without one: fixed, or
    a learned one never calibrated)."""
    rows = getattr(policy, "meta", {}).get("pareto") or []
    return sorted((FrontierPoint.of(r) for r in rows), key=lambda p: p.cost_per_1k)


def meets(point: FrontierPoint, target: Target) -> bool:
    if any(point.reach[r] > cap + 1e-9 for r, cap in target.max_fraction.items() if r < len(point.reach)):
        return False
    if target.max_cost_per_1k is not None and point.cost_per_1k > target.max_cost_per_1k + 1e-12:
        return False
    return target.min_quality is None or point.quality >= target.min_quality - 1e-12


def point_for(target: Target, points: list[FrontierPoint]) -> FrontierPoint | None:
    """The point a target names, by the rule ``calibrate`` chooses with: with a quality floor the
    cheapest point meeting everything; otherwise the best quality within the caps and budget.
    When nothing meets it: the cheapest point for caps/budgets (spend less, never more), the best
    for a floor alone. None for an empty frontier."""
    if not points:
        return None
    ok = [p for p in points if meets(p, target)]
    if target.min_quality is not None:
        if ok:
            return min(ok, key=lambda p: (p.cost_per_1k, -p.quality))
        if target.max_fraction or target.max_cost_per_1k is not None:
            return points[0]
        return max(points, key=lambda p: (p.quality, -p.cost_per_1k))
    if ok:
        return max(ok, key=lambda p: (p.quality, -p.cost_per_1k))
    return points[0]


def paced(points: list[FrontierPoint], chosen: FrontierPoint, rate: float) -> FrontierPoint:
    """The point for a key spending ``rate`` times faster than its budget allows (remaining budget
    share / remaining period share, below 1 when ahead of pace): the best point costing at most
    ``chosen``'s cost x ``rate``, else the cheapest. At ``rate`` >= 1, ``chosen``."""
    if rate >= 1 or not points:
        return chosen
    cap = chosen.cost_per_1k * max(rate, 0.0)
    affordable = [p for p in points if p.cost_per_1k <= cap + 1e-12]
    return max(affordable, key=lambda p: (p.quality, -p.cost_per_1k)) if affordable else points[0]


def at_point(policy: HybridRouterPolicy, point: FrontierPoint) -> HybridRouterPolicy:
    """The policy routing with ``point``'s thresholds. Its version hashes them, so route-cache
    entries of one point are never read by another. Prefix gates were calibrated for the
    policy's own point: another point keeps none (rungs are judged on whole answers)."""
    idk = {b: point.accept_thresholds[b] for b in policy.idk} if point.accept_thresholds is not None else {}
    if point.thresholds == tuple(policy.thresholds) and idk == dict(policy.idk_thresholds):
        return policy
    return replace(policy, thresholds=point.thresholds, idk_thresholds=idk, prefix={})
