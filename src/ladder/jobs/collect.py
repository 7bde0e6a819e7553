"""``ladder collect``: run every configured rung on a labelled dataset and write the outcomes file.

Each output line is one query in Ladder's outcomes format (docs/OUTCOMES.md) plus what the
router and IDK policies learn from: per rung the answer, its correctness against the gold
answer, output tokens, wall latency, per-token log-probabilities and depth statistics. Ray Data
feeds the items to a pool of ``CollectActor``s that each hold every rung, so one query's rungs
run back to back in one process (their latencies are comparable) and more actors use more
CPUs/GPUs. Lines are appended and flushed as batches finish: an interrupted run resumes by
skipping ids already in the file. A rung that fails on an item (context overflow, a tier error)
is recorded as a wrong answer with its error, never as a stopped job.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ladder.cluster.compose import build_worker, materialize
from ladder.cluster.settings import LadderConfig
from ladder.errors import LadderError
from ladder.jobs.batch import done_ids
from ladder.jobs.driver import drive
from ladder.offline.datasets import Dataset, LabelledItem, load_dataset
from ladder.types import Message, Query, Sampling
from ladder.verify import VERIFIERS


def _signals(gen, latency_s: float) -> dict[str, float]:  # noqa: ANN001 (Generation)
    lp = np.array(gen.logprobs) if gen.logprobs else np.zeros(1)
    out = {
        "first_logprob": float(lp[0]),
        "mean_logprob": float(lp.mean()),
        "min_logprob": float(lp.min()),
        "latency_s": latency_s,
        "prefill_s": gen.prefill_s,
        "decode_s": gen.decode_s,
        "prompt_tokens": float(gen.prompt_tokens),
    }
    if gen.depths:
        out["mean_depth"] = float(np.mean(gen.depths))
        out["max_depth"] = float(np.max(gen.depths))
    return {**out, **dict(gen.signals)}  # a tier's own verifier (verifier: in its config) signals too


class CollectActor:
    """A Ray Data actor: every rung in one process. A batch runs rung by rung; within a rung its
    items are submitted together, so an engine that batches (vLLM) decodes them side by side and
    a one-at-a-time worker (transformers) simply queues them."""

    def __init__(self, config_json: str, dataset_json: str) -> None:
        config = LadderConfig.model_validate_json(config_json)
        # One event loop for the actor's life: vLLM's engine binds its output handler to the loop
        # of its first request.
        self.loop = asyncio.new_event_loop()
        self.workers = [build_worker(t, materialize(config, t)).load() for t in config.tiers]
        spec = json.loads(dataset_json)
        self.dataset = load_dataset(spec["name"], Path(spec["data"]), limit=0)  # only its scorer and format
        self.max_tokens = spec["max_tokens"] or self.dataset.max_tokens

    def __call__(self, batch: dict) -> dict:
        items = [LabelledItem(**json.loads(raw)) for raw in batch["item"]]
        return {"record": [json.dumps(r, ensure_ascii=False) for r in self.loop.run_until_complete(self.rows(items))]}

    def query(self, item: LabelledItem) -> Query:
        if item.messages:  # one's own conversation, as it was sent
            messages = tuple(Message(m["role"], m["content"]) for m in item.messages)
            return Query(messages, Sampling(max_tokens=self.max_tokens, stop=self.dataset.stop))
        system = (Message("system", self.dataset.system),) if self.dataset.system else ()
        return Query(
            (*system, Message("user", item.prompt)), Sampling(max_tokens=self.max_tokens, stop=self.dataset.stop)
        )

    async def rows(self, items: list[LabelledItem]) -> list[dict]:
        rows = [
            {
                "id": it.id,
                "query": it.prompt,
                "group": it.group,
                "gold": it.gold,
                "dataset": self.dataset.name,
                "quality": {},
                "tokens": {},
                "response": {},
                "signals": {},
                "logprobs": {},
            }
            for it in items
        ]
        for worker in self.workers:
            t0 = time.perf_counter()
            results = await asyncio.gather(*(_timed(worker, self.query(it)) for it in items))
            wall = time.perf_counter() - t0
            # Compute per item = the rung's wall time for the batch, shared in proportion to each
            # request's latency: equal to the latency when requests ran one after another, and
            # the batch's real cost when an engine ran them concurrently.
            busy = sum(lat for _, lat in results) or 1.0
            for row, it, (gen, latency) in zip(rows, items, results):
                tier = worker.tier
                if isinstance(gen, LadderError):  # this rung cannot answer this item: wrong, noted
                    row["quality"][tier], row["tokens"][tier], row["response"][tier] = 0.0, 0.0, ""
                    row.setdefault("errors", {})[tier] = f"{type(gen).__name__}: {gen}"
                    continue
                row["quality"][tier] = self.dataset.score(gen.text, it.gold)
                row["tokens"][tier] = float(gen.completion_tokens)
                row["response"][tier] = gen.text
                row["signals"][tier] = {
                    **_signals(gen, latency),
                    "compute_s": wall * latency / busy,
                    "concurrent": float(len(items)),
                }
                if self.dataset.verifier and not gen.signals:  # what a rung's online verifier would
                    # have seen; a tier that runs that verifier already reported it (not run twice)
                    row["signals"][tier].update(VERIFIERS[self.dataset.verifier](it.prompt, gen.text))
                row["logprobs"][tier] = [round(x, 5) for x in gen.logprobs]
        return rows


async def _timed(worker, query: Query):  # noqa: ANN001, ANN202 (Worker) -> (Generation | LadderError, s)
    t0 = time.perf_counter()
    try:
        gen = await worker.generate(query)
    except LadderError as exc:
        return exc, 0.0
    return gen, time.perf_counter() - t0


@dataclass
class CollectSummary:
    rows: int = 0
    skipped: int = 0
    wall_s: float = 0.0
    correct: dict[str, float] = field(default_factory=dict)
    latency_s: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    unlabelled: int = 0  # rows of one's own prompts left for ``ladder judge``

    def add(self, record: dict) -> None:
        self.rows += 1
        self.unlabelled += any(q is None for q in record["quality"].values())
        for rung, q in record["quality"].items():
            self.correct[rung] = self.correct.get(rung, 0.0) + (q or 0.0)
            self.latency_s[rung] = self.latency_s.get(rung, 0.0) + record["signals"].get(rung, {}).get("latency_s", 0.0)
        for rung in record.get("errors", {}):
            self.errors[rung] = self.errors.get(rung, 0) + 1


def collect(
    config: LadderConfig,
    dataset: Dataset,
    data_root: Path,
    out: Path,
    actors: int = 1,
    batch_size: int = 16,
    max_tokens: int | None = None,
) -> CollectSummary:
    """Run on the already-initialised Ray; appends to ``out``; returns the summary of this run."""
    finished = done_ids(out)
    todo = [it for it in dataset.items if it.id not in finished]
    summary = CollectSummary(skipped=len(dataset.items) - len(todo))
    t0 = time.perf_counter()
    spec = json.dumps({"name": dataset.name, "data": str(data_root), "max_tokens": max_tokens})
    drive(
        config,
        [json.dumps(it.__dict__) for it in todo],
        "item",
        CollectActor,
        (config.model_dump_json(), spec),
        out,
        lambda record: summary.add(json.loads(record)),
        f"collect {dataset.name}",
        "query",
        actors,
        batch_size,
    )
    summary.wall_s = time.perf_counter() - t0
    return summary
