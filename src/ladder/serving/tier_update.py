"""Replacing one tier while the others serve (``ladder tier update NAME --config FILE``).

Blue/green per tier (docs/ARCHITECTURE.md, "Tier updates"). ``ladder serve`` deploys each tier in
a Serve application of its own (``ladder-tier-<name>``). The ingress replica that gets
``POST /admin/tiers/<name>``:

1. checks the new section (``Gateway.tier_update``: same name, price and verifier as the tier it
   replaces — they are the policy's cost model and signals; a node can hold its placement);
2. deploys it as a new application (``ladder-tier-<name>-<n>``) beside the old one and waits until
   its replicas run and one answers (``timeout_s``);
3. records it in Redis (``ladder:tiers:live``, signed) and tells every ingress replica to adopt it
   (``DeploymentHandle.broadcast``): new requests go to the new tier, requests in flight finish on
   the old one;
4. deletes the old application; Serve lets each old replica finish what it holds (up to
   ``server.drain_s``).

A new tier that cannot start is deleted and the old one keeps serving; the update's state
(``ladder:tiers:update:<name>``) says why in one line, to whichever ingress replica is asked
(``GET /admin/tiers/<name>``). An ingress replica Serve starts later reads ``ladder:tiers:live``
when it starts. Tier updates need Redis (the state every ingress replica shares) and ``ladder
serve``'s layout (``serve run`` of ``app.build_app`` puts every tier in one application).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Literal

from pydantic import BaseModel

from ladder.cluster.settings import LadderConfig, TierConfig
from ladder.errors import LadderError, TierUpdateRefused
from ladder.serving.redis_client import LoopRedis
from ladder.serving.signing import Signer

log = logging.getLogger("ladder.tiers")
APP = "ladder"  # the ingress's Serve application (``ladder serve`` deploys and drains it by name)
INGRESS = "ladder-router"  # the router + OpenAI ingress deployment
TIER_APP_PREFIX = "ladder-tier-"
KEY_LIVE = "ladder:tiers:live"  # hash: tier -> signed LiveTier JSON (only tiers replaced since the start)
POLL_S = 2.0


def tier_app_name(tier: str, generation: int = 0) -> str:
    """The Serve application of a tier: generation 0 is the one ``ladder serve`` deployed."""
    return f"{TIER_APP_PREFIX}{tier}" + (f"-{generation}" if generation else "")


def tier_deployment_name(tier: str) -> str:
    return f"tier-{tier}"


def _state_key(tier: str) -> str:
    return f"ladder:tiers:update:{tier}"


def _lock_key(tier: str) -> str:
    return f"ladder:tiers:lock:{tier}"


class LiveTier(BaseModel):
    """Where a replaced tier serves from now, and its config section."""

    app: str
    generation: int
    tier: TierConfig


class UpdateState(BaseModel):
    """One tier update, as ``GET /admin/tiers/<name>`` reports it."""

    tier: str
    state: Literal["starting", "switching", "serving", "failed"]
    generation: int
    app: str
    previous_app: str
    message: str
    since: float
    updated: float


class LiveTiers:
    """Which Serve application serves each tier on this ingress replica, and the Redis records
    every replica shares (signed like everything replicas adopt from Redis)."""

    def __init__(self, redis_url: str | None, signer: Signer, apps: dict[str, str]) -> None:
        self.redis_url, self.signer = redis_url, signer
        self.apps = dict(apps)  # tier -> the application this replica sends it requests to
        self.redis = LoopRedis(redis_url, 2.0) if redis_url else None

    def _open(self, tier: str, raw: bytes | None) -> LiveTier | None:
        value = self.signer.open(f"{KEY_LIVE}:{tier}", raw) if raw is not None else None
        try:
            return LiveTier.model_validate_json(value) if value else None
        except ValueError as exc:
            log.error("ignored the record of tier %s in Redis: %s", tier, exc)
            return None

    def read_sync(self) -> dict[str, LiveTier]:
        """The replaced tiers (at a replica's start, before its event loop serves anything); {}
        when Redis cannot say (logged): the tiers of the config then, as at a fresh start."""
        if not self.redis_url:
            return {}
        import redis

        try:
            raw = redis.Redis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=2).hgetall(KEY_LIVE)
        except Exception as exc:  # noqa: BLE001 — an outage: serve the configured tiers
            log.warning("redis unavailable for the live tiers (using the configured ones): %s", exc)
            return {}
        return self._records(raw)

    async def read(self) -> dict[str, LiveTier]:
        return self._records(await self.redis.get().hgetall(KEY_LIVE) if self.redis else {})

    def _records(self, raw: dict[bytes, bytes]) -> dict[str, LiveTier]:
        """The signed, well-formed records of this app's tiers in ``KEY_LIVE``'s hash."""
        return {t: rec for k, v in raw.items() if (rec := self._open(t := k.decode(), v)) and t in self.apps}

    def adopt(self, config: LadderConfig) -> LadderConfig:
        """``config`` with the tiers replaced since the app was deployed (read from Redis)."""
        live = self.read_sync()
        for name, rec in live.items():
            self.apps[name] = rec.app
        tiers = [live[t.name].tier if t.name in live else t for t in config.tiers]
        return config.model_copy(update={"tiers": tiers})

    def handle(self, tier: str):  # noqa: ANN201 (DeploymentHandle)
        from ray import serve

        return serve.get_deployment_handle(tier_deployment_name(tier), self.apps[tier])

    async def record(self, rec: LiveTier) -> None:
        name = rec.tier.name
        await self.redis.get().hset(KEY_LIVE, name, self.signer.sign(f"{KEY_LIVE}:{name}", rec.model_dump_json()))

    async def state(self, tier: str) -> UpdateState | None:
        if self.redis is None:
            return None
        raw = await self.redis.get().get(_state_key(tier))
        value = self.signer.open(_state_key(tier), raw) if raw is not None else None
        return UpdateState.model_validate_json(value) if value else None

    async def set_state(self, state: UpdateState) -> None:
        state.updated = time.time()
        key = _state_key(state.tier)
        await self.redis.get().set(key, self.signer.sign(key, state.model_dump_json()))

    @staticmethod
    def forget(redis_url: str | None) -> None:
        """A fresh ``ladder serve`` deploys the tiers of its config: earlier records would point
        the new ingress at applications that no longer exist (an external Redis outlives the app)."""
        if not redis_url:
            return
        import redis

        client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        keys = [KEY_LIVE, *client.scan_iter("ladder:tiers:update:*"), *client.scan_iter("ladder:tiers:lock:*")]
        client.delete(*keys)


class TierUpdates:
    """Runs ``ladder tier update`` inside an ingress replica (see the module's docstring)."""

    def __init__(self, live: LiveTiers, config: LadderConfig) -> None:
        self.live = live
        self.cache_path, self.drain_s = config.cache_path, config.server.drain_s
        self.gateway: Any = None  # the Gateway, set once built (it adopts what an update switched to)
        self._tasks: set[asyncio.Task] = set()

    async def start(self, tier: TierConfig, timeout_s: float) -> dict:
        """Claim the tier (one update at a time), check its placement, start the update in the
        background; the state it starts in. Raises ``TierUpdateRefused``."""
        if self.live.redis is None:
            raise TierUpdateRefused(
                "tier updates need Redis (cache.enabled): every ingress replica must learn the new tier", 409
            )
        await asyncio.to_thread(_check_room, tier)
        client = self.live.redis.get()
        claimed = await client.set(_lock_key(tier.name), "1", nx=True, ex=int(timeout_s + self.drain_s + 120))
        if not claimed:
            state = await self.live.state(tier.name)
            since = f" (since {time.strftime('%H:%M:%S', time.gmtime(state.since))} UTC)" if state else ""
            raise TierUpdateRefused(f"an update of tier {tier.name} is already under way{since}", 409)
        previous = await self.live.state(tier.name)
        live = (await self.live.read()).get(tier.name)
        generation = 1 + max(previous.generation if previous else 0, live.generation if live else 0)
        now = time.time()
        state = UpdateState(
            tier=tier.name,
            state="starting",
            generation=generation,
            app=tier_app_name(tier.name, generation),
            previous_app=self.live.apps[tier.name],
            message=f"starting {tier_app_name(tier.name, generation)} beside {self.live.apps[tier.name]}",
            since=now,
            updated=now,
        )
        await self.live.set_state(state)
        task = asyncio.get_running_loop().create_task(self._run(tier, state, timeout_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return state.model_dump()

    async def _run(self, tier: TierConfig, state: UpdateState, timeout_s: float) -> None:
        from ray import serve

        deployed = False
        try:
            from ladder.serving.app import tier_deployment

            app = tier_deployment(tier, self.cache_path, self.drain_s)
            target = serve.RunTarget(app, name=state.app, route_prefix=None)
            await asyncio.to_thread(serve.run_many, [target], wait_for_applications_running=False)
            deployed = True
            await self._wait_running(tier, state, time.monotonic() + timeout_s)
            handle = serve.get_deployment_handle(tier_deployment_name(tier.name), state.app)
            if not await asyncio.wait_for(handle.ready.remote(), 60):
                raise LadderError(f"tier {tier.name}: the new replica's engine is not running")
            state.state, state.message = "switching", f"{state.app} answers; switching every ingress replica to it"
            await self.live.set_state(state)
            await self.live.record(LiveTier(app=state.app, generation=state.generation, tier=tier))
            ingress = serve.get_deployment_handle(INGRESS, APP)
            await asyncio.to_thread(lambda: ingress.broadcast("adopt_tiers").results(timeout_s=30))
            # every ingress replica sends this tier's new requests to the new application now;
            # deleting the old one lets its replicas finish what they hold first (drain_s)
            await asyncio.to_thread(serve.delete, state.previous_app, False)
            skipped = self.gateway is not None and tier.name in self.gateway.unvalidated(self.gateway.policy)
            state.state = "serving"
            state.message = (
                f"tier {tier.name} serves from {state.app}; {state.previous_app} stops once its answers in flight finish"
                + ("; routed requests skip it until a policy fitted on its weights is pushed" if skipped else "")
            )
            log.info("tier update: %s", state.message)
        except Exception as exc:  # noqa: BLE001 — whatever failed, the old tier keeps serving
            state.state, state.message = "failed", _one_line(exc, state.app)
            log.warning("tier update of %s failed: %s", tier.name, state.message)
            if deployed:
                try:
                    await asyncio.to_thread(serve.delete, state.app, False)
                except Exception as cleanup:  # noqa: BLE001 — reported; the old tier serves either way
                    log.error("could not remove %s: %s", state.app, cleanup)
        finally:
            try:
                await self.live.set_state(state)
                await self.live.redis.get().delete(_lock_key(tier.name))
            except Exception as exc:  # noqa: BLE001 — Redis gone: the lock expires on its own
                log.error("tier update of %s: could not record its end: %s", tier.name, exc)

    async def _wait_running(self, tier: TierConfig, state: UpdateState, deadline: float) -> None:
        """Until Serve says the new application runs; its progress goes into the state."""
        from ray import serve
        from ray.serve.schema import ApplicationStatus

        t0 = time.monotonic()
        while True:
            status = await asyncio.to_thread(serve.status)
            app = status.applications.get(state.app)
            if app is not None and app.status == ApplicationStatus.RUNNING:
                return
            if app is not None and app.status == ApplicationStatus.DEPLOY_FAILED:
                from ladder.serving.launch import application_report, startup_error

                raise startup_error(application_report(app))
            if time.monotonic() > deadline:
                raise LadderError(f"tier {tier.name}: the new replicas did not start within {deadline - t0:.0f} s")
            d = app.deployments.get(tier_deployment_name(tier.name)) if app is not None else None
            up = int(d.replica_states.get("RUNNING", 0)) if d is not None else 0
            message = f"starting {state.app}: {up}/{tier.min_replicas} replicas up"
            if d is not None and "to be scheduled" in (d.message or ""):  # Serve's word for "no room"
                message += f" (Serve: {d.message.split('.')[0]})"
            if message != state.message:
                state.message = message
                await self.live.set_state(state)
            await asyncio.sleep(POLL_S)

    async def adopt(self) -> list[str]:
        """Switch this replica to the tiers Redis records (the broadcast of step 3)."""
        from ladder.serving.app import tier_workers

        adopted = []
        for name, rec in (await self.live.read()).items():
            if self.live.apps.get(name) != rec.app:
                self.live.apps[name] = rec.app
                self.gateway.replace_tier(rec.tier, *tier_workers(rec.tier, self.live.handle(name)))
                adopted.append(name)
                log.info("tier %s now served by %s", name, rec.app)
        return adopted


def _one_line(exc: Exception, app: str) -> str:
    if isinstance(exc, TimeoutError):
        return f"{app}: its replica did not answer a readiness probe within 60 s"
    lines = str(exc).strip().splitlines()
    first = lines[0][:300] if lines else ""
    # Ladder's own errors are written to be read as they are; anything else says what it is
    return first if isinstance(exc, LadderError) and first else f"{type(exc).__name__}: {first}"


def _check_room(tier: TierConfig) -> None:
    """``TierUpdateRefused`` when no live node could ever hold a replica of ``tier`` (400), or the
    cluster has no room now for its replicas beside the running ones (409: blue/green runs both
    until the switch; Serve would leave the new ones pending until the timeout)."""
    import ray

    from ladder.cluster.placement import live_nodes, need_of, unplaceable

    need = need_of(tier.actor_options())
    if why := unplaceable(need, live_nodes()):
        raise TierUpdateRefused(f"tier {tier.name}: {why}", 400, "tier.placement")
    free = ray.available_resources()
    for k, v in need.items():
        if free.get(k, 0.0) < v * tier.min_replicas:
            raise TierUpdateRefused(
                f"tier {tier.name}: no room for its new replicas beside the running ones: they need "
                f"{k}: {v * tier.min_replicas:g} and the Ray cluster has {free.get(k, 0.0):g} free (raise "
                "ray.num_cpus, or lower the tier's num_cpus)",
                409,
            )
