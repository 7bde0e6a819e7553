"""The HTTP face of Ladder, without Ray: the OpenAI routes, the admin routes, and the one table
that maps typed errors to HTTP answers.

``Gateway`` holds what a request needs (the live policy, the route cache, the tiers as
``StreamWorker``s, metrics, keys, the shadow log) and raises typed errors where a
problem is found; ``build_api`` turns it into a FastAPI app whose exception handlers give every
error its status, OpenAI-style body, headers and metric exactly once. ``serving/app.py`` runs
that app in a Ray Serve deployment over tier handles; tests run it in-process over an ASGI
transport with scripted workers (``tests/serving/test_gateway.py``).

One request's path: ``POST /v1/chat/completions`` → ``Gateway.chat`` (auth, parse, limits) →
``router.streaming.stream_cascade`` (buffered or streamed) (policy → route cache →
rung after rung, each a ``Worker``) → ``openai_api`` (response body, headers, SSE chunks).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ladder.cluster.compose import build_policy, cost_function
from ladder.cluster.settings import LadderConfig, TierConfig
from ladder.cluster.tier_weights import unvalidated
from ladder.errors import (
    InvalidRequest,
    LadderError,
    NoRungAvailable,
    PolicyFileError,
    TierUnvalidated,
    TierUpdateRefused,
    UnknownTier,
    WorkerFailed,
    WorkerTimeout,
)
from ladder.protocols import Policy, StreamWorker
from ladder.router.streaming import StreamStart, stream_cascade
from ladder.serving import openai_api as oai
from ladder.serving.dashboard import Board, samples
from ladder.serving.dashboard_routes import add_dashboard_routes
from ladder.serving.key_plans import KeyPlanRefused, KeyPlans, Plan
from ladder.serving.live_policy import LivePolicy, PolicyFiles
from ladder.serving.metrics import LadderMetrics
from ladder.serving.quotas import USAGE_KEEP_S, QuotaRefused, Quotas, QuotasUnavailable, Ticket
from ladder.serving.drain import Drain
from ladder.serving.redis_client import PollEvery
from ladder.serving.replica_samples import PUBLISH_S, ReplicaSamples
from ladder.serving.shadow import ShadowLog
from ladder.types import CascadeResult, Delta, Generation, Query, Route

log = logging.getLogger("ladder.app")


class TierUpdateBody(BaseModel):
    """``POST /admin/tiers/<name>``: the tier's new section, and how long its replicas may take to start."""

    model_config = ConfigDict(extra="forbid")
    tier: TierConfig
    timeout_s: float = Field(default=900, gt=0, le=3600)


class TierUpdater(Protocol):
    """``serving.tier_update.TierUpdates`` as the gateway uses it (that module runs on Serve)."""

    live: Any

    async def start(self, tier: TierConfig, timeout_s: float) -> dict: ...


class Unvalidated:
    """A rung the live policy was not fitted on (``cluster.tier_weights``): routed requests skip it."""

    def __init__(self, tier: str, fitted: str, now: str) -> None:
        self.tier, self.fitted, self.now = tier, fitted, now

    async def stream(self, query: Query) -> AsyncIterator[Delta | Generation]:
        raise TierUnvalidated(
            f"tier {self.tier} serves weights {self.now}; the live policy was fitted on {self.fitted}"
        )
        yield  # an async generator, as a worker's stream is


