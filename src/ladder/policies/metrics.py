"""RouteLLM's routing metrics (Ong et al. 2024) and quality–cost curves. Pure numpy.

For two rungs, a router is a score ``need`` (higher = send to the strong model first). Sending the
top c fraction to the strong model gives quality r(c); PGR(c) = (r(c) - r_w) / (r_s - r_w);
APGR is the area under PGR over c in [0, 1]; CPT(x) is the smallest c with PGR(c) >= x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRID = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class RoutingCurve:
    name: str
    call_rate: np.ndarray  # c: fraction of queries answered by the strong model
    quality: np.ndarray  # r(c)
    pgr: np.ndarray

    @property
    def apgr(self) -> float:
        return float(np.trapezoid(self.pgr, self.call_rate))

    def cpt(self, target: float) -> float:
        """Smallest call rate whose PGR reaches ``target`` (1.0 if none does)."""
        hit = np.flatnonzero(self.pgr >= target - 1e-12)
        return float(self.call_rate[hit[0]]) if len(hit) else 1.0


def _pgr(r: np.ndarray, quality: np.ndarray) -> np.ndarray:
    r_w, r_s = quality[:, 0].mean(), quality[:, 1].mean()
    if abs(r_s - r_w) < 1e-12:
        raise ValueError("PGR is undefined when weak and strong quality are equal")
    return (r - r_w) / (r_s - r_w)


def routing_curve(name: str, need: np.ndarray, quality: np.ndarray) -> RoutingCurve:
    """Curve of a two-rung router that sends the ``c`` most needy queries to the strong rung.

    Ties in ``need`` are broken by averaging over them (a constant score behaves as random).
    """
    n = len(need)
    order = np.argsort(-need, kind="stable")
    gain = (quality[:, 1] - quality[:, 0])[order]
    sorted_need = need[order]
    # Average the gain within groups of tied scores, so ties cannot smuggle in an order.
    _, start, counts = np.unique(-sorted_need, return_index=True, return_counts=True)
    smooth = gain.copy()
    for s, c in zip(start, counts):
        if c > 1:
            smooth[s : s + c] = gain[s : s + c].mean()
    cum = np.r_[0.0, np.cumsum(smooth)]
    ks = GRID * n
    lo = np.floor(ks).astype(int)
    frac = ks - lo
    gained = cum[lo] + frac * np.r_[smooth, 0.0][np.minimum(lo, n)]  # linear between whole rows
    r = quality[:, 0].mean() + gained / n
    return RoutingCurve(name, GRID.copy(), r, _pgr(r, quality))


def random_curve(quality: np.ndarray) -> RoutingCurve:
    r = quality[:, 0].mean() + GRID * (quality[:, 1].mean() - quality[:, 0].mean())
    return RoutingCurve("random", GRID.copy(), r, _pgr(r, quality))


def oracle_curve(quality: np.ndarray) -> RoutingCurve:
    return routing_curve("oracle", quality[:, 1] - quality[:, 0], quality)


def summary(curve: RoutingCurve) -> dict[str, float]:
    return {
        "apgr": curve.apgr,
        "cpt50": curve.cpt(0.5),
        "cpt80": curve.cpt(0.8),
        "quality_at_30": float(np.interp(0.3, curve.call_rate, curve.quality)),
    }
