"""Offline batch scoring on Ray Data: ``ladder score INPUT.jsonl --out OUT.jsonl``.

Every row goes through the same ``run_cascade`` as the server. Ray Data feeds batches to a pool
of ``CascadeActor``s, each holding the whole ladder (the policy and every tier's worker), so an
escalation stays inside one actor instead of crossing pools. Output rows are appended and
flushed as batches finish, so an interrupted job resumes by skipping ids already in OUT. One bad
row (empty prompt, too long) becomes an error row; it never stops the job.

Input rows: {"id"?: str, "prompt": str} or {"id"?: str, "messages": [{role, content}, …]},
optional "max_tokens", "temperature", "seed". Without an id, the row's content hash is its id.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ladder.cluster.compose import build_policy, build_worker, cost_function, materialize
from ladder.cluster.settings import LadderConfig
from ladder.errors import InvalidRequest, LadderError
from ladder.jobs.driver import drive
from ladder.jobs.tier_pools import PoolWorker, start_pools, stop_pools
from ladder.outcomes.io import jsonl_lines, read_rows
from ladder.protocols import Worker
from ladder.router.cascade import run_cascade
from ladder.router.memory import InMemoryRouteCache
from ladder.types import Message, Query, Sampling


Layout = Literal["whole", "pools"]
CASCADE_ACTOR_CPUS = 0.25  # the pools layout's cascade actors: policy and bookkeeping only


def row_id(row: dict) -> str:
    if "id" in row:
        return str(row["id"])
    canonical = json.dumps({k: row.get(k) for k in ("prompt", "messages")}, sort_keys=True)
    return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


def row_query(row: dict, default_max_tokens: int) -> Query:
    if "messages" in row:
        messages = tuple(Message(str(m["role"]), str(m["content"])) for m in row["messages"])
    elif "prompt" in row:
        messages = (Message("user", str(row["prompt"])),)
    else:
        raise InvalidRequest("row has neither 'prompt' nor 'messages'")
    max_tokens = row.get("max_tokens", default_max_tokens)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise InvalidRequest(f"max_tokens must be a positive integer, got {max_tokens!r}")
    sampling = Sampling(max_tokens=max_tokens, temperature=float(row.get("temperature", 0.0)), seed=row.get("seed"))
    return Query(messages, sampling)


def repair_tail(out: Path) -> None:
    """Cut a torn last line (a job killed while writing): its row is redone, never kept half."""
    if not out.is_file() or out.stat().st_size == 0:
        return
    with out.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        f.truncate(data.rfind(b"\n") + 1)


def done_ids(out: Path) -> set[str]:
    repair_tail(out)
    if not out.is_file():
        return set()
    ids = set()
    for line in jsonl_lines(out):
        try:
            ids.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a torn last line from an interrupted run is redone
    return ids


class CascadeActor:
    """A Ray Data actor: the whole ladder in one process. Every row of a batch runs its cascade
    concurrently, so each rung's engine sees all the rows that reached it at once (vLLM batches
    them; a one-at-a-time worker queues them), and a row that escalates goes on to the next rung
    as soon as its own answer is judged, not when the whole batch has finished its first rung."""

    def __init__(self, config_json: str, default_max_tokens: int, pools: dict[str, list] | None = None) -> None:
        config = LadderConfig.model_validate_json(config_json)
        # One event loop for the actor's life: vLLM's engine binds its output handler to the loop
        # of its first request.
        self.loop = asyncio.new_event_loop()
        self.workers: list[Worker] = (
            [PoolWorker(t.name, pools[t.name]) for t in config.tiers]  # the tiers' own actors
            if pools is not None
            else [build_worker(t, materialize(config, t)).load() for t in config.tiers]  # the whole ladder here
        )
        self.policy = build_policy(config.policy, config.tier_names, config.verified_tiers)
        self.cost = cost_function(config)
        self.cache = InMemoryRouteCache()
        self.default_max_tokens = default_max_tokens

    def __call__(self, batch: dict) -> dict:
        async def all_rows() -> list[dict]:
            return await asyncio.gather(*(self._one(json.loads(raw)) for raw in batch["row"]))

        return {"record": [json.dumps(r) for r in self.loop.run_until_complete(all_rows())]}

    async def _one(self, row: dict) -> dict:
        rid, t0 = row_id(row), time.perf_counter()
        try:
            result = await run_cascade(
                row_query(row, self.default_max_tokens), self.policy, self.workers, self.cache, self.cost
            )
        except LadderError as exc:
            return {"id": rid, "error": f"{type(exc).__name__}: {exc}"}
        gen = result.answer
        return {
            "id": rid,
            "text": gen.text,
            "tier": gen.tier,
            "rungs": [a.tier for a in result.attempts],
            "escalations": result.escalations,
            "prompt_tokens": gen.prompt_tokens,
            "completion_tokens": gen.completion_tokens,
            "cost_usd": result.cost_usd,
            "finish_reason": gen.finish_reason,
            "latency_s": time.perf_counter() - t0,
        }


@dataclass
class ScoreSummary:
    rows: int = 0
    skipped: int = 0
    errors: int = 0
    escalations: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0
    mix: Counter | None = None

    def add(self, record: dict) -> None:
        self.rows += 1
        if "error" in record:
            self.errors += 1
            return
        self.escalations += record["escalations"]
        self.completion_tokens += record["completion_tokens"]
        self.cost_usd += record["cost_usd"]
        self.mix = (self.mix or Counter()) + Counter({record["tier"]: 1})


def score(
    config: LadderConfig,
    input_path: Path,
    out: Path,
    actors: int = 1,
    batch_size: int = 8,
    default_max_tokens: int = 64,
    actor_cpus: float | None = None,
    layout: Layout = "pools",
) -> ScoreSummary:
    """Run the job on the already-initialised Ray; appends to ``out``; returns the summary.
    ``layout``: ``whole`` (each Ray Data actor holds every tier) or ``pools`` (light cascade
    actors calling per-tier actor pools: ``ladder.jobs.tier_pools``)."""
    rows = read_rows(input_path, "input file")
    finished = done_ids(out)
    todo = [r for r in rows if row_id(r) not in finished]
    summary = ScoreSummary(skipped=len(rows) - len(todo))
    t0 = time.perf_counter()
    pools = start_pools(config) if layout == "pools" and todo else None
    try:
        drive(
            config,
            [json.dumps(r) for r in todo],
            "row",
            CascadeActor,
            (config.model_dump_json(), default_max_tokens, pools),
            out,
            lambda record: summary.add(json.loads(record)),
            "scoring",
            "row",
            actors,
            batch_size,
            # a cascade actor holds no engine in the pools layout: a scheduling share, no GPU
            actor_cpus or (CASCADE_ACTOR_CPUS if pools is not None else None),
            num_gpus=0 if pools is not None else None,
        )
    finally:
        if pools is not None:
            stop_pools(pools)
    summary.wall_s = time.perf_counter() - t0
    return summary
