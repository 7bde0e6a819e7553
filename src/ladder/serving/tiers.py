"""Tier deployments and the handle adapter that makes them ``Worker``s for the cascade."""

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

from ray import serve
from ray.serve.handle import DeploymentHandle

from ladder.cluster.compose import build_worker, materialize_in
from ladder.cluster.settings import TierConfig
from ladder.errors import InvalidRequest, TierLost, TierOverloaded, TierStarting, WorkerFailed, WorkerTimeout
from ladder.types import Delta, Generation, Query


class TierDeployment:
    """One tier's model in a replica. Loads from the weight cache (converting once if needed)."""

    def __init__(self, tier_json: str, cache_dir: str) -> None:
        tier = TierConfig.model_validate_json(tier_json)  # its own section only: no keys, no Redis
        self.worker = build_worker(tier, materialize_in(Path(cache_dir), tier)).load()

    async def generate(self, query: Query) -> Generation:
        return await self.worker.generate(query)

    async def stream(self, query: Query, coalesce_s: float = 0.0):  # noqa: ANN201 (async generator of Delta | Generation)
        """The worker's deltas; with ``coalesce_s`` > 0 the deltas that arrive within that many
        seconds of the last one sent are merged into one (a buffered request only needs the
        prefix a gate reads, not a Ray message per token: on 2 cores those messages cost CPU the
        engines need). The first delta and the final Generation are never held."""
        held: list[Delta] = []
        sent_at = 0.0
        async for item in self.worker.stream(query):
            if isinstance(item, Delta) and coalesce_s > 0:
                held.append(item)
                if sent_at and time.monotonic() - sent_at < coalesce_s:
                    continue
                item, held = merge(held), []
            elif held:
                yield merge(held)
                held = []
            sent_at = time.monotonic()
            yield item

    def __del__(self) -> None:  # Serve calls it when it stops a replica: stop the engine with it
        if close := getattr(getattr(self, "worker", None), "close", None):
            close()

    def stats(self) -> dict[str, int]:
        """What this replica's engine has produced (tests check that a cancelled stream stops it)."""
        return {"generated_tokens": int(getattr(self.worker, "generated_tokens", -1))}

    def ready(self) -> bool:
        """Answered only once this replica's engine is loaded (a replica still starting does not
        answer at all: the ingress's readiness probe times out on it)."""
        return self.worker.model is not None and bool(getattr(self.worker, "healthy", True))

    def check_health(self) -> None:
        # A worker that can lose its engine (vLLM's runs in a child process) says so: Serve then
        # replaces this replica instead of routing more requests into a dead engine.
        if self.worker.model is None or not getattr(self.worker, "healthy", True):
            raise RuntimeError(f"tier {self.worker.tier}: engine not running")


def merge(deltas: list[Delta]) -> Delta:
    """Consecutive deltas of one stream as one (text, tokens and log-probabilities in order)."""
    return Delta(
        "".join(d.text for d in deltas),
        tuple(t for d in deltas for t in d.token_ids),
        tuple(lp for d in deltas for lp in d.logprobs),
        next((d.prompt_tokens for d in deltas if d.prompt_tokens), 0),
    )


STARTING_PROBE_S = 1.0  # how long a request waits to learn whether a tier has started
LOST_RECHECK_S = 5.0  # how often a tier with no running replica is looked for again


