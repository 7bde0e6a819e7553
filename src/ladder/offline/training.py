"""Fit a ``HybridRouterPolicy`` (routers per boundary, IDK models per rung) from outcomes."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ladder.nonanswer import non_answer
from ladder.outcomes import Outcomes
from ladder.policies.answer_cost import AnswerCost, fit_answer_tokens
from ladder.policies.calibrate import Simulation, simulate
from ladder.policies.features import Featurizer, FeaturizerKind, make_featurizer
from ladder.policies.hybrid import HybridRouterPolicy
from ladder.policies.idk import (
    SIGNALS,
    VERIFIER_INPUTS,
    VERIFIER_SIGNALS,
    AnswerView,
    IdkModel,
    signal_matrix,
)
from ladder.policies.labels import LabelScheme, boundary_labels
from ladder.policies.linear import fit_logistic
from ladder.policies.prefix import CANDIDATE_TOKENS, PREFIX_SIGNALS, PrefixGate, prefix_view

# Log-probability and verifier signals are useless (constant) where a data set has none
# (RouteLLM's); outcomes collected from Ladder's own tiers carry them, and then they are used.
TEXT_SIGNALS = tuple(n for n in SIGNALS if "logprob" not in n and n not in VERIFIER_SIGNALS)


def signal_names(outcomes: Outcomes, rung: str) -> tuple[str, ...]:
    logprobs = rung in outcomes.logprobs
    verified = f"{rung}/examples_passed" in outcomes.signals
    return tuple(n for n in SIGNALS if ("logprob" not in n or logprobs) and (n not in VERIFIER_SIGNALS or verified))


def _views(outcomes: Outcomes, rung: str, prior: np.ndarray) -> list[AnswerView]:
    verified = [
        (name, outcomes.signals[f"{rung}/{name}"]) for name in VERIFIER_INPUTS if f"{rung}/{name}" in outcomes.signals
    ]
    # A row without the verifier's signals (another data set's) reads 0, as the verifier reports
    # for an answer that holds no code.
    return [
        AnswerView(t, lp, float(p), tuple((name, float(np.nan_to_num(v[i]))) for name, v in verified))
        for i, (t, lp, p) in enumerate(zip(outcomes.response(rung), outcomes.answer_logprobs(rung), prior))
    ]


@dataclass(frozen=True)
class TrainSpec:
    featurizer: FeaturizerKind = FeaturizerKind.MINILM
    scheme: LabelScheme = LabelScheme.DETERMINISTIC
    c: float = 1.0  # inverse regularisation of the router's logistic models
    idk: bool = True  # fit IDK models where the outcomes carry a rung's responses
    idk_c: float = 0.1
    folds: int = 5  # cross-fitting of the router prior the IDK model sees
    prefix_tokens: tuple[int, ...] = CANDIDATE_TOKENS  # candidate k of the prefix gates (calibration picks)

    def as_dict(self) -> dict:
        """The recipe as a policy file records it (``meta.spec``), so it can be refitted elsewhere."""
        return {
            "featurizer": self.featurizer.value,
            "scheme": self.scheme.value,
            "c": self.c,
            "idk": self.idk,
            "idk_c": self.idk_c,
            "folds": self.folds,
            "prefix_tokens": list(self.prefix_tokens),
        }

    @classmethod
    def from_dict(cls, doc: dict) -> TrainSpec:
        return cls(
            FeaturizerKind(doc["featurizer"]),
            LabelScheme(doc["scheme"]),
            float(doc["c"]),
            bool(doc["idk"]),
            float(doc["idk_c"]),
            int(doc["folds"]),
            tuple(int(k) for k in doc["prefix_tokens"]),
        )


def _cross_fitted(x, y: np.ndarray, c: float, folds: int) -> np.ndarray:  # noqa: ANN001
    """Out-of-fold router scores, so the IDK model learns from priors as noisy as at serving time."""
    out = np.zeros(len(y))
    fold = np.arange(len(y)) % folds
    for k in range(folds):
        train, held = fold != k, fold == k
        out[held] = fit_logistic(x[train], y[train], c).proba(x[held])
    return out


def train_policy(
    outcomes: Outcomes,
    spec: TrainSpec,
    featurizer: Featurizer | None = None,
    features=None,  # noqa: ANN001
) -> HybridRouterPolicy:
    """Routers for every boundary; thresholds start at 0.5 until ``calibrate`` sets them."""
    featurizer = featurizer or make_featurizer(spec.featurizer)
    featurizer.fit(list(outcomes.queries))
    x = featurizer.transform(list(outcomes.queries)) if features is None else features
    r = len(outcomes.rungs)
    labels = [boundary_labels(outcomes.quality, b, spec.scheme) for b in range(r - 1)]
    boundaries = tuple(fit_logistic(x, labels[b], spec.c) for b in range(r - 1))
    idk: dict[int, IdkModel] = {}
    prefix: dict[int, tuple[PrefixGate, ...]] = {}
    if spec.idk:
        for b in range(r - 1):
            rung = outcomes.rungs[b]
            if rung not in outcomes.responses:
                continue
            prior = _cross_fitted(x, labels[b], spec.c, spec.folds)
            names = signal_names(outcomes, rung)
            views = _views(outcomes, rung, prior)
            hard = (labels[b] >= 0.5).astype(float)
            scorer = fit_logistic(signal_matrix(views, names), hard, spec.idk_c, standardize=True)
            idk[b] = IdkModel(names, scorer)
            if rung in outcomes.logprobs and spec.prefix_tokens:
                prefix[b] = tuple(
                    PrefixGate(
                        k,
                        IdkModel(
                            PREFIX_SIGNALS,
                            fit_logistic(
                                signal_matrix(prefix_views(views, k), PREFIX_SIGNALS),
                                hard,
                                spec.idk_c,
                                standardize=True,
                            ),
                        ),
                    )
                    for k in spec.prefix_tokens
                )
    # answer lengths for a cost-weighted start rule (inactive until calibrated with prices)
    recorded = outcomes.tokens is not None and np.isfinite(outcomes.tokens).sum(axis=0).min() >= 2
    cost = AnswerCost(fit_answer_tokens(x, outcomes.tokens)) if recorded else None
    meta = {
        "data_hash": outcomes.fingerprint,
        "data_source": outcomes.source,
        "train_rows": len(outcomes),
        "spec": spec.as_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return HybridRouterPolicy(
        outcomes.rungs,
        featurizer,
        boundaries,
        (0.5,) * (r - 1),
        idk,
        {b: 0.5 for b in idk},
        prefix,
        meta=meta,
        cost=cost,
    )


def prefix_views(views: list[AnswerView], k: int) -> list[AnswerView]:
    return [prefix_view(v.logprobs, v.prior, k) for v in views]


def gate_scores(policy: HybridRouterPolicy, outcomes: Outcomes, route_scores: np.ndarray) -> dict[int, np.ndarray]:
    """k -> [n, R-1] P(accept) of each rung's gate on the first k recorded tokens (NaN where a rung
    has no gate for k: every comparison is false, so it never decides early)."""
    n, r = len(outcomes), len(outcomes.rungs)
    out: dict[int, np.ndarray] = {}
    for b, gates in policy.prefix.items():
        views = _views(outcomes, outcomes.rungs[b], route_scores[:, b])
        for g in gates:
            out.setdefault(g.tokens, np.full((n, r - 1), np.nan))[:, b] = g.model.proba(prefix_views(views, g.tokens))
    return out


NON_ANSWER = -2.0  # the IDK score of a non-answer: below every accept threshold (-1.0 accepts all)


def idk_scores(policy: HybridRouterPolicy, outcomes: Outcomes, route_scores: np.ndarray) -> np.ndarray | None:
    """[n, R-1] P(accept) of each non-top rung's recorded answer, or None when there is nothing to
    judge (no IDK model and no recorded answers). A non-answer (``ladder.nonanswer``) scores
    ``NON_ANSWER``, below every threshold: serving escalates it before asking the policy."""
    n, r = len(outcomes), len(outcomes.rungs)
    judged = [b for b in range(r - 1) if outcomes.rungs[b] in outcomes.responses]
    if not policy.idk and not judged:
        return None
    out = np.ones((n, r - 1))  # rungs without an IDK model accept
    for b, model in policy.idk.items():
        out[:, b] = model.proba(_views(outcomes, outcomes.rungs[b], route_scores[:, b]))
    for b in judged:
        answers = outcomes.response(outcomes.rungs[b])
        out[[non_answer(q, a) is not None for q, a in zip(outcomes.queries, answers)], b] = NON_ANSWER
    return out


def replay(policy: HybridRouterPolicy, outcomes: Outcomes) -> tuple[Simulation, np.ndarray, np.ndarray | None]:
    """The policy's decisions on recorded outcomes — start rung by the router, then each rung's
    recorded answer through its IDK step — at unit cost per rung, as serving would make them.
    Returns the simulation with the route and IDK scores it was made from."""
    route, start = policy.route_scores(list(outcomes.queries))
    accept = idk_scores(policy, outcomes, route)
    ones = np.ones_like(outcomes.quality)
    return simulate(start, policy.thresholds, outcomes.quality, ones, accept, policy.accept_thresholds), route, accept
