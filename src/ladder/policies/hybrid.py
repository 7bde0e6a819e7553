"""The learned ladder policy: Hybrid-LLM routers per rung boundary plus optional IDK steps.

``route``: featurize the query once, score every boundary b with P(rung b is as good as the best
rung above it), start at the first rung whose score reaches its threshold (else the top rung).
``accept``: if the answering rung has an IDK model, accept when P(accept) reaches that rung's
threshold; otherwise accept. ``judge_prefix``: a streamed cascade asks after the first k tokens of
a rung's answer (``ladder.policies.prefix``); a rung without an active gate waits for the whole
answer. Thresholds come from calibration and are part of the policy's version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ladder.policies.answer_cost import AnswerCost
from ladder.policies.calibrate import start_rungs
from ladder.policies.features import Featurizer
from ladder.policies.idk import AnswerView, IdkModel
from ladder.policies.linear import LinearScorer
from ladder.policies.prefix import PrefixGate
from ladder.types import Generation, PrefixVerdict, Query, Route


@dataclass
class HybridRouterPolicy:
    rungs: tuple[str, ...]
    featurizer: Featurizer
    boundaries: tuple[LinearScorer, ...]  # R-1 scorers
    thresholds: tuple[float, ...]  # R-1 router thresholds
    idk: dict[int, IdkModel] = field(default_factory=dict)  # rung -> model
    idk_thresholds: dict[int, float] = field(default_factory=dict)
    # rung -> prefix gates, one per candidate k; calibration keeps at most one active gate per rung
    prefix: dict[int, tuple[PrefixGate, ...]] = field(default_factory=dict)
    name: str = "hybrid"
    meta: dict = field(default_factory=dict)  # label scheme, data hash, target, Pareto table
    cost: AnswerCost | None = None  # cost-weighted start rule (``ladder.policies.answer_cost``)

    def __post_init__(self) -> None:
        if len(self.boundaries) != len(self.rungs) - 1 or len(self.thresholds) != len(self.rungs) - 1:
            raise ValueError("a ladder of R rungs needs R-1 boundary scorers and thresholds")

    @property
    def version(self) -> str:
        h = hashlib.blake2b(digest_size=6)
        gates = sorted(
            (b, g.tokens, g.accept_at, g.escalate_below) for b, gs in self.prefix.items() for g in gs if g.active
        )
        h.update(
            repr(
                (
                    self.rungs,
                    self.thresholds,
                    sorted(self.idk_thresholds.items()),
                    self.meta.get("data_hash"),
                    self.meta.get("created"),
                )
            ).encode()
        )
        if gates:  # (policies without active gates keep the versions they had)
            h.update(repr(gates).encode())
        if self.cost is not None and self.cost.active:  # (and those not cost-weighted theirs)
            h.update(repr((self.cost.prices, self.cost.reference)).encode())
        return f"{self.name}-{h.hexdigest()}"

    def scores(self, texts: list[str]) -> np.ndarray:
        """[n, R-1]: P(rung b is good enough) for each boundary."""
        return self.route_scores(texts)[0]

    def route_scores(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """[n, R-1] twice: the router's probabilities (the IDK steps' prior, the ``x-ladder-score``
        header) and what the start rule compares with the thresholds — the same, or weighted by each
        query's predicted saving when the policy is cost-weighted."""
        x = self.featurizer.transform(texts)
        raw = np.stack([s.proba(x) for s in self.boundaries], axis=1)
        if self.cost is None or not self.cost.active:
            return raw, raw
        return raw, self.cost.weigh(raw, self.cost.savings(x, texts))

    @property
    def accept_thresholds(self) -> tuple[float, ...]:
        """Per non-top rung, the IDK probability an answer needs to be accepted (0.0: a rung with
        no threshold accepts): the rule ``accept`` serves and calibration's replay uses."""
        return tuple(self.idk_thresholds.get(b, 0.0) for b in range(len(self.rungs) - 1))

    def start_rungs(self, scores: np.ndarray) -> np.ndarray:
        return start_rungs(scores, self.thresholds)

    def route(self, query: Query) -> Route:
        scores, weighted = self.route_scores([query.text])
        start = int(self.start_rungs(weighted)[0])
        return Route(start, self.version, tuple(float(s) for s in scores[0]), self.thresholds)

    def accept(self, answer: Generation, route: Route) -> bool:
        if answer.tier not in self.rungs:
            return True
        rung = self.rungs.index(answer.tier)
        model = self.idk.get(rung)
        if model is None or rung >= len(self.rungs) - 1:
            return True
        prior = route.scores[rung] if rung < len(route.scores) else 0.5
        p = float(model.proba([AnswerView(answer.text, answer.logprobs, prior, answer.signals)])[0])
        return p >= self.accept_thresholds[rung]

    def _gate(self, rung: int) -> PrefixGate | None:
        if rung >= len(self.rungs) - 1:
            return None
        return next((g for g in self.prefix.get(rung, ()) if g.active), None)

    def prefix_tokens(self, rung: int) -> int:
        gate = self._gate(rung)
        return gate.tokens if gate else 0

    def judge_prefix(self, partial: Generation, route: Route) -> PrefixVerdict:
        rung = self.rungs.index(partial.tier) if partial.tier in self.rungs else len(self.rungs) - 1
        gate = self._gate(rung)
        if gate is None:
            return PrefixVerdict.WAIT
        prior = route.scores[rung] if rung < len(route.scores) else 0.5
        return gate.judge(partial.logprobs, prior)

    def verifier_rungs(self) -> list[str]:
        """Rungs whose IDK model reads verifier signals: those tiers must run the verifier."""
        from ladder.policies.idk import VERIFIER_SIGNALS

        return [self.rungs[b] for b, m in self.idk.items() if set(m.signals) & set(VERIFIER_SIGNALS)]
