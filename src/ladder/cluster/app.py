"""The Ray Serve application: one deployment per tier, and a router ingress speaking OpenAI.

``build_app(args)`` composes it from the YAML config, so the same app runs from ``ladder serve``,
``serve run ladder.cluster.app:build_app config=...`` and a Serve config file (``serve deploy``).
Deployments are thin: ``TierDeployment`` wraps a ``TransformersWorker``; ``LadderIngress`` holds
the policy and the Redis route cache and runs ``run_cascade`` (``stream_cascade`` for streams)
over tier handles. The router and
the HTTP ingress are one deployment on purpose: it saves a network hop on every request.
"""


import hmac
import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from ladder.cluster import openai_api as oai
from ladder.cluster.compose import build_policy, cost_function
from ladder.cluster.live_policy import LivePolicy, PolicyFiles
from ladder.cluster.shadow import ShadowLog
from ladder.cluster.metrics import LadderMetrics
from ladder.cluster.settings import LadderConfig, load_config
from ladder.cluster.tiers import TierDeployment, TierHandleStreamer, TierHandleWorker
from ladder.errors import (InvalidRequest, NoRungAvailable, PolicyFileError, UnknownTier, WorkerFailed,
                           WorkerTimeout)  # fmt: skip
from ladder.protocols import Policy
from ladder.router.cascade import run_cascade
from ladder.router.streaming import StreamStart, stream_cascade
from ladder.types import CascadeResult, Query, Route


api = FastAPI(title="Ladder", version="0.1.0")
log = logging.getLogger("ladder.app")


def _bearer_in(request: Request, keys: list[bytes]) -> bool:
    header = request.headers.get("authorization", "")
    token = header[7:].encode() if header.lower().startswith("bearer ") else b""
    # Compare against every key, in constant time per key, so timing leaks nothing.
    return any([hmac.compare_digest(token, k) for k in keys])