class HTTPProblem(LadderError):
    """A refusal that exists only at the HTTP edge (auth, admin access, a malformed admin body,
    a replica that is draining)."""

    def __init__(
        self,
        message: str,
        status: int,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.headers = status, param, code, headers


def _bearer(request: Request) -> bytes:
    header = request.headers.get("authorization", "")
    return header[7:].encode() if header.lower().startswith("bearer ") else b""


def _bearer_in(request: Request, keys: list[bytes]) -> bool:
    token = _bearer(request)
    # Compare against every key, in constant time per key, so timing leaks nothing.
    return any([hmac.compare_digest(token, k) for k in keys])


class Gateway:
    def __init__(
        self,
        config: LadderConfig,
        workers: Sequence[StreamWorker],
        streamers: Sequence[StreamWorker],
        redis_url: str | None,
        secret: bytes | None = None,
        tier_updates: TierUpdater | None = None,
    ) -> None:
        """``workers`` answer buffered requests, ``streamers`` streamed ones (the same tiers; the
        Serve app coalesces the former's deltas). Both run ``stream_cascade``: a prefix gate stops
        a doomed rung after k tokens whether or not the client streams. ``secret`` signs what is
        shared through Redis (a random one when not given: then nothing signed elsewhere is adopted).
        ``tier_updates``: what replaces a tier while the others serve (``serving/tier_update.py``,
        on Serve; None: ``/admin/tiers`` refuses updates)."""
        import secrets as random_secrets

        from ladder.serving.signing import Signer

        signer = Signer(secret or random_secrets.token_bytes(32))
        self.config = config
        self.tier_names = config.tier_names
        self.workers, self.streamers = list(workers), list(streamers)
        policy = build_policy(config.policy, self.tier_names, config.verified_tiers)
        self.live = LivePolicy(policy, self.tier_names, config.verified_tiers, redis_url, signer)
        self.cost = cost_function(config)
        self.metrics = LadderMetrics()
        self.board = Board()  # the dashboard's history and recent escalations
        # the dashboard's figures summed over ingress replicas (each publishes its samples to Redis)
        self.replicas = ReplicaSamples(redis_url)
        self._publish = PollEvery(PUBLISH_S)
        self.cache = None
        if redis_url and config.cache.enabled:
            from ladder.serving.cache import RedisRouteCache

            c = config.cache
            self.cache = RedisRouteCache(
                redis_url,
                c.ttl_s,
                signer,
                c.read_timeout_ms,
                c.connect_timeout_ms,
                c.breaker_failures,
                c.breaker_cooldown_s,
            )
        self._keys = [k.encode() for k in config.server.api_keys]
        self.plans = KeyPlans(config, redis_url, signer)
        self._settling: set[asyncio.Task] = set()  # settlements of failed requests, in flight
        self.quotas = Quotas(redis_url) if redis_url else None
        self._admin_keys = [k.encode() for k in config.server.admin_keys]
        self.shadow = ShadowLog(redis_url, config.shadow) if config.shadow.enabled and redis_url else None
        # Draining (``ladder serve`` on SIGTERM, every ingress replica): new chat requests get 503
        # + Retry-After while those in flight finish; /ready says so, so a balancer stops first.
        self.drain = Drain()
        self._unvalidated: dict[str, dict[str, tuple[str, str]]] = {}  # per policy version
        self.tier_updates = tier_updates

    @property
    def admin_keys(self) -> list[bytes]:
        return self._admin_keys

    @property
    def policy(self) -> Policy:
        """The live policy (``ladder policy push`` swaps it); a request reads it once and keeps it."""
        return self.live.policy

    def unvalidated(self, policy: Policy) -> dict[str, tuple[str, str]]:
        """{tier: (weights the policy was fitted on, the tier's now)}: the tiers ``policy`` may not
        route to (checked once per policy version, and logged then)."""
        version = policy.version
        if version not in self._unvalidated:
            found = unvalidated(getattr(policy, "meta", {}) or {}, self.config.tiers)
            for tier, (fitted, now) in found.items():
                log.warning(
                    "policy %s was fitted on %s for tier %s, which serves %s: routed requests skip it",
                    version,
                    fitted,
                    tier,
                    now,
                )
            if len(self._unvalidated) > 64:  # versions come and go with pushes and key points
                self._unvalidated.clear()
            self._unvalidated[version] = found
        return self._unvalidated[version]

    def _routable(self, workers: list[StreamWorker], policy: Policy, route: Route | None) -> list[StreamWorker]:
        """The rungs a request may use: a routed one skips the tiers ``policy`` was not fitted on; one
        pinned to a tier gets that tier whatever the policy knows of it."""
        if route is not None and route.pinned:
            return workers
        skip = self.unvalidated(policy)
        if not skip:
            return workers
        out = [Unvalidated(w.tier, *skip[w.tier]) if w.tier in skip else w for w in workers]
        # the highest rung left is the top: its answer stands (an escalation past it has nowhere to go)
        while len(out) > 1 and isinstance(out[-1], Unvalidated):
            out.pop()
        return out

    def replace_tier(self, tier: TierConfig, worker: StreamWorker, streamer: StreamWorker) -> None:
        """Send ``tier``'s next requests to these workers (a tier update switched to them); a
        request in flight keeps the workers it started with and finishes on the old tier."""
        i = self.tier_names.index(tier.name)
        tiers = list(self.config.tiers)
        tiers[i] = tier
        self.config = self.config.model_copy(update={"tiers": tiers})
        # new lists, not changed in place: a request holds the ones it started with
        self.workers = [*self.workers[:i], worker, *self.workers[i + 1 :]]
        self.streamers = [*self.streamers[:i], streamer, *self.streamers[i + 1 :]]
        self._unvalidated.clear()  # its weights may differ from what the policy was fitted on

    def model_ids(self) -> list[str]:
        return [self.config.server.router_model, *self.tier_names]

    async def readiness(self) -> dict[str, Any]:
        """Each tier's state (asked in parallel, 2 s each), the policy, Redis. Redis is reported,
        not required: without it the app serves, uncached (a Redis outage must not take every
        replica out of a load balancer)."""

        async def state(worker: StreamWorker) -> str:
            probe = getattr(worker, "ready", None)
            return await probe() if probe is not None else "ready"

        states = await asyncio.gather(*(state(w) for w in self.workers))
        tiers = dict(zip(self.tier_names, states))
        redis = "off"
        if self.cache is not None:
            try:
                await asyncio.wait_for(self.cache.client.ping(), 0.5)
                redis = "ok"
            except Exception:  # noqa: BLE001 — any failure to answer is "unreachable"
                redis = "unreachable"
        # A tier lost after it was up does not take the app out of a balancer: requests route
        # around it (its rung escalates, a pinned request gets 503), and every ingress replica
        # would report the same, turning one lost node into an outage. It is named in
        # ``degraded``. Starting or failed tiers do make the app not ready.
        ready = any(v in ("ready", "busy") for v in states) and all(
            v in ("ready", "busy", "unavailable") for v in states
        )
        degraded = [t for t, v in tiers.items() if v == "unavailable"]
        body = {"ready": ready, "tiers": tiers, "policy_version": self.policy.version, "redis": redis}
        return body | ({"degraded": degraded} if degraded else {})

    # -- access ------------------------------------------------------------------------------
    def authorize(self, request: Request) -> Plan | None:
        """The key's plan (None: a plain ``api_keys`` key, or no auth configured); 401 otherwise."""
        if not self._keys and not self.plans.plans:
            return None
        plan = self.plans.find(_bearer(request))
        if plan is None and not _bearer_in(request, self._keys):
            raise HTTPProblem("invalid or missing API key", 401, code="invalid_api_key")
        return plan

    async def admit(self, plan: Plan | None, query: Query) -> Ticket | None:
        """Debit the key's limits and reserve its budget (``serving.quotas``); a refusal is a 429.
        Redis away: unmetered (fail open, the default) or 503 (closed)."""
        if plan is None or not plan.limits.any:
            return None
        est = self.plans.estimate(query)
        try:
            if self.quotas is None:
                raise QuotasUnavailable("no Redis is configured for the key limits")
            # the in-flight entry's name is ours, not the client's x-request-id: a client reusing
            # one id for every request would otherwise count as one request in flight
            return await self.quotas.admit(plan.id, plan.limits, est.tokens, est.usd, uuid.uuid4().hex)
        except QuotaRefused as exc:
            self.metrics.key_refused.labels(key=plan.id, reason=exc.reason).inc()
            raise
        except QuotasUnavailable:
            if self.config.server.limits_when_redis_down == "closed":
                raise
            return None

    def authorize_admin(self, request: Request) -> None:
        """The admin endpoints need an admin key, whoever asks: a client's address proves nothing
        behind a same-host proxy (``ladder serve`` makes a key when none is configured)."""
        if not self._admin_keys:
            raise HTTPProblem("the admin API is off: no admin key is configured", 403, code="forbidden")
        if not self.is_admin(request):
            raise HTTPProblem("invalid or missing admin key", 401, code="invalid_api_key")

    def is_admin(self, request: Request) -> bool:
        """The request carries an admin key as its Bearer token (the admin API's one check)."""
        return _bearer_in(request, self._admin_keys)

    # -- chat ----------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        """A chat request, counted in ``in_flight`` until its answer is sent (a stream: until its
        last chunk, or until it is abandoned)."""
        drain = self.drain
        if drain.draining:
            raise HTTPProblem(
                "the server is shutting down: retry, another replica will answer",
                503,
                code="draining",
                headers={"Retry-After": "2"},
            )
        drain.enter()
        try:
            response = await self._chat(request)
        except BaseException:
            drain.leave()
            raise
        if not isinstance(response, StreamingResponse):
            drain.leave()
            return response
        body = response.body_iterator

        async def counted():  # noqa: ANN202
            try:
                async for chunk in body:
                    yield chunk
            finally:
                drain.leave()

        response.body_iterator = counted()
        return response

    async def _chat(self, request: Request) -> Response:
        started = time.perf_counter()
        self.live.maybe_refresh()
        self.plans.maybe_refresh()
        plan = self.authorize(request)  # before parsing: strangers learn nothing about the API
        # Serve's proxy puts the client's x-request-id (or a new one) on the request and echoes it on
        # the response; logs and the shadow log use it when it is a sane token, else their own.
        request_id = oai.request_id(request.headers.get("x-request-id"))
        body = oai.ChatRequest.model_validate_json(await request.body())
        route = self._forced_route(body.model)
        query = body.to_query()
        if query.sampling.max_tokens > self.config.server.max_completion_tokens:
            raise InvalidRequest(
                f"max_tokens: at most {self.config.server.max_completion_tokens} on this "
                f"server, got {query.sampling.max_tokens}",
                "max_tokens",
            )
        ticket = await self.admit(plan, query)
        policy, point = self.plans.route_with(self.policy, plan, ticket)
        if plan is not None and point is not None:
            self.metrics.key_point.labels(key=plan.id).set(point.cost_per_1k)
        if body.stream:
            return await self._stream(body, query, route, started, request_id, policy, plan, ticket)
        try:
            result = await self._buffered(query, route, policy)
        except BaseException:
            self._settle_soon(plan, ticket)  # a failed request is not charged
            raise
        await self._settle(plan, ticket, result)
        self._record(result, time.perf_counter() - started, request_id, query)
        headers = oai.ladder_headers(result, self.cache is not None) | oai.ratelimit_headers(ticket)
        body_json = oai.completion_body(result, oai.new_completion_id(), body.logprobs, self.cache is not None)
        return JSONResponse(body_json, headers=headers)

    async def _settle(self, plan: Plan | None, ticket: Ticket | None, result: CascadeResult | None) -> None:
        """Book what an answer cost against its key (every attempt, as ``x-ladder-cost-usd``)."""
        if plan is None:
            return
        tokens = cost = 0
        if result is not None:
            a = result.answer
            tokens, cost = a.prompt_tokens + a.completion_tokens, result.cost_usd
            self.metrics.key_requests.labels(key=plan.id, tier=a.tier).inc()
            self.metrics.key_tokens.labels(key=plan.id, kind="prompt").inc(a.prompt_tokens)
            self.metrics.key_tokens.labels(key=plan.id, kind="completion").inc(a.completion_tokens)
            self.metrics.key_spend.labels(key=plan.id).inc(cost)
            if self.quotas is not None:
                point = f"{plan.target_text} ({result.route.policy_version})" if plan.target_text else "policy"
                await self.quotas.book(plan.id, a.prompt_tokens, a.completion_tokens, cost, a.tier, point)
        if ticket is not None:  # only Quotas issues tickets
            await self.quotas.settle(ticket, tokens, cost)

    def _settle_soon(self, plan: Plan | None, ticket: Ticket | None) -> None:
        """Release a failed request's reservation and slot in a task of its own: the request's
        task may be cancelled (the client went away), and an await there would be cut short."""
        if ticket is not None:
            task = asyncio.ensure_future(self._settle(plan, ticket, None))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    async def _buffered(self, query: Query, route: Route | None, policy: Policy) -> CascadeResult:
        workers = self._routable(self.workers, policy, route)
        events = stream_cascade(query, policy, workers, self.cache, self.cost, route, buffered=True)
        async for event in events:
            if isinstance(event, CascadeResult):
                return event
        raise WorkerFailed("the cascade ended without an answer")  # stream_cascade always ends with one

    def _forced_route(self, model: str) -> Route | None:
        if model == self.config.server.router_model:
            return None
        if model not in self.tier_names:
            raise UnknownTier(model, self.model_ids())
        return Route(self.tier_names.index(model), self.policy.version, pinned=True)

    def _record(self, result: CascadeResult, elapsed: float, request_id: str, query: Query) -> None:
        if self.shadow is not None:
            self.shadow.record(request_id, query, result, elapsed)
        m = self.metrics
        m.requests.labels(status="200").inc()
        m.answered.labels(tier=result.answer.tier).inc()
        m.escalations.inc(result.escalations)
        m.cache.labels(result="hit" if result.cache_hit else result.route_source).inc()
        for a in result.attempts:
            if a.unavailable:
                m.tier_starting.labels(tier=a.tier).inc()
            elif a.error:
                m.tier_errors.labels(tier=a.tier).inc()
        m.tokens.labels(kind="prompt").inc(result.answer.prompt_tokens)
        m.tokens.labels(kind="completion").inc(result.answer.completion_tokens)
        m.cost.inc(result.cost_usd)
        largest = self.config.tiers[-1].price
        m.cost_largest.inc(largest.cost(result.answer.prompt_tokens, result.answer.completion_tokens))
        m.decision.observe(result.decision_s)
        m.latency.observe(elapsed)
        m.tier_latency.labels(tier=result.answer.tier).observe(elapsed)
        self.board.record(result, request_id, query, self.shadow is not None and self.config.shadow.prompts)
        self.board.tick(m.registry, self.tier_names)
        if self.replicas.redis is not None:  # (no task at all without Redis)
            self._publish.maybe(lambda: self.replicas.publish(samples(m.registry)))

    async def _stream(
        self,
        body: oai.ChatRequest,
        query: Query,
        route: Route | None,
        started: float,
        request_id: str,
        policy: Policy,
        plan: Plan | None,
        ticket: Ticket | None,
    ) -> StreamingResponse:
        """A routed or pinned stream (``stream_cascade``): the accepted rung's tokens go out as
        generated; the last chunk carries the ``ladder`` object."""
        events = stream_cascade(
            query, policy, self._routable(self.streamers, policy, route), self.cache, self.cost, route
        )
        # The first event (which rung answers) comes before the 200 header, so a request that no
        # rung can serve, or bad input, still gets its 4xx/503 (raised here, mapped by the handlers).
        try:
            start: StreamStart = await events.__anext__()  # type: ignore[assignment]
        except BaseException:
            self._settle_soon(plan, ticket)
            raise
        completion_id, created, tier = oai.new_completion_id(), int(time.time()), start.tier

        async def sse():  # noqa: ANN202
            finished, settled = False, False
            try:
                yield oai.sse(oai.chunk(completion_id, created, tier, {"role": "assistant", "content": ""}))
                async for event in events:
                    if isinstance(event, str):
                        yield oai.sse(oai.chunk(completion_id, created, tier, {"content": event}))
                        continue
                    result: CascadeResult = event  # the last event
                    settled = True
                    await self._settle(plan, ticket, result)
                    self._record(result, time.perf_counter() - started, request_id, query)
                    last = oai.chunk(completion_id, created, tier, {}, result.answer.finish_reason)
                    yield oai.sse({**last, "ladder": oai.ladder_extension(result, self.cache is not None)})
                    if body.stream_options and body.stream_options.include_usage:
                        yield oai.sse(
                            {
                                **oai.chunk(completion_id, created, tier, {}),
                                "choices": [],
                                "usage": oai.usage(result.answer),
                            }
                        )
                finished = True
                yield "data: [DONE]\n\n"
            except Exception as exc:  # after the 200 header: an error event, then close
                finished = settled = True
                await self._settle(plan, ticket, None)  # a failed request is not charged
                log.warning("request %s: failed while streaming: %s", request_id, exc)
                self.metrics.tier_errors.labels(tier=tier).inc()
                yield oai.sse(oai.error_body(public_message("tier_failed", request_id), 503, code="tier_failed"))
            finally:
                if not finished:  # the client went away: stop the rung's generation (vLLM aborts)
                    await events.aclose()
                if not settled and ticket is not None:
                    # no result to price: an abandoned stream books its reservation (the worst
                    # case), so a budget is never overspent by clients that hang up
                    await self.quotas.settle(ticket, ticket.est_tokens, ticket.est_usd)

        headers = oai.stream_headers(tier, start.route, start.route_source, start.cache_hit, self.cache is not None)
        headers |= oai.ratelimit_headers(ticket)
        return StreamingResponse(sse(), media_type="text/event-stream", headers=headers)

    # -- admin -------------------------------------------------------------------------------
    async def policy_push(self, request: Request) -> dict:
        self.authorize_admin(request)
        try:
            files = PolicyFiles.decode(await request.body())
        except ValueError:
            raise HTTPProblem('the body must be {"doc": <policy JSON text>, "tensors_b64": <base64>}', 400) from None
        return await self.live.push(files)  # a refusal (PolicyFileError) keeps the old policy serving

    async def policy_rollback(self, request: Request) -> dict:
        self.authorize_admin(request)
        try:
            return await self.live.rollback()
        except PolicyFileError as exc:
            raise HTTPProblem(str(exc), 409, code="policy_refused") from None

    async def tier_update(self, request: Request, name: str) -> dict:
        """Start replacing tier ``name`` with the body's section (``ladder tier update``): checked
        here, then run in the background (``tier_state`` follows it). Its price and verifier are
        the policy's cost model and signals: changing them takes a restart and a recalibration."""
        self.authorize_admin(request)
        current = self._tier(name)
        if self.tier_updates is None:
            raise TierUpdateRefused(
                "this app cannot replace a tier alone: every tier runs in one Serve application "
                "(serve run); `ladder serve` deploys each tier in an application of its own",
                409,
            )
        try:
            body = TierUpdateBody.model_validate_json(await request.body())
        except ValidationError as exc:
            message, param = oai.validation_message(exc)
            raise TierUpdateRefused(message, 400, param) from None
        tier = body.tier
        if tier.name != name:
            raise TierUpdateRefused(
                f"the section's name {tier.name!r} is not the {name!r} of the path", 400, "tier.name"
            )
        for field in ("price", "verifier"):
            if getattr(tier, field) != getattr(current, field):
                raise TierUpdateRefused(
                    f"tier {name}: {field} is part of the policy's cost model and signals; change it "
                    "with a restart (and recalibrate)",
                    400,
                    f"tier.{field}",
                )
        return await self.tier_updates.start(tier, body.timeout_s)

    async def tier_state(self, request: Request, name: str) -> dict:
        """Tier ``name`` as this replica serves it, and its last update (``ladder tier update``)."""
        self.authorize_admin(request)
        tier = self._tier(name)
        out: dict[str, Any] = {"tier": name, "config": tier.model_dump(mode="json"), "app": None, "update": None}
        if self.tier_updates is not None:
            out["app"] = self.tier_updates.live.apps[name]
            state = await self.tier_updates.live.state(name)
            out["update"] = state.model_dump() if state else None
        return out

    def _tier(self, name: str) -> TierConfig:
        if name not in self.tier_names:
            raise HTTPProblem(
                f"tier {name!r} not found (tiers: {', '.join(self.tier_names)})", 404, "tier", "tier_not_found"
            )
        return self.config.tier(name)

    async def keys_usage(self, request: Request) -> dict:
        """Each plan's limits and this period's spend (``ladder keys usage``); never the key. With
        ``?since=SECONDS``: each plan's usage history over that window as well."""
        self.authorize_admin(request)
        since = request.query_params.get("since")
        try:
            since_s = None if since is None else float(since)
            if since_s is not None and not 0 < since_s <= USAGE_KEEP_S:
                raise ValueError
        except ValueError:
            raise HTTPProblem("since: seconds, more than 0 and at most 40 days", 400, "since") from None
        if self.plans.redis is not None:
            await self.plans.refresh()
        rows = []
        for plan in self.plans.plans:
            lim = plan.limits
            row = {
                "id": plan.id,
                "source": plan.source,
                "target": plan.target_text,
                "budget_usd": lim.budget_usd or None,
                "period_s": lim.period_s if lim.budget_usd else None,
                "requests_per_min": lim.requests_per_min or None,
                "tokens_per_min": lim.tokens_per_min or None,
                "concurrent": lim.concurrent or None,
                "spent_usd": None,
                "reserved_usd": None,
            }
            if since_s is not None and self.quotas is None:
                raise HTTPProblem("usage history needs Redis (none is configured)", 503, code="redis_down")
            try:
                if lim.budget_usd and self.quotas is not None:
                    usage = await self.quotas.usage(plan.id, lim.period_s)
                    row.update(spent_usd=usage["spent_usd"], reserved_usd=usage["reserved_usd"])
                if since_s is not None:
                    row["history"] = await self.quotas.usage_since(plan.id, since_s)
            except Exception as exc:  # noqa: BLE001 — Redis away: say so, do not fail the app
                raise HTTPProblem(
                    f"the key limits' Redis is unavailable: {type(exc).__name__}", 503, code="redis_down"
                ) from None
            rows.append(row)
        return {"keys": rows}

    async def keys_put(self, request: Request, plan_id: str) -> dict:
        """Add or replace a plan at run time (every replica adopts it within a second, via Redis)."""
        self.authorize_admin(request)
        return await self.plans.put(plan_id, await request.body())

    async def keys_remove(self, request: Request, plan_id: str) -> dict:
        self.authorize_admin(request)
        return await self.plans.remove(plan_id)

    async def shadow_export(self, request: Request) -> str:
        """The newest ``count`` shadow-log records as JSONL (``ladder shadow export``)."""
        self.authorize_admin(request)
        if self.shadow is None:
            raise HTTPProblem("the shadow log is off (set shadow.enabled: true and a Redis)", 409, code="shadow_off")
        raw = request.query_params.get("count", "1000")  # parsed here: a bad one gets an OpenAI-style 400
        count = int(raw) if raw.isdigit() else 0
        if not 1 <= count <= 1_000_000:
            raise HTTPProblem("count: an integer between 1 and 1000000", 400, "count")
        try:
            records = await self.shadow.read(count)
        except Exception as exc:  # Redis away: say so, do not fail the app
            raise HTTPProblem(
                f"the shadow log's Redis is unavailable: {type(exc).__name__}", 503, code="redis_down"
            ) from None
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


