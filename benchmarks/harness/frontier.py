"""Quality–cost frontiers for N-rung ladders and the numbers reported about them.

A method is a cloud of operating points (cost per query, quality); its curve is the upper
Pareto frontier. AIQ (RouterBench) = area under the non-decreasing frontier over the cost range
[cost of always-cheapest, cost of always-largest], divided by that range.
"""

from __future__ import annotations

import numpy as np

from ladder.policies.calibrate import pareto_front


def frontier(costs: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The upper Pareto frontier as (costs, qualities), cheapest first (calibration's rule)."""
    front = pareto_front(costs, quality)
    return np.asarray(costs, float)[front], np.asarray(quality, float)[front]


def aiq(xs: np.ndarray, ys: np.ndarray, lo: float, hi: float, grid: int = 1001) -> float:
    """Area under the best quality reachable at each budget c in [lo, hi], over (hi - lo)."""
    cs = np.linspace(lo, hi, grid)
    idx = np.searchsorted(xs, cs, side="right") - 1
    reach = np.where(idx >= 0, ys[np.clip(idx, 0, None)], ys.min() if len(ys) else 0.0)
    return float(np.trapezoid(reach, cs) / (hi - lo))


def cost_to_reach(xs: np.ndarray, ys: np.ndarray, target: float) -> float | None:
    hit = np.flatnonzero(ys >= target - 1e-12)
    return float(xs[hit[0]]) if len(hit) else None


def cell_ceiling(cells: np.ndarray, quality: np.ndarray, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The best quality–cost curve of ANY policy that sees only each query's cell (what it can
    observe) and picks an action per cell, allowed to mix actions within a cell (the LP relaxation,
    so an upper bound). cells: [n] labels; quality, costs: [n, A] per action (an action's cost
    includes every rung it runs). Fed test outcomes it is an optimistic ceiling: it knows each
    cell's true accuracies. Returns the curve (cost per query, quality), cheapest first.
    """
    n = len(cells)
    start_q = start_c = 0.0
    segments: list[tuple[float, float, float]] = []  # (slope, Δcost, Δquality), per query
    for cell in np.unique(cells):
        m = cells == cell
        q, c = quality[m].sum(0) / n, costs[m].sum(0) / n  # this cell's share of the mean
        hull = _upper_hull(c, q)
        start_c, start_q = start_c + c[hull[0]], start_q + q[hull[0]]
        for a, b in zip(hull, hull[1:]):
            segments.append(((q[b] - q[a]) / (c[b] - c[a]), c[b] - c[a], q[b] - q[a]))
    segments.sort(key=lambda s: -s[0])
    xs, ys = [start_c], [start_q]
    for _, dc, dq in segments:
        xs.append(xs[-1] + dc)
        ys.append(ys[-1] + dq)
    return np.array(xs), np.array(ys)


def _upper_hull(c: np.ndarray, q: np.ndarray) -> list[int]:
    """Indices of the concave upper hull from the cheapest action (best quality on cost ties) up
    to the best-quality action; each step on it gains quality at a falling rate."""
    order = sorted(range(len(c)), key=lambda i: (c[i], -q[i]))
    hull: list[int] = []
    for i in order:
        if hull and q[i] <= q[hull[-1]] + 1e-15:
            continue  # costs more, gains nothing
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (q[b] - q[a]) * (c[i] - c[a]) <= (q[i] - q[a]) * (c[b] - c[a]):
                hull.pop()  # b lies on or under the chord a→i
            else:
                break
        hull.append(i)
    return hull
