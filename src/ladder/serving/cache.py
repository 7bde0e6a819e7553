"""Routing decisions in Redis: short timeouts, a circuit breaker, fire-and-forget writes.

Redis is never on the critical path: a read that errors or exceeds its budget is a miss, a write
never blocks a response, and after ``breaker_failures`` consecutive failures Redis is skipped for
``breaker_cooldown_s`` and then probed again (so a restarted Redis is picked up without a restart of
Ladder). Values hold the decision and its scores, never the prompt, signed with the server secret
(``serving/signing.py``); the router checks what a decision may do (``router.cascade.adopt``). TTLs carry ±10% jitter so
entries written together do not expire together.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict

from ladder.serving.signing import Signer
from ladder.types import Route


def encode_route(route: Route) -> str:
    return json.dumps(asdict(route), separators=(",", ":"))


def decode_route(raw: bytes | str) -> Route:
    data = json.loads(raw)
    return Route(
        start=int(data["start"]),
        policy_version=str(data["policy_version"]),
        scores=tuple(float(s) for s in data.get("scores", ())),
        thresholds=tuple(float(t) for t in data.get("thresholds", ())),
        pinned=bool(data.get("pinned", False)),
    )


class RedisRouteCache:
    def __init__(
        self,
        url: str,
        ttl_s: int,
        signer: Signer,
        read_timeout_ms: float = 30,
        connect_timeout_ms: float = 200,
        breaker_failures: int = 3,
        breaker_cooldown_s: float = 5.0,
        max_pending_writes: int = 64,
    ) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(
            url,
            socket_timeout=max(read_timeout_ms, 100) / 1000,
            socket_connect_timeout=connect_timeout_ms / 1000,
            retry_on_timeout=False,
            retry=None,
        )
        self.ttl_s = ttl_s
        self.signer = signer
        self.read_timeout_s = read_timeout_ms / 1000
        self.breaker_failures = breaker_failures
        self.breaker_cooldown_s = breaker_cooldown_s
        self._failures = 0
        self._open_until = 0.0
        self._writes = asyncio.Semaphore(max_pending_writes)
        self._pending: set[asyncio.Task[None]] = set()
        self.stats = {"hits": 0, "misses": 0, "errors": 0, "skipped": 0, "dropped_writes": 0}

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._open_until

    def _failed(self) -> None:
        self.stats["errors"] += 1
        self._failures += 1
        if self._failures >= self.breaker_failures:
            self._open_until = time.monotonic() + self.breaker_cooldown_s
            self._failures = self.breaker_failures - 1  # after the cool-down, one probe decides

    def _ok(self) -> None:
        self._failures = 0

    async def get(self, key: str) -> Route | None:
        if not self.available:
            self.stats["skipped"] += 1
            self.stats["misses"] += 1
            return None
        try:
            raw = await asyncio.wait_for(self.client.get(key), self.read_timeout_s)
        except Exception:  # any Redis trouble reads as a miss
            self._failed()
            self.stats["misses"] += 1
            return None
        self._ok()
        if raw is None:
            self.stats["misses"] += 1
            return None
        value = self.signer.open(key, raw)  # None: unsigned or tampered (logged by the signer)
        try:
            route = decode_route(value) if value is not None else None
        except (ValueError, KeyError, TypeError):
            route = None
        if route is None:
            self.stats["misses"] += 1
            return None
        self.stats["hits"] += 1
        return route

    async def put(self, key: str, route: Route) -> None:
        if not self.available or self._writes.locked():
            self.stats["dropped_writes"] += 1
            return
        task = asyncio.get_running_loop().create_task(self._write(key, route))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, key: str, route: Route) -> None:
        async with self._writes:
            ttl = max(1, int(self.ttl_s * random.uniform(0.9, 1.1)))
            try:
                await asyncio.wait_for(self.client.set(key, self.signer.sign(key, encode_route(route)), ex=ttl), 1.0)
                self._ok()
            except Exception:
                self._failed()

    async def flush(self) -> None:
        """Wait for pending writes (tests and shutdown)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def close(self) -> None:
        await self.flush()
        await self.client.aclose()