@serve.deployment
@serve.ingress(api)
class LadderIngress:
    def __init__(self, config_json: str, redis_url: str | None, tiers: dict[str, DeploymentHandle]) -> None:
        config = LadderConfig.model_validate_json(config_json)
        self.config = config
        self.tier_names = config.tier_names
        self.workers = [TierHandleWorker(t.name, tiers[t.name], t.timeout_s) for t in config.tiers]
        self.streamers = [TierHandleStreamer(t.name, tiers[t.name], t.timeout_s) for t in config.tiers]
        policy = build_policy(config.policy, self.tier_names, config.verified_tiers)
        self.live = LivePolicy(policy, self.tier_names, config.verified_tiers, redis_url)
        self.cost = cost_function(config)
        self.metrics = LadderMetrics()
        self.cache = None
        if redis_url and config.cache.enabled:
            from ladder.cluster.cache import RedisRouteCache

            c = config.cache
            self.cache = RedisRouteCache(redis_url, c.ttl_s, c.read_timeout_ms, c.connect_timeout_ms,
                                         c.breaker_failures, c.breaker_cooldown_s)  # fmt: skip
        self._keys = [k.encode() for k in config.server.api_keys]
        self._admin_keys = [k.encode() for k in config.server.admin_keys]
        self.shadow = ShadowLog(redis_url, config.shadow) if config.shadow.enabled and redis_url else None

    @property
    def policy(self) -> Policy:
        """The live policy (``ladder policy push`` swaps it); a request reads it once and keeps it."""
        return self.live.policy

    # -- helpers ---------------------------------------------------------------------------
    def _authorized(self, request: Request) -> bool:
        return not self._keys or _bearer_in(request, self._keys)

    def _error(self, message: str, status: int, param: str | None = None, code: str | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:  # fmt: skip
        self.metrics.requests.labels(status=str(status)).inc()
        return JSONResponse(oai.error_body(message, status, param, code), status_code=status, headers=headers)

    def _admin(self, request: Request) -> JSONResponse | None:
        """Policy changes need an admin key (``server.admin_keys``); with none configured, only
        a client on this machine may make them."""
        if self._admin_keys:
            if not _bearer_in(request, self._admin_keys):
                return self._error("invalid or missing admin key", 401, code="invalid_api_key")
            return None
        host = request.client.host if request.client else ""
        if host not in ("127.0.0.1", "::1", "localhost"):
            return self._error("policy changes are allowed from this machine only (or set server.admin_keys)",
                               403, code="forbidden")  # fmt: skip
        return None

    def _model_ids(self) -> list[str]:
        return [self.config.server.router_model, *self.tier_names]

    # -- endpoints -------------------------------------------------------------------------
    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        self.live.maybe_refresh()
        return {"status": "ok", "tiers": self.tier_names, "policy_version": self.policy.version}

    @api.get("/admin/policy")
    async def policy_show(self, request: Request) -> JSONResponse:
        if denied := self._admin(request):
            return denied
        await self.live.refresh()
        return JSONResponse(self.live.info())

    @api.put("/admin/policy")
    async def policy_push(self, request: Request) -> JSONResponse:
        if denied := self._admin(request):
            return denied
        try:
            files = PolicyFiles.decode(await request.body())
        except ValueError:
            return self._error('the body must be {"doc": <policy JSON text>, "tensors_b64": <base64>}', 400)
        try:
            info = await self.live.push(files)
        except PolicyFileError as exc:  # refused: the old policy keeps serving
            return self._error(str(exc), 400, code="policy_refused")
        return JSONResponse(info)

    @api.get("/admin/shadow")
    async def shadow_export(self, request: Request) -> Response:
        """The newest ``count`` shadow-log records as JSONL (``ladder shadow export``)."""
        if denied := self._admin(request):
            return denied
        if self.shadow is None:
            return self._error("the shadow log is off (set shadow.enabled: true and a Redis)", 409, code="shadow_off")
        raw = request.query_params.get("count", "1000")  # parsed here: a bad one gets an OpenAI-style 400
        count = int(raw) if raw.isdigit() else 0
        if not 1 <= count <= 1_000_000:
            return self._error("count: an integer between 1 and 1000000", 400, "count")
        try:
            records = await self.shadow.read(count)
        except Exception as exc:  # Redis away: say so, do not fail the app
            return self._error(f"the shadow log's Redis is unavailable: {type(exc).__name__}", 503, code="redis_down")
        return PlainTextResponse("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                 media_type="application/x-ndjson")  # fmt: skip

    @api.post("/admin/policy/rollback")
    async def policy_rollback(self, request: Request) -> JSONResponse:
        if denied := self._admin(request):
            return denied
        try:
            return JSONResponse(await self.live.rollback())
        except PolicyFileError as exc:
            return self._error(str(exc), 409, code="policy_refused")

    @api.get("/metrics")
    async def prometheus(self) -> PlainTextResponse:
        from prometheus_client import generate_latest

        return PlainTextResponse(generate_latest(self.metrics.registry).decode())

    @api.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return self._error("invalid or missing API key", 401, code="invalid_api_key")
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "ladder"} for m in self._model_ids()]
        return JSONResponse({"object": "list", "data": data})

    @api.get("/v1/models/{model_id}")
    async def model(self, model_id: str, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return self._error("invalid or missing API key", 401, code="invalid_api_key")
        if model_id not in self._model_ids():
            return self._error(f"model {model_id!r} not found", 404, "model", "model_not_found")
        return JSONResponse({"id": model_id, "object": "model", "created": 0, "owned_by": "ladder"})

    @api.post("/v1/chat/completions", openapi_extra=oai.CHAT_OPENAPI)
    async def chat(self, request: Request):  # noqa: ANN201
        started = time.perf_counter()
        self.live.maybe_refresh()
        if not self._authorized(request):  # before parsing: strangers learn nothing about the API
            return self._error("invalid or missing API key", 401, code="invalid_api_key")
        # Serve's proxy puts the client's x-request-id (or a new one) on the request and echoes it on
        # the response; logs and the shadow log use it when it is a sane token, else their own.
        request_id = oai.request_id(request.headers.get("x-request-id"))
        try:
            body = oai.ChatRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            message, param = oai.validation_message(exc)
            return self._error(message, 400, param)
        try:
            route = self._forced_route(body.model)
            query = body.to_query()
            if query.sampling.max_tokens > self.config.server.max_completion_tokens:
                raise InvalidRequest(f"max_tokens: at most {self.config.server.max_completion_tokens} on this "
                                     f"server, got {query.sampling.max_tokens}", "max_tokens")  # fmt: skip
            if body.stream:
                return await self._stream(body, query, route, started, request_id)
            result = await run_cascade(query, self.policy, self.workers, self.cache, self.cost, route)
        except UnknownTier as exc:
            return self._error(str(exc), 404, "model", "model_not_found")
        except InvalidRequest as exc:
            return self._error(str(exc), exc.status, exc.param, exc.code)
        except WorkerFailed as exc:  # a pinned tier that failed: nothing else may answer
            log.warning("request %s: %s", request_id, exc)
            return self._error(str(exc), 504 if isinstance(exc, WorkerTimeout) else 503, code="tier_failed",
                               headers={"Retry-After": "1"})  # fmt: skip
        except NoRungAvailable as exc:  # shed load says so, so clients back off instead of retrying hot
            log.warning("request %s: %s", request_id, exc)
            code = "overloaded" if exc.overloaded else "no_rung_available"
            return self._error(str(exc), 503, code=code, headers={"Retry-After": "2" if exc.overloaded else "1"})
        self._record(result, time.perf_counter() - started, request_id, query)
        headers = oai.ladder_headers(result, self.cache is not None)
        body_json = oai.completion_body(result, oai.new_completion_id(), body.logprobs, self.cache is not None)
        return JSONResponse(body_json, headers=headers)

    def _forced_route(self, model: str) -> Route | None:
        if model == self.config.server.router_model:
            return None
        if model not in self.tier_names:
            raise UnknownTier(model, self._model_ids())
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
            if a.error:
                m.tier_errors.labels(tier=a.tier).inc()
        m.tokens.labels(kind="prompt").inc(result.answer.prompt_tokens)
        m.tokens.labels(kind="completion").inc(result.answer.completion_tokens)
        m.cost.inc(result.cost_usd)
        m.decision.observe(result.decision_s)
        m.latency.observe(elapsed)

    # -- streaming -------------------------------------------------------------------------
    async def _stream(self, body: oai.ChatRequest, query: Query, route: Route | None, started: float,
                      request_id: str) -> StreamingResponse:  # fmt: skip
        """A routed or pinned stream (``stream_cascade``): the accepted rung's tokens go out as
        generated; the last chunk carries the ``ladder`` object."""
        events = stream_cascade(query, self.policy, self.streamers, self.cache, self.cost, route)
        # The first event (which rung answers) comes before the 200 header, so a request that no
        # rung can serve, or bad input, still gets its 4xx/503 (raised here, mapped by chat()).
        start: StreamStart = await events.__anext__()  # type: ignore[assignment]
        completion_id, created, tier = oai.new_completion_id(), int(time.time()), start.tier

        async def sse():  # noqa: ANN202
            finished = False
            try:
                yield oai.sse(oai.chunk(completion_id, created, tier, {"role": "assistant", "content": ""}))
                async for event in events:
                    if isinstance(event, str):
                        yield oai.sse(oai.chunk(completion_id, created, tier, {"content": event}))
                        continue
                    result: CascadeResult = event  # the last event
                    self._record(result, time.perf_counter() - started, request_id, query)
                    last = oai.chunk(completion_id, created, tier, {}, result.answer.finish_reason)
                    yield oai.sse({**last, "ladder": oai.ladder_extension(result, self.cache is not None)})
                    if body.stream_options and body.stream_options.include_usage:
                        yield oai.sse({**oai.chunk(completion_id, created, tier, {}), "choices": [],
                                       "usage": oai.usage(result.answer)})  # fmt: skip
                finished = True
                yield "data: [DONE]\n\n"
            except Exception as exc:  # after the 200 header: an error event, then close
                finished = True
                log.warning("request %s: failed while streaming: %s", request_id, exc)
                self.metrics.tier_errors.labels(tier=tier).inc()
                yield oai.sse(oai.error_body(str(exc), 503, code="tier_failed"))
            finally:
                if not finished:  # the client went away: stop the rung's generation (vLLM aborts)
                    await events.aclose()

        headers = oai.stream_headers(tier, start.route, start.route_source, start.cache_hit, self.cache is not None)
        return StreamingResponse(sse(), media_type="text/event-stream", headers=headers)


def build_app(args: dict[str, Any]) -> Application:
    """Serve entry point: ``args`` = {"config": path | None, "redis_url": url | None}."""
    if "config_json" in args:  # already validated by the caller (ladder serve)
        config = LadderConfig.model_validate_json(args["config_json"])
    else:
        config = load_config(args.get("config"))
    config_json = config.model_dump_json()
    handles = {}
    for tier in config.tiers:
        actor = {"num_cpus": tier.num_cpus, "num_gpus": tier.num_gpus}
        handles[tier.name] = (
            serve.deployment(TierDeployment)
            .options(
                name=f"tier-{tier.name}",
                num_replicas=tier.num_replicas,
                ray_actor_options=actor,
                max_ongoing_requests=tier.max_ongoing_requests,
                max_queued_requests=tier.max_queued_requests,
                health_check_period_s=10,
                # An engine that cannot start fails the same way twice: report it within a minute
                # (ladder serve names the tier and exits 2) instead of retrying for many.
                max_constructor_retry_count=2,
            )
            .bind(config_json, tier.name)
        )
    redis_url = args.get("redis_url") or config.cache.redis_url
    return LadderIngress.options(
        name="ladder-router", num_replicas=1, ray_actor_options={"num_cpus": 0.25},
        max_ongoing_requests=256, max_queued_requests=512,
    ).bind(config_json, redis_url, handles)  # fmt: skip
