"""Draining every ingress replica, not only the one that was told.

``ladder serve`` drains on SIGTERM with one ``POST /admin/drain``, which Serve's proxy hands to ONE
ingress replica — and with ``server.ingress_replicas`` > 1 the proxy picks the replica with the
shorter queue, so the busy ones (the ones with answers to finish) may never be told. So the told
replica raises a flag in Redis (signed, and named for this start of the app: apps sharing a Redis
must not drain each other), every replica reads it on Serve's health-check tick (it runs on every
replica, busy or idle, every ``HEALTH_PERIOD_S``) and from then on refuses new chat requests and
reports its requests in flight to one Redis hash; ``GET /admin/drain`` sums the reports younger
than ``REPORT_KEEP_S``. ``ladder serve`` stops waiting once every replica has reported none.

A request admitted by a replica in the tick before it learns of the drain is in its count when it
reports, so a count only goes down once reported. Without Redis (none configured, or unreachable)
only the told replica drains; the state says ``shared: false`` and the others are left to Serve's
own graceful shutdown (``graceful_shutdown_timeout_s`` = ``server.drain_s``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from typing import Any

from ladder.serving.redis_client import LoopRedis
from ladder.serving.signing import Signer

HEALTH_PERIOD_S = 2.0  # the ingress's health_check_period_s: how soon an untold replica learns
REPORT_KEEP_S = 5 * HEALTH_PERIOD_S  # a replica silent this long is gone (Serve replaces it)
FLAG_TTL_S = 2 * 3600  # longer than the longest drain (server.drain_s <= 3600)
log = logging.getLogger("ladder.drain")


class Drain:
    def __init__(self, redis_url: str | None, launch: str, signer: Signer, timeout_s: float = 0.5) -> None:
        self.redis = LoopRedis(redis_url, timeout_s) if redis_url else None
        self.signer = signer
        self.flag_key = f"ladder:drain:{launch}"
        self.reports_key = f"ladder:drain:{launch}:replicas"
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.launch = launch
        self.draining = False
        self.in_flight = 0
        self._reporting: set[asyncio.Task] = set()

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        """A request's answer is sent; while draining, report at once (``ladder serve`` stops
        waiting on the report of the last one, not a tick later)."""
        self.in_flight -= 1
        if self.draining and self.redis is not None:
            task = asyncio.get_running_loop().create_task(self._report())
            self._reporting.add(task)
            task.add_done_callback(self._reporting.discard)

    async def _report(self) -> None:
        try:
            await self.redis.get().hset(self.reports_key, self.replica, self._report_value())
        except Exception as exc:  # noqa: BLE001 — the next tick reports again
            log.debug("drain report: Redis unreachable (%s)", exc)

    def _report_value(self) -> str:
        body = json.dumps({"in_flight": self.in_flight, "at": time.time()})
        return self.signer.sign(f"{self.reports_key}:{self.replica}", body)

    async def start(self) -> None:
        """This replica stops taking chat requests and tells the others (through Redis)."""
        if not self.draining:
            log.info("draining: %d request(s) in flight", self.in_flight)
        self.draining = True
        if self.redis is None:
            return
        try:
            client = self.redis.get()
            await client.set(self.flag_key, self.signer.sign(self.flag_key, self.launch), ex=FLAG_TTL_S)
            await client.hset(self.reports_key, self.replica, self._report_value())
            await client.expire(self.reports_key, FLAG_TTL_S)
        except Exception as exc:  # noqa: BLE001 — Redis down: this replica drains alone
            log.warning("draining: Redis unreachable (%s): the other ingress replicas are not told", exc)

    async def tick(self) -> None:
        """Serve's health-check tick: learn of a drain another replica was told of; while
        draining, report this replica's requests in flight. Never raises (a Redis outage must not
        make Serve think the replica is unhealthy)."""
        if self.redis is None:
            return
        try:
            client = self.redis.get()
            if not self.draining:
                raw = await client.get(self.flag_key)
                if raw is None or self.signer.open(self.flag_key, raw) != self.launch:
                    return
                self.draining = True
                log.info("draining (told by another replica): %d request(s) in flight", self.in_flight)
            await client.hset(self.reports_key, self.replica, self._report_value())
        except Exception as exc:  # noqa: BLE001
            log.debug("drain tick: Redis unreachable (%s)", exc)

    async def state(self) -> dict[str, Any]:
        """``draining``; ``in_flight`` summed over the replicas that reported (this one live);
        ``replicas``: how many those are; ``shared``: whether the others could be reached."""
        own = {"draining": self.draining, "in_flight": self.in_flight}
        if self.redis is None:
            return {**own, "replicas": 1, "shared": False}
        try:
            client = self.redis.get()
            if self.draining:
                await client.hset(self.reports_key, self.replica, self._report_value())
            raw = await client.hgetall(self.reports_key)
        except Exception:  # noqa: BLE001 — this replica's state, said to be partial
            return {**own, "replicas": 1, "shared": False}
        total, replicas, now = self.in_flight, 1, time.time()
        for field, blob in raw.items():
            name = field.decode() if isinstance(field, bytes) else field
            if name == self.replica:
                continue
            body = self.signer.open(f"{self.reports_key}:{name}", blob)
            try:
                report = json.loads(body) if body is not None else None
                if report is None or now - float(report["at"]) > REPORT_KEEP_S:
                    continue
                total += int(report["in_flight"])
            except (ValueError, KeyError, TypeError):
                continue
            replicas += 1
        return {"draining": self.draining, "in_flight": total, "replicas": replicas, "shared": True}
