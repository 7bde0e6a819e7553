"""API keys with plans (``server.keys``): who is asking, what they may spend, where they route.

A bearer token is matched by its SHA-256 against every plan (constant time per plan; the config
holds digests only). A plan's target picks a point on the live policy's calibrated frontier
(``policies.operating_points``); when its budget is being spent faster than it lasts the period
(``Ticket.pace`` < 1), the request moves to the best point costing at most the plan's point's
cost x pace — the rule: spend at the rate that makes the budget last the period, at the best
quality that rate buys. Routing views are built once per (policy version, point).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from ladder.cluster.settings import KeyPlan, LadderConfig
from ladder.policies.calibrate import Target, parse_target
from ladder.policies.hybrid import HybridRouterPolicy
from ladder.policies.operating_points import FrontierPoint, at_point, frontier, paced, point_for
from ladder.protocols import Policy
from ladder.serving.quotas import Limits, Ticket
from ladder.types import Query

TEMPLATE_TOKENS = 16  # per message: the chat template's role markers (a generous bound)


@dataclass(frozen=True)
class Plan:
    id: str
    digest: bytes
    target: Target | None
    limits: Limits

    @classmethod
    def of(cls, plan: KeyPlan, rungs: list[str]) -> Plan:
        b, lim = plan.budget, plan.limits
        limits = Limits(
            lim.requests_per_min or 0,
            lim.tokens_per_min or 0,
            lim.concurrent or 0,
            b.usd if b else 0.0,
            b.period_s if b else 86_400,
        )
        target = parse_target(plan.target, rungs) if plan.target else None
        return cls(plan.id, bytes.fromhex(plan.sha256), target, limits)


@dataclass(frozen=True)
class Estimate:
    tokens: int  # for tokens/min: prompt (bytes/4, as a tokenizer averages) + max_tokens
    usd: float  # for a budget, the worst case: every rung, prompt bytes as tokens, max_tokens out


class KeyPlans:
    def __init__(self, config: LadderConfig) -> None:
        self.plans = [Plan.of(p, config.tier_names) for p in config.server.keys]
        self._prices = [t.price for t in config.tiers]
        self._views: dict[tuple[str, FrontierPoint], Policy] = {}

    def find(self, token: bytes) -> Plan | None:
        digest = hashlib.sha256(token).digest()
        found = None
        for plan in self.plans:  # every plan compared (no early exit): timing says nothing
            if hmac.compare_digest(digest, plan.digest):
                found = plan
        return found

    def estimate(self, query: Query) -> Estimate:
        prompt_bytes = sum(len(m.content.encode("utf-8")) + TEMPLATE_TOKENS for m in query.messages)
        out = query.sampling.max_tokens
        usd = sum(p.cost(prompt_bytes, out) for p in self._prices)
        return Estimate(prompt_bytes // 4 + out, usd)

    def route_with(
        self, policy: Policy, plan: Plan | None, ticket: Ticket | None
    ) -> tuple[Policy, FrontierPoint | None]:
        """The policy view a request of ``plan`` routes with, and its frontier point (None: the
        policy's own point, or a policy without a frontier — fixed policies route as they are)."""
        if plan is None or not isinstance(policy, HybridRouterPolicy):
            return policy, None
        pace = ticket.pace if ticket is not None else 1.0
        if plan.target is None and pace >= 1:
            return policy, None
        points = frontier(policy)
        own = policy.meta.get("operating_point")
        base = point_for(plan.target, points) if plan.target is not None else None
        if base is None and own is not None:
            base = FrontierPoint.of(own)
        if base is None:
            return policy, None
        point = paced(points, base, pace)
        key = (policy.version, point)
        if key not in self._views:
            if len(self._views) > 256:  # old policy versions' views
                self._views.clear()
            self._views[key] = at_point(policy, point)
        return self._views[key], point
