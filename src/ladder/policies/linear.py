"""Logistic scorers: fitted with scikit-learn, evaluated with plain numpy (weights are arrays).

Soft labels in [0, 1] (probabilistic Hybrid-LLM labels) are fitted exactly by duplicating each row
as a positive with weight y and a negative with weight 1 - y.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinearScorer:
    weights: np.ndarray  # [D]
    bias: float
    mean: np.ndarray | None = None  # optional standardisation of dense features
    scale: np.ndarray | None = None

    def logits(self, x) -> np.ndarray:  # noqa: ANN001 (ndarray or sparse)
        if self.mean is not None:
            x = (np.asarray(x) - self.mean) / self.scale
        return np.asarray(x @ self.weights).ravel() + self.bias

    def proba(self, x) -> np.ndarray:  # noqa: ANN001
        return 1.0 / (1.0 + np.exp(-self.logits(x)))


def fit_logistic(x, y: np.ndarray, c: float = 1.0, standardize: bool = False) -> LinearScorer:  # noqa: ANN001
    from scipy.sparse import issparse, vstack
    from sklearn.linear_model import LogisticRegression

    mean = scale = None
    if standardize:
        x = np.asarray(x, dtype=np.float64)
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
        x = (x - mean) / scale
    y = np.asarray(y, dtype=float)
    hard = np.all((y == 0) | (y == 1))
    if hard:
        xs, ys, w = x, y.astype(int), None
    else:
        xs = vstack([x, x]) if issparse(x) else np.vstack([x, x])
        ys = np.r_[np.ones(len(y), int), np.zeros(len(y), int)]
        w = np.r_[y, 1 - y]
    if len(np.unique(ys if w is None else ys[w > 0])) < 2:
        raise ValueError("logistic fit needs both label values in the training data")
    model = LogisticRegression(C=c, max_iter=3000).fit(xs, ys, sample_weight=w)
    return LinearScorer(model.coef_[0].astype(np.float32), float(model.intercept_[0]), mean, scale)
