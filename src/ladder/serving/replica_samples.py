"""The dashboard's figures summed over every ingress replica, through Redis.

Each replica writes its Prometheus samples (``dashboard.samples``: the numbers /metrics says) into
one Redis hash, a field per replica with the time it was written — after requests (at most every
``PUBLISH_S``, off the request's path) and whenever its dashboard is drawn. A dashboard sums this
replica's live samples with every other replica's latest snapshot younger than ``KEEP_S``: counters
and histogram buckets add up, so the figures (rates, shares, quantiles from summed buckets) are
the whole app's, as Prometheus's ``sum(...)`` would give. An idle replica's last snapshot stays
right (its counters have not moved); a replica gone for ``KEEP_S`` drops out, as its series do in
Prometheus. Without Redis the page says it shows one replica; with Redis unreachable it says the
figures are partial and shows this replica's.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

from ladder.serving.redis_client import LoopRedis

KEY = "ladder:dashboard:replicas"
PUBLISH_S = 5.0
KEEP_S = 3600.0
log = logging.getLogger("ladder.dashboard")


@dataclass(frozen=True)
class Scope:
    """Which replicas a dashboard's figures cover."""

    replicas: int  # replicas summed, this one included
    partial: str | None = None  # why only some (None: all that Redis knows of)
    oldest_s: float = 0.0  # age of the oldest snapshot summed


class ReplicaSamples:
    def __init__(self, redis_url: str | None, replica: str | None = None, timeout_s: float = 0.5) -> None:
        self.redis = LoopRedis(redis_url, timeout_s) if redis_url else None
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    async def _write(self, client, own: dict[str, float], at: float) -> None:  # noqa: ANN001 (redis.asyncio.Redis)
        await client.hset(KEY, self.replica, json.dumps({"at": at, "samples": own}))

    async def publish(self, own: dict[str, float]) -> None:
        """This replica's snapshot into Redis (best effort: the dashboard says when it is partial)."""
        if self.redis is None:
            return
        try:
            await self._write(self.redis.get(), own, time.time())
        except Exception as exc:  # noqa: BLE001 — Redis down must not touch a request
            log.debug("dashboard snapshot not published: %s", exc)

    async def gather(self, own: dict[str, float]) -> tuple[dict[str, float], Scope]:
        """This replica's samples plus every other replica's latest snapshot, summed; and their scope."""
        if self.redis is None:
            return own, Scope(1)
        now = time.time()
        try:
            client = self.redis.get()
            await self._write(client, own, now)
            raw = await client.hgetall(KEY)
        except Exception as exc:  # noqa: BLE001 — any Redis failure: this replica's numbers, said so
            return own, Scope(1, partial=f"Redis unreachable ({type(exc).__name__}): this replica's figures only")
        total, n, oldest, gone = dict(own), 1, 0.0, []
        for field, blob in raw.items():
            name = field.decode() if isinstance(field, bytes) else field
            if name == self.replica:
                continue
            try:
                snap = json.loads(blob)
                age = now - float(snap["at"])
                values = {str(k): float(v) for k, v in snap["samples"].items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                gone.append(name)  # not a snapshot this code wrote
                continue
            if age > KEEP_S:
                gone.append(name)
                continue
            for k, v in values.items():
                total[k] = total.get(k, 0.0) + v
            n, oldest = n + 1, max(oldest, age)
        if gone:
            try:
                await client.hdel(KEY, *gone)
            except Exception:  # noqa: BLE001 — cleaned up on a later render
                pass
        return total, Scope(n, None, oldest)
