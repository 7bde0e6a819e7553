"""API keys with plans (``server.keys``, and plans added at run time through ``/admin/keys``):
who is asking, what they may spend, where they route.

A bearer token is matched by its SHA-256 against every plan (constant time per plan; the config
holds digests only). A plan's target picks a point on the live policy's calibrated frontier
(``policies.operating_points``); when its budget is being spent faster than it lasts the period
(``Ticket.pace`` < 1), the request moves to the best point costing at most the plan's point's
cost x pace — the rule: spend at the rate that makes the budget last the period, at the best
quality that rate buys. Routing views are built once per (policy version, point).

Plans added by an admin live in one Redis hash, each value signed with the server secret (as
the live policy: whoever can write to Redis cannot plant a key); every replica re-reads it at
most once a second, off the request path. The config's plans cannot be changed or removed there.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass

from pydantic import ValidationError

from ladder.cluster.settings import KeyPlan, LadderConfig
from ladder.errors import LadderError
from ladder.policies.calibrate import Target, parse_target
from ladder.policies.hybrid import HybridRouterPolicy
from ladder.policies.operating_points import FrontierPoint, at_point, frontier, paced, point_for
from ladder.protocols import Policy
from ladder.serving.quotas import Limits, Ticket
from ladder.serving.redis_client import LoopRedis, PollEvery
from ladder.serving.signing import Signer
from ladder.types import Query

TEMPLATE_TOKENS = 16  # per message: the chat template's role markers (a generous bound)
PLANS_KEY = "ladder:keys:plans"  # hash: plan id -> signed KeyPlan JSON
log = logging.getLogger("ladder.keys")


class KeyPlanRefused(LadderError):
    """An admin's plan that cannot be stored or removed (400: invalid; 409: conflicts; 503: no Redis)."""

    def __init__(self, message: str, status: int = 409, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param


@dataclass(frozen=True)
class Plan:
    id: str
    digest: bytes
    target: Target | None
    limits: Limits
    target_text: str | None = None
    source: str = "config"  # or "admin" (added at run time)

    @classmethod
    def of(cls, plan: KeyPlan, rungs: list[str], source: str = "config") -> Plan:
        b, lim = plan.budget, plan.limits
        limits = Limits(
            lim.requests_per_min or 0,
            lim.tokens_per_min or 0,
            lim.concurrent or 0,
            b.usd if b else 0.0,
            b.period_s if b else 86_400,
        )
        target = parse_target(plan.target, rungs) if plan.target else None
        return cls(plan.id, bytes.fromhex(plan.sha256), target, limits, plan.target, source)


@dataclass(frozen=True)
class Estimate:
    tokens: int  # for tokens/min: prompt (bytes/4, as a tokenizer averages) + max_tokens
    usd: float  # for a budget, the worst case: every rung, prompt bytes as tokens, max_tokens out


class KeyPlans:
    def __init__(
        self, config: LadderConfig, redis_url: str | None = None, signer: Signer | None = None, poll_s: float = 1.0
    ) -> None:
        self.rungs = config.tier_names
        self.configured = {p.id: p for p in config.server.keys}
        self.added: dict[str, KeyPlan] = {}
        self._prices = [t.price for t in config.tiers]
        self._views: dict[tuple[str, FrontierPoint], Policy] = {}
        self._frontiers: dict[str, list[FrontierPoint]] = {}  # per policy version
        self.redis = LoopRedis(redis_url, 2.0) if redis_url and signer else None  # off the request path
        self.signer = signer
        self._poll = PollEvery(poll_s)
        self._rebuild()

    def _rebuild(self) -> None:
        self.plans = [Plan.of(p, self.rungs) for p in self.configured.values()] + [
            Plan.of(p, self.rungs, "admin") for p in self.added.values()
        ]

    # -- plans added at run time ------------------------------------------------------------------
    def validate(self, plan_id: str, body: bytes) -> KeyPlan:
        """An admin's plan, checked as the config's are (fields, target against the tiers), and
        against the other plans (its id and digest must be new, or its own)."""
        try:
            plan = KeyPlan.model_validate_json(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(x) for x in err["loc"]) or "body"
            raise KeyPlanRefused(f"{field}: {err['msg']}", 400, field) from None
        if plan.id != plan_id:
            raise KeyPlanRefused(f"the plan's id {plan.id!r} is not the {plan_id!r} of the path", 400, "id")
        try:
            Plan.of(plan, self.rungs)  # the one check of a plan against the tiers (its target)
        except ValueError as exc:
            raise KeyPlanRefused(f"target: {exc}", 400, "target") from None
        if plan.id in self.configured:
            raise KeyPlanRefused(f"key {plan.id} is defined in the config: change it there", 409, "id")
        if any(p.sha256 == plan.sha256 and p.id != plan.id for p in [*self.configured.values(), *self.added.values()]):
            raise KeyPlanRefused("another plan has this key's sha256", 409, "sha256")
        return plan

    async def put(self, plan_id: str, body: bytes) -> dict:
        plan = self.validate(plan_id, body)
        await self._write(
            lambda r: r.hset(PLANS_KEY, plan.id, self.signer.sign(f"{PLANS_KEY}:{plan.id}", plan.model_dump_json()))
        )
        self.added[plan.id] = plan
        self._rebuild()
        return {"id": plan.id, "source": "admin", "published": True}

    async def remove(self, plan_id: str) -> dict:
        if plan_id in self.configured:
            raise KeyPlanRefused(f"key {plan_id} is defined in the config: remove it there", 409, "id")
        await self._write(lambda r: r.hdel(PLANS_KEY, plan_id))
        if self.added.pop(plan_id, None) is None:
            raise KeyPlanRefused(f"no plan {plan_id} was added", 404, "id")
        self._rebuild()
        return {"id": plan_id, "removed": True}

    async def _write(self, op) -> None:  # noqa: ANN001
        if self.redis is None:
            raise KeyPlanRefused("plans added at run time need Redis (every replica reads them there)", 503)
        try:
            await op(self.redis.get())
        except Exception as exc:  # noqa: BLE001
            raise KeyPlanRefused(f"the key plans' Redis is unavailable: {type(exc).__name__}", 503) from None

    def maybe_refresh(self) -> None:
        """Adopt plans added or removed through another replica, at most once per ``poll_s``."""
        if self.redis is not None:
            self._poll.maybe(self.refresh)

    async def refresh(self) -> None:
        try:
            raw = await self.redis.get().hgetall(PLANS_KEY)
        except Exception as exc:  # noqa: BLE001 — keep the plans this replica has
            log.warning(
                "key plans: Redis unavailable (%s); keeping %d added plans", type(exc).__name__, len(self.added)
            )
            return
        added = {}
        for field, value in raw.items():
            plan_id = field.decode()
            text = self.signer.open(f"{PLANS_KEY}:{plan_id}", value)
            if text is None:
                continue  # unsigned or forged: ignored (logged once by the signer)
            try:
                plan = KeyPlan.model_validate_json(text)
                Plan.of(plan, self.rungs)
            except (ValidationError, ValueError) as exc:
                log.warning("key plan %s in Redis refused on this replica: %s", plan_id, exc)
                continue
            if plan.id == plan_id and plan.id not in self.configured:
                added[plan.id] = plan
        if added != self.added:
            self.added = added
            self._rebuild()

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
        if policy.version not in self._frontiers:
            if len(self._frontiers) > 16:  # old policy versions'
                self._frontiers.clear()
            self._frontiers[policy.version] = frontier(policy)
        points = self._frontiers[policy.version]
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