class TierHandleStreamer:
    """The ``StreamWorker`` protocol over a tier deployment handle: closing the stream early (a
    rung that lost, a client that left) cancels the replica's call, which stops its engine.
    ``coalesce_s``: see ``TierDeployment.stream`` (buffered requests use it)."""

    def __init__(self, tier: str, handle: DeploymentHandle, timeout_s: float, coalesce_s: float = 0.0) -> None:
        self.tier = tier
        self.plain = handle
        self.handle = handle.options(stream=True)
        self.timeout_s = timeout_s
        self.coalesce_s = coalesce_s
        self._up = False  # a replica of this tier has answered a readiness probe
        self._probe: asyncio.Future[str] | None = None
        self._lost_checked: float | None = None  # when Serve last said no replica runs (None: not lost)
        self._recheck: asyncio.Future[bool] | None = None

    async def ready(self, timeout_s: float = 2.0) -> str:
        """ "ready"; "starting" (no replica answered within ``timeout_s`` and none ever has);
        "busy" (none answered in time, but one has before: its queue is full, it is not starting);
        "unavailable" (one has before, and Serve has no running replica of it now: its node was
        lost and none other offers its placement); or "failed" (the engine is down)."""
        call = self.plain.ready.remote()
        try:
            ok = await asyncio.wait_for(call, timeout_s)
        except TimeoutError:
            call.cancel()
            if not self._up:
                return "starting"
            return "unavailable" if await self._mark_lost() else "busy"
        except Exception:  # noqa: BLE001 — a dead replica, an engine that failed: not ready, whatever the cause
            return "unavailable" if self._up and await self._mark_lost() else "failed"
        self._up = self._up or bool(ok)
        if ok:
            self._lost_checked = None
        return "ready" if ok else "failed"

    async def _mark_lost(self) -> bool:
        """After a failed call or probe: whether no replica runs; if so, requests skip the tier."""
        lost = await self.no_running_replica()
        self._lost_checked = time.monotonic() if lost else None
        return lost

    async def lost(self) -> bool:
        """Whether this tier, once up, has no running replica (its node lost and none other offers
        its placement): requests then skip it at once instead of each waiting its ``timeout_s``.
        While lost, Serve is asked again at most every ``LOST_RECHECK_S`` (one shared call), so the
        tier is used again as soon as a replica runs."""
        if self._lost_checked is None:
            return False
        if time.monotonic() - self._lost_checked < LOST_RECHECK_S:
            return True
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.ensure_future(self._mark_lost())
        return await asyncio.shield(self._recheck)

    async def no_running_replica(self) -> bool:
        """Whether Serve's controller reports no RUNNING replica of this tier (False when it
        cannot say in time). Asked only after a probe failed, so its cost is off the hot path."""
        try:
            status = await asyncio.wait_for(asyncio.to_thread(serve.status), 2.0)
            deployment = status.applications[self.plain.app_name].deployments[self.plain.deployment_name]
        except Exception:  # noqa: BLE001 — no answer is no evidence: keep the probe's own reading
            return False
        return deployment.replica_states.get("RUNNING", 0) == 0  # ReplicaState is a str enum

    async def started(self) -> bool:
        """Whether a replica of this tier is up. Until one has answered, every request asks (one
        probe of at most ``STARTING_PROBE_S`` shared by the requests that arrive meanwhile); once
        one has, never again — a replica lost later is Serve's to replace, and its requests fail
        or time out as before. (An ingress replica that restarts under a full queue may call a
        busy tier starting until a probe gets through: it answers 503 + Retry-After meanwhile.)"""
        if self._up:
            return True
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self.ready(STARTING_PROBE_S))
        await asyncio.shield(self._probe)
        return self._up

    async def stream(self, query: Query) -> AsyncIterator[Delta | Generation]:
        if not await self.started():  # skip at once: a tier still loading its engine is not an answer
            raise TierStarting(f"tier {self.tier} is starting")
        if await self.lost():
            raise TierLost(f"tier {self.tier} has no running replica")
        call = self.handle.stream.remote(query, self.coalesce_s)
        finished = False
        try:
            while True:
                # A stall timeout, not a total one: a tier that keeps sending tokens is working. A
                # 384-token answer of the large tier on one core of this CPU takes ~270 s under
                # load (memory-bound decoding), and a 120 s total cut every such escalation.
                try:
                    item = await asyncio.wait_for(call.__anext__(), self.timeout_s)
                except StopAsyncIteration:
                    finished = True
                    return
                except asyncio.TimeoutError:
                    await self._mark_lost()  # a replica gone with its node: the next requests skip it
                    raise WorkerTimeout(f"tier {self.tier} sent nothing for {self.timeout_s}s") from None
                except Exception as exc:
                    error = unwrap_error(exc, self.tier)
                    if type(error) is WorkerFailed:  # not a client error, not a full queue
                        await self._mark_lost()
                    raise error from None
                yield item
        finally:
            if not finished:
                try:
                    call.cancel()
                except Exception:  # noqa: BLE001 — a call that already failed (e.g. shed by backpressure)
                    pass  # re-raises its error here; the error that matters was raised above


def unwrap_error(exc: Exception, tier: str) -> Exception:
    """Ray wraps a replica's exception; a client error stays a client error, the rest is a tier failure."""
    from ray.serve.exceptions import BackPressureError

    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, InvalidRequest):
        return cause
    if isinstance(cause, BackPressureError):  # the tier's queue is full: shed, do not wait
        return TierOverloaded(f"tier {tier} is overloaded: {cause}")
    return WorkerFailed(f"tier {tier}: {type(cause).__name__}: {str(cause)[:300]}")
