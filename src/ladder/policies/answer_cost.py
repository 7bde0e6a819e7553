"""Cost-weighted routing: what stopping at a cheap rung saves depends on the question.

The router's score for boundary b is P(rung b is as good as the best rung above it); a single
threshold per boundary treats every query's saving as equal. It is not: a multiple-choice answer
is two tokens, so asking the large rung costs little more than its prompt, while a program or a
worked solution costs hundreds of decoded tokens at the large rung's price. With one threshold,
a cap on the large rung's share or on cost spends it on the questions where it buys least.

``AnswerCost`` predicts each rung's answer length from the router's own features (a ridge
regression of log(1 + tokens), fitted on the recorded outcomes) and prices the query with the one
cost model (prompt tokens ≈ characters / 4, as ``offline.pipeline.rung_costs`` estimates them,
and the configured per-rung prices). ``weigh`` shifts each boundary's log-odds by the log of the
query's predicted saving over the reference saving (the mean over the rows the thresholds were
calibrated on): a query that saves twice the usual needs half the usual odds to stop cheap, one
that saves a tenth needs ten times the odds. A query of average saving is routed as before, so
the thresholds keep their meaning. Both the served route and every calibration replay read the
weighted scores through ``HybridRouterPolicy.route_scores``; the IDK steps keep the router's
plain probability as their prior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ladder.policies.linear import LinearScorer

EPS = 1e-12


@dataclass(frozen=True)
class AnswerCost:
    tokens: tuple[LinearScorer, ...]  # per rung: ``logits`` = predicted log(1 + answer tokens)
    prices: tuple[tuple[float, float], ...] = ()  # per rung USD per 1M (prompt, answer); () = not calibrated
    reference: tuple[float, ...] = ()  # per boundary: the mean predicted saving at calibration

    @property
    def active(self) -> bool:
        return bool(self.prices) and bool(self.reference)

    def predicted_tokens(self, x) -> np.ndarray:  # noqa: ANN001 (the featurizer's output)
        """[n, R] predicted answer tokens of each rung."""
        return np.stack([np.expm1(np.clip(s.logits(x), 0.0, 12.0)) for s in self.tokens], axis=1)

    def savings(self, x, texts: Sequence[str]) -> np.ndarray:  # noqa: ANN001
        """[n, R-1] USD saved by stopping at rung b instead of calling the top rung."""
        if not self.prices:
            raise ValueError("the answer-cost model has no prices: calibrate the policy with --cost-weighted")
        prompt = np.array([len(t) / 4 for t in texts], dtype=float)
        out = self.predicted_tokens(x)
        cost = np.stack([(prompt * p_in + out[:, j] * p_out) / 1e6 for j, (p_in, p_out) in enumerate(self.prices)], 1)
        return np.maximum(cost[:, -1:] - cost[:, :-1], EPS)

    def calibrated(self, prices: Sequence[tuple[float, float]], savings: np.ndarray) -> AnswerCost:
        """This model with the prices it will serve with and the reference saving of ``savings``
        (the rows calibration chooses thresholds on)."""
        return AnswerCost(
            self.tokens, tuple((float(a), float(b)) for a, b in prices), tuple(float(v) for v in savings.mean(axis=0))
        )

    def weigh(self, scores: np.ndarray, savings: np.ndarray) -> np.ndarray:
        """[n, R-1] the router's probabilities with each query's odds scaled by its saving ratio."""
        p = np.clip(scores, 1e-9, 1 - 1e-9)
        logit = np.log(p) - np.log1p(-p) + np.log(savings / np.asarray(self.reference)[None, :])
        return 1.0 / (1.0 + np.exp(-logit))


def fit_answer_tokens(x, tokens: np.ndarray, alpha: float = 1.0) -> tuple[LinearScorer, ...]:  # noqa: ANN001
    """Per rung, a ridge regression of log(1 + recorded answer tokens) on the router's features
    (rows without a recorded count are left out)."""
    from sklearn.linear_model import Ridge

    models = []
    for j in range(tokens.shape[1]):
        ok = np.isfinite(tokens[:, j])
        if ok.sum() < 2:
            raise ValueError(f"rung {j}: fewer than two recorded answer lengths to fit on")
        m = Ridge(alpha=alpha).fit(x[ok], np.log1p(tokens[ok, j]))
        models.append(LinearScorer(np.asarray(m.coef_, np.float32).ravel(), float(m.intercept_)))
    return tuple(models)