# -- the replica's gateway ------------------------------------------------------------------------
# Serve may ship the deployment class by value (cloudpickle), and a by-value function writes its
# globals into a copy, not into its module: so the replica's gateway is kept here, in an importable
# module, and reached only through these two functions.
_ACTIVE: list[Gateway] = []


def activate(gateway: Gateway) -> None:
    _ACTIVE[:] = [gateway]


def active() -> Gateway:
    if not _ACTIVE:
        raise RuntimeError("the ingress replica has not finished starting")
    return _ACTIVE[0]


# -- typed errors -> HTTP, in one table -----------------------------------------------------------
_PUBLIC = {  # what a client reads of a server-side failure; its cause (engine, Ray, paths) is logged
    "overloaded": "every rung is at capacity: retry after the Retry-After interval",
    "no_rung_available": "no rung could answer this request",
    "tiers_starting": "the tiers this request may use are still starting: retry after the Retry-After interval",
    "tier_failed": "the tier failed while answering",
}


def public_message(code: str | None, request_id: str) -> str:
    return f"{_PUBLIC.get(code or '', 'internal error')} (request {request_id}: the server log has the cause)"


def _answer(exc: Exception) -> tuple[int, str | None, str | None, dict[str, str] | None]:
    """(status, param, code, headers) of a typed error; the most specific class decides."""
    if isinstance(exc, HTTPProblem):
        return exc.status, exc.param, exc.code, exc.headers
    if isinstance(exc, UnknownTier):
        return 404, "model", "model_not_found", None
    if isinstance(exc, InvalidRequest):
        return exc.status, exc.param, exc.code, None
    if isinstance(exc, WorkerTimeout):  # a pinned tier that failed: nothing else may answer
        return 504, None, "tier_failed", {"Retry-After": "1"}
    if isinstance(exc, WorkerFailed):
        return 503, None, "tier_failed", {"Retry-After": "1"}
    if isinstance(exc, NoRungAvailable) and exc.starting:  # engines take tens of seconds to start
        return 503, None, "tiers_starting", {"Retry-After": "5"}
    if isinstance(exc, NoRungAvailable):  # shed load says so, so clients back off instead of retrying hot
        return (
            503,
            None,
            "overloaded" if exc.overloaded else "no_rung_available",
            {"Retry-After": "2" if exc.overloaded else "1"},
        )
    if isinstance(exc, QuotaRefused):
        if exc.reason == "tokens_exceed_limit":  # can never pass: no point retrying
            return 400, "max_tokens", "rate_limit_exceeded", None
        code = "insufficient_quota" if exc.reason == "budget" else "rate_limit_exceeded"
        return 429, None, code, {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    if isinstance(exc, KeyPlanRefused):
        return exc.status, exc.param, "key_plan_refused", None
    if isinstance(exc, QuotasUnavailable):  # limits configured to fail closed
        return 503, None, "limits_unavailable", {"Retry-After": "5"}
    if isinstance(exc, TierUpdateRefused):  # refused before anything started: the tier serves as before
        return exc.status, exc.param, "tier_update_refused", None
    if isinstance(exc, PolicyFileError):  # a pushed policy refused: the old one keeps serving
        return 400, None, "policy_refused", None
    return 500, None, "internal_error", None


def build_api(gateway: Callable[[], Gateway]) -> FastAPI:
    """The FastAPI app over ``gateway()`` (called per request: the Serve replica creates its
    gateway after the app is defined)."""
    api = FastAPI(title="Ladder", version="0.1.0")

    def error(
        request: Request,
        message: str,
        status: int,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        logged: bool = False,
    ) -> JSONResponse:
        gateway().metrics.requests.labels(status=str(status)).inc()
        if status >= 500 and not logged:
            log.warning("request %s: %s", oai.request_id(request.headers.get("x-request-id")), message)
        return JSONResponse(oai.error_body(message, status, param, code), status_code=status, headers=headers)

    @api.exception_handler(LadderError)
    async def typed_error(request: Request, exc: LadderError) -> JSONResponse:
        status, param, code, headers = _answer(exc)
        if status >= 500 and not isinstance(exc, HTTPProblem):  # the cause (engine, Ray) goes to the log only
            rid = oai.request_id(request.headers.get("x-request-id"))
            log.warning("request %s: %s", rid, exc)
            return error(request, public_message(code, rid), status, param, code, headers, logged=True)
        return error(request, str(exc), status, param, code, headers)

    @api.exception_handler(ValidationError)
    async def bad_body(request: Request, exc: ValidationError) -> JSONResponse:
        message, param = oai.validation_message(exc)
        return error(request, message, 400, param)

    add_dashboard_routes(api, gateway)

    @api.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: this process answers (tiers may still be starting: see /ready)."""
        gw = gateway()
        gw.live.maybe_refresh()
        return {"status": "ok", "tiers": gw.tier_names, "policy_version": gw.policy.version}

    @api.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness: 200 once every tier answers, else 503 naming the tiers still starting."""
        gw = gateway()
        body = await gw.readiness()
        if gw.drain.draining:  # shutting down: out of the balancer before the app goes
            body = {**body, "ready": False, "draining": True}
        return JSONResponse(body, status_code=200 if body["ready"] else 503, headers={"Retry-After": "2"})

    @api.post("/v1/chat/completions", openapi_extra=oai.CHAT_OPENAPI)
    async def chat(request: Request) -> Response:
        return await gateway().chat(request)

    @api.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        gw = gateway()
        gw.authorize(request)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "ladder"} for m in gw.model_ids()]
        return JSONResponse({"object": "list", "data": data})

    @api.get("/v1/models/{model_id}")
    async def model(model_id: str, request: Request) -> JSONResponse:
        gw = gateway()
        gw.authorize(request)
        if model_id not in gw.model_ids():
            raise HTTPProblem(f"model {model_id!r} not found", 404, "model", "model_not_found")
        return JSONResponse({"id": model_id, "object": "model", "created": 0, "owned_by": "ladder"})

    @api.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        from prometheus_client import generate_latest

        return PlainTextResponse(generate_latest(gateway().metrics.registry).decode())

    @api.get("/admin/policy")
    async def policy_show(request: Request) -> JSONResponse:
        gw = gateway()
        gw.authorize_admin(request)
        await gw.live.refresh()
        skipped = {t: {"fitted_on": f, "serves": n} for t, (f, n) in gw.unvalidated(gw.policy).items()}
        return JSONResponse(gw.live.info() | {"unvalidated_tiers": skipped})

    @api.put("/admin/policy")
    async def policy_push(request: Request) -> JSONResponse:
        return JSONResponse(await gateway().policy_push(request))

    @api.post("/admin/policy/rollback")
    async def policy_rollback(request: Request) -> JSONResponse:
        return JSONResponse(await gateway().policy_rollback(request))

    @api.post("/admin/tiers/{name}")
    async def tier_update(name: str, request: Request) -> JSONResponse:
        """Replace one tier while the others serve (202: started; follow it with GET)."""
        return JSONResponse(await gateway().tier_update(request, name), status_code=202)

    @api.get("/admin/tiers/{name}")
    async def tier_state(name: str, request: Request) -> JSONResponse:
        return JSONResponse(await gateway().tier_state(request, name))

    @api.get("/admin/keys")
    async def keys_usage(request: Request) -> JSONResponse:
        return JSONResponse(await gateway().keys_usage(request))

    @api.put("/admin/keys/{plan_id}")
    async def keys_put(plan_id: str, request: Request) -> JSONResponse:
        return JSONResponse(await gateway().keys_put(request, plan_id))

    @api.delete("/admin/keys/{plan_id}")
    async def keys_remove(plan_id: str, request: Request) -> JSONResponse:
        return JSONResponse(await gateway().keys_remove(request, plan_id))

    @api.post("/admin/drain")
    async def drain_start(request: Request) -> JSONResponse:
        """Stop taking chat requests (503 ``draining``); answers in flight go on. For ``ladder
        serve``'s shutdown: there is no way back but a restart."""
        gw = gateway()
        gw.authorize_admin(request)
        return JSONResponse(gw.drain.start())

    @api.get("/admin/drain")
    async def drain_state(request: Request) -> JSONResponse:
        gw = gateway()
        gw.authorize_admin(request)
        return JSONResponse(gw.drain.state())

    @api.get("/admin/shadow")
    async def shadow_export(request: Request) -> PlainTextResponse:
        return PlainTextResponse(await gateway().shadow_export(request), media_type="application/x-ndjson")

    return api
