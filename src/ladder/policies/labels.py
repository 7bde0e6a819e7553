"""Hybrid LLM (Ding et al. 2024) training labels for one rung boundary, generalised to N rungs.

For boundary b the question is "is rung b's answer as good as the best answer above it?". With
q[:, j] the quality of rung j (1/0, or a success rate when several samples were scored):

- DETERMINISTIC: y = 1[q_b >= max_{j>b} q_j]
- PROBABILISTIC: y = P(S_b >= S_up) for independent Bernoulli outcomes S with success rates
  q_b and q_up = max_{j>b} q_j, i.e. 1 - q_up (1 - q_b). Equal to the deterministic label when
  the qualities are 0/1 (a single sample per query, as in the RouteLLM data).
- TRANSFORMED: y = 1[q_b >= q_up - t] with the data-driven relaxation t* that maximises the
  labels' average pairwise difference (i.e. makes them as balanced as possible).
"""

from __future__ import annotations

from enum import Enum

import numpy as np


class LabelScheme(str, Enum):
    DETERMINISTIC = "deterministic"
    PROBABILISTIC = "probabilistic"
    TRANSFORMED = "transformed"


def _upper(quality: np.ndarray, boundary: int) -> np.ndarray:
    return quality[:, boundary + 1 :].max(axis=1)


def relaxation(quality: np.ndarray, boundary: int, grid: int = 101) -> float:
    """t* maximising the spread Σ_ij |y_i - y_j| / N² = 2 p (1 - p) of the relaxed labels."""
    gap = _upper(quality, boundary) - quality[:, boundary]
    best_t, best_spread = 0.0, -1.0
    for t in np.linspace(0.0, 1.0, grid, endpoint=False):
        p = float(np.mean(gap <= t))
        spread = 2 * p * (1 - p)
        if spread > best_spread + 1e-12:
            best_t, best_spread = float(t), spread
    return best_t


def boundary_labels(quality: np.ndarray, boundary: int, scheme: LabelScheme, t: float | None = None) -> np.ndarray:
    """Labels in [0, 1] for boundary ``boundary`` (rung b vs everything above it)."""
    if not 0 <= boundary < quality.shape[1] - 1:
        raise ValueError(f"boundary {boundary} outside 0..{quality.shape[1] - 2}")
    q_b, q_up = quality[:, boundary], _upper(quality, boundary)
    scheme = LabelScheme(scheme)
    if scheme is LabelScheme.DETERMINISTIC:
        return (q_b >= q_up).astype(float)
    if scheme is LabelScheme.PROBABILISTIC:
        return 1.0 - q_up * (1.0 - q_b)
    t = relaxation(quality, boundary) if t is None else t
    return (q_b >= q_up - t).astype(float)
