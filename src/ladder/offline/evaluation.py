"""Two-rung routing evaluation beside the baselines, and the quality–cost plot.

Methods compared on the same test rows: random, always-weak, always-strong, the oracle, a kNN
router (k nearest training queries in the router's own feature space; k tuned on a validation
slice of the training part), Ladder's router, and Ladder's router + IDK step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ladder.offline.plots import new_axes, save
from ladder.policies.labels import LabelScheme, boundary_labels
from ladder.policies.metrics import RoutingCurve, oracle_curve, random_curve, routing_curve, summary

KNN_KS = (5, 10, 25, 50, 100, 200)


def knn_scores(train_x, train_y: np.ndarray, test_x, k: int) -> np.ndarray:  # noqa: ANN001
    """Mean label of the k most cosine-similar training queries (features are L2-normalised)."""
    out = np.empty(test_x.shape[0])
    for start in range(0, test_x.shape[0], 512):
        sims = test_x[start : start + 512] @ train_x.T
        sims = sims.toarray() if hasattr(sims, "toarray") else np.asarray(sims)
        top = np.argpartition(-sims, kth=min(k, sims.shape[1] - 1), axis=1)[:, :k]
        out[start : start + 512] = train_y[top].mean(axis=1)
    return out


def tuned_knn(train_x, train_quality: np.ndarray, test_x, seed: int = 0) -> tuple[np.ndarray, int]:  # noqa: ANN001
    """kNN need-scores for the test rows, with k chosen by APGR on a 20% slice of the training part."""
    y = boundary_labels(train_quality, 0, LabelScheme.DETERMINISTIC)
    rng = np.random.default_rng(seed)
    val = rng.random(len(y)) < 0.2
    fit_idx, val_idx = np.flatnonzero(~val), np.flatnonzero(val)
    best_k, best = KNN_KS[0], -np.inf
    for k in KNN_KS:
        need = -knn_scores(train_x[fit_idx], y[fit_idx], train_x[val_idx], k)
        apgr = routing_curve("knn", need, train_quality[val_idx]).apgr
        if apgr > best:
            best_k, best = k, apgr
    return -knn_scores(train_x, y, test_x, best_k), best_k


def compare(quality: np.ndarray, needs: dict[str, np.ndarray]) -> list[RoutingCurve]:
    curves = [random_curve(quality), oracle_curve(quality)]
    curves += [routing_curve(name, need, quality) for name, need in needs.items()]
    return curves


def table(curves: list[RoutingCurve], quality: np.ndarray) -> list[dict]:
    rows = [
        {
            "method": "always-weak",
            "apgr": 0.0,
            "cpt50": float("nan"),
            "cpt80": float("nan"),
            "quality_at_30": float(quality[:, 0].mean()),
        },
        {
            "method": "always-strong",
            "apgr": 1.0,
            "cpt50": 1.0,
            "cpt80": 1.0,
            "quality_at_30": float(quality[:, 1].mean()),
        },
    ]
    return rows + [{"method": c.name, **summary(c)} for c in curves]


def plot(curves: list[RoutingCurve], quality: np.ndarray, title: str, path: Path) -> Path:
    fig, ax = new_axes()
    for c in curves:
        style = {"random": ":", "oracle": "--"}.get(c.name, "-")
        ax.plot(c.call_rate, c.quality, style, label=f"{c.name} (APGR {c.apgr:.3f})")
    ax.scatter([0, 1], [quality[:, 0].mean(), quality[:, 1].mean()], color="k", zorder=5)
    ax.annotate("always-weak", (0, quality[:, 0].mean()), textcoords="offset points", xytext=(5, -12))
    ax.annotate("always-strong", (1, quality[:, 1].mean()), textcoords="offset points", xytext=(-80, 6))
    return save(fig, ax, "fraction of queries answered by the strong model (call rate)", title, path)
