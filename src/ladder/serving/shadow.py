"""The shadow log: what the live app decided for each request, kept for the next policy.

Each record holds the request id, the policy version, the route (start rung, scores, thresholds,
cache), every rung tried (accepted or not, after how many tokens, its signals, tokens and cost),
the answering rung and the latency — and the conversation only when ``shadow.prompts`` is on. It
goes to a Redis stream trimmed to ``max_len`` entries, written off the request path (a full or
failing Redis drops records, never a request). ``ladder shadow export`` reads it back as JSONL;
rows with a conversation are ``PROMPTS.jsonl`` rows for ``ladder collect``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from ladder.cluster.settings import ShadowLogConfig
from ladder.types import CascadeResult, Query

log = logging.getLogger("ladder.shadow")


def shadow_record(request_id: str, query: Query, result: CascadeResult, latency_s: float, prompts: bool) -> dict:
    route = result.route
    record = {
        "id": request_id,
        "ts": time.time(),
        "policy_version": route.policy_version,
        "route": {
            "start": route.start,
            "scores": list(route.scores),
            "thresholds": list(route.thresholds),
            "source": result.route_source,
            "cache_hit": result.cache_hit,
        },
        "answered_by": result.answer.tier,
        "streamed": result.streamed,
        "latency_s": latency_s,
        "cost_usd": result.cost_usd,
        "max_tokens": query.sampling.max_tokens,
        "attempts": [
            {
                "tier": a.tier,
                "accepted": a.accepted,
                "decided_at": a.decided_at,
                "error": a.error,
                "completion_tokens": a.generation.completion_tokens if a.generation else 0,
                "mean_logprob": (sum(a.generation.logprobs) / len(a.generation.logprobs))
                if a.generation and a.generation.logprobs
                else None,
                "signals": dict(a.generation.signals) if a.generation else {},
                "cost_usd": a.cost_usd,
            }
            for a in result.attempts
        ],
    }
    if prompts:
        record["messages"] = [{"role": m.role, "content": m.content} for m in query.messages]
    return record


class ShadowLog:
    def __init__(self, redis_url: str, config: ShadowLogConfig, max_pending: int = 64) -> None:
        import redis.asyncio as aioredis

        self.config = config
        self.client = aioredis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=0.5)
        self._slots = asyncio.Semaphore(max_pending)
        self._pending: set[asyncio.Task] = set()
        self.dropped = 0

    def record(self, request_id: str, query: Query, result: CascadeResult, latency_s: float) -> None:
        if self._slots.locked():  # Redis is slow or away: drop the record, never the request
            self.dropped += 1
            return
        entry = json.dumps(shadow_record(request_id, query, result, latency_s, self.config.prompts), ensure_ascii=False)
        task = asyncio.get_running_loop().create_task(self._write(entry))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, entry: str) -> None:
        async with self._slots:
            try:
                await asyncio.wait_for(
                    self.client.xadd(
                        self.config.stream, {"record": entry}, maxlen=self.config.max_len, approximate=True
                    ),
                    2.0,
                )
            except Exception as exc:
                self.dropped += 1
                log.warning("shadow log record dropped: %s", exc)

    async def read(self, count: int) -> list[dict]:
        """The newest ``count`` records, oldest first."""
        entries = await asyncio.wait_for(self.client.xrevrange(self.config.stream, count=count), 10.0)
        return [json.loads(fields[b"record"]) for _, fields in reversed(entries)]
