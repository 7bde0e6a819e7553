"""Quality–cost frontiers for N-rung ladders and the numbers reported about them.

A method is a cloud of operating points (cost per query, quality); its curve is the upper
Pareto frontier. AIQ (RouterBench) = area under the non-decreasing frontier over the cost range
[cost of always-cheapest, cost of always-largest], divided by that range.
"""

from __future__ import annotations

import numpy as np


def frontier(costs: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((-quality, costs))
    best, xs, ys = -np.inf, [], []
    for i in order:
        if quality[i] > best + 1e-12:
            best = quality[i]
            xs.append(costs[i])
            ys.append(quality[i])
    return np.array(xs), np.array(ys)


def aiq(xs: np.ndarray, ys: np.ndarray, lo: float, hi: float, grid: int = 1001) -> float:
    """Area under the best quality reachable at each budget c in [lo, hi], over (hi - lo)."""
    cs = np.linspace(lo, hi, grid)
    idx = np.searchsorted(xs, cs, side="right") - 1
    reach = np.where(idx >= 0, ys[np.clip(idx, 0, None)], ys.min() if len(ys) else 0.0)
    return float(np.trapezoid(reach, cs) / (hi - lo))


def cost_to_reach(xs: np.ndarray, ys: np.ndarray, target: float) -> float | None:
    hit = np.flatnonzero(ys >= target - 1e-12)
    return float(xs[hit[0]]) if len(hit) else None
