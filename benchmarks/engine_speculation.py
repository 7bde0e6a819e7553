"""Speculative decoding inside a GPU tier's vLLM engine (issue 34): plain decoding against
`ngram` (prompt lookup) and `eagle` (the tier's draft head as `ladder depth export` writes it),
side by side in one run. **GPU only**: vLLM's CPU engine cannot run speculative decoding, so on
a machine without CUDA this exits 2 with that line. Not run yet: no GPU with vLLM's CUDA build
has been at hand (docs/STATUS.md says so).

    python benchmarks/engine_speculation.py [--tier small] [--methods plain,ngram,eagle]
        [--clients 1,16] [--duration 30] [--prompts-per-domain 8] [--dtype float32]

Per method: tokens/s of closed loops of greedy requests at each client count (a single stream
and 16 clients); the mean acceptance length (1 + accepted drafts per verification, from the
engine's own spec-decode counters); greedy agreement — the share of held-out prompts (the first
``--prompts-per-domain`` of GSM8K test, HumanEval and benchmarks/prompts/chat.jsonl in the
datasets' hash order: none is in a draft head's corpus) whose answer equals plain decoding's.
Writes benchmarks/results/engine_speculation.json (``methods``: {method: {tokens_per_s: {clients:
…}, acceptance_length, greedy_agreement}}) with the commit and command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from harness.engine_loop import PROMPTS as LOOP_PROMPTS
from harness.meta import stamp

RESULTS = Path(__file__).parent / "results"
CHAT = Path(__file__).parent / "prompts" / "chat.jsonl"


def held_out_prompts(data: Path, n: int) -> list[str]:
    from ladder.offline.datasets import load_dataset

    names = ("gsm8k", "humaneval", str(CHAT))
    return [it.prompt for name in names for it in load_dataset(name, data, limit=n).items]


def speculation(method: str, tier: str, folder: Path, scratch: Path):  # noqa: ANN201
    from ladder.cluster.compose import weights_id
    from ladder.cluster.settings import LadderConfig
    from ladder.workers.draft_export import export
    from ladder.workers.draft_head import DraftHead, bundled_draft_head
    from ladder.workers.options import EngineSpeculation

    if method == "plain":
        return None
    if method == "ngram":
        return EngineSpeculation(num_speculative_tokens=4)
    wid = weights_id(LadderConfig().tier(tier))
    head = export(DraftHead.load(bundled_draft_head(tier), wid), folder, scratch / "eagle", tier, wid)
    return EngineSpeculation(method="eagle", model=str(head), num_speculative_tokens=3)


def spec_counters() -> tuple[float, float]:
    """(drafts, accepted tokens) so far, from vLLM's own spec-decode counters."""
    from vllm.v1.metrics.reader import Counter, get_metrics_snapshot

    got = {m.name: m.value for m in get_metrics_snapshot() if isinstance(m, Counter)}
    return got.get("vllm:spec_decode_num_drafts", 0.0), got.get("vllm:spec_decode_num_accepted_tokens", 0.0)


async def tokens_per_s(worker, clients: int, duration: float, max_tokens: int) -> float:  # noqa: ANN001
    from ladder.types import Query

    done = 0

    async def client(c: int) -> None:
        nonlocal done
        i = c
        while True:
            q = Query.of(LOOP_PROMPTS[i % len(LOOP_PROMPTS)] + f" (#{i})", max_tokens=max_tokens, temperature=0.0)
            done += (await worker.generate(q)).completion_tokens
            i += clients

    tasks = [asyncio.ensure_future(client(c)) for c in range(clients)]
    start = time.perf_counter()
    await asyncio.sleep(duration)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return done / (time.perf_counter() - start)


def measure(method: str, args: argparse.Namespace, folder: Path, scratch: Path, prompts: list[str]) -> dict:
    from ladder.types import Query
    from ladder.workers.vllm_worker import VLLMOptions, VLLMWorker

    options = VLLMOptions(
        max_model_len=2048,
        max_num_seqs=16,
        gpu_memory_utilization=args.gpu_memory,
        speculative=speculation(method, args.tier, folder, scratch),
    )
    worker = VLLMWorker(args.tier, folder, "cuda", options, dtype=args.dtype).load()
    try:

        async def answers() -> list[str]:
            outs = await asyncio.gather(
                *(worker.generate(Query.of(p, max_tokens=args.max_tokens, temperature=0.0)) for p in prompts)
            )
            return [o.text for o in outs]

        texts = asyncio.run(answers())
        drafts0, accepted0 = spec_counters() if method != "plain" else (0.0, 0.0)
        rates = {c: asyncio.run(tokens_per_s(worker, c, args.duration, args.max_tokens)) for c in args.clients}
        drafts, accepted = spec_counters() if method != "plain" else (0.0, 0.0)
    finally:
        worker.close()
    length = 1 + (accepted - accepted0) / (drafts - drafts0) if drafts > drafts0 else None
    return {
        "tokens_per_s": {str(c): round(r, 1) for c, r in rates.items()},
        "acceptance_length": length,
        "texts": texts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tier", default="small")
    ap.add_argument("--methods", default="plain,ngram,eagle")
    ap.add_argument("--clients", default="1,16")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompts-per-domain", type=int, default=8)
    ap.add_argument("--dtype", default="float32", help="float32: greedy answers comparable token for token")
    ap.add_argument("--gpu-memory", type=float, default=0.3)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default=str(RESULTS / "engine_speculation.json"))
    args = ap.parse_args()
    methods = args.methods.split(",")
    if unknown := set(methods) - {"plain", "ngram", "eagle"}:
        ap.exit(2, f"--methods: unknown {sorted(unknown)}; choose from plain, ngram, eagle\n")
    if "plain" not in methods:
        methods.insert(0, "plain")  # agreement is measured against it
    args.clients = [int(c) for c in args.clients.split(",")]
    import torch

    if not torch.cuda.is_available():
        ap.exit(2, "engine speculation needs a CUDA GPU with vLLM's CUDA build (vLLM's CPU engine cannot run it)\n")
    from ladder.cluster.compose import materialize
    from ladder.cluster.settings import LadderConfig

    cfg = LadderConfig()
    folder = materialize(cfg, cfg.tier(args.tier))
    prompts = held_out_prompts(Path(args.data), args.prompts_per_domain)
    with tempfile.TemporaryDirectory() as scratch:
        got = {m: measure(m, args, folder, Path(scratch), prompts) for m in methods}
    plain = got["plain"].pop("texts")
    for m, r in got.items():
        if m != "plain":
            texts = r.pop("texts")
            r["greedy_agreement"] = round(sum(a == b for a, b in zip(plain, texts)) / len(plain), 3)
    Path(args.out).write_text(json.dumps({**stamp(sys.argv), "args": vars(args), "methods": got}, indent=2) + "\n")
    print(
        f"{'method':<8}" + "".join(f"{f'{c} cl tok/s':>14}" for c in args.clients) + f"{'accept len':>12}{'agree':>8}"
    )
    for m, r in got.items():
        rates = "".join(f"{r['tokens_per_s'][str(c)]:>14.1f}" for c in args.clients)
        length = r["acceptance_length"]
        print(f"{m:<8}{rates}{'' if length is None else f'{length:.2f}':>12}{r.get('greedy_agreement', 1.0):>8.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
