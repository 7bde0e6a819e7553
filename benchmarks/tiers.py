"""Per-tier load time, resident memory, prompt and generation throughput on this machine.

Each tier is measured in its own subprocess (so resident memory is that tier's alone), from the
converted weight cache (run `ladder prepare` first; conversion time is reported separately by it).
Prints a table and writes benchmarks/results/tiers.json.

    .venv/bin/python benchmarks/tiers.py [--tiers small,medium,large] [--runs 3] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PROMPT = (
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
    "muffins for her friends every day with four. She sells the remainder at the farmers' market "
    "daily for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' "
    "market? Explain step by step."
) * 3


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(tier_name: str, runs: int, new_tokens: int) -> dict:
    import torch

    from ladder.cluster.compose import build_worker, materialize
    from ladder.cluster.settings import load_config
    from ladder.types import Query

    cfg = load_config(Path(__file__).parents[1] / "configs" / "transformers.yaml")  # this measures transformers
    tier = cfg.tier(tier_name)
    path = materialize(cfg, tier)
    base = rss_mb()
    t0 = time.perf_counter()
    worker = build_worker(tier, path).load()
    load_s = time.perf_counter() - t0
    query = Query.of(PROMPT, max_tokens=new_tokens)
    worker.generate_sync(Query.of("warm up", max_tokens=4))
    prompt_tps, gen_tps = [], []
    for _ in range(runs):
        # Force exactly new_tokens by ignoring EOS: the decode rate is what is measured.
        gen = worker.generate_sync(query)
        prompt_tps.append(gen.prompt_tokens / gen.prefill_s)
        if gen.completion_tokens > 1:
            gen_tps.append(gen.completion_tokens / gen.decode_s)
    return {
        "tier": tier_name,
        "params_m": round(worker.num_parameters / 1e6, 1),
        "dtype": tier.dtype,
        "threads": torch.get_num_threads(),
        "load_s": round(load_s, 2),
        "rss_mb": round(rss_mb() - base, 0),
        "prompt_tokens": gen.prompt_tokens,
        "prompt_tok_s": round(statistics.median(prompt_tps), 1),
        "gen_tok_s": round(statistics.median(gen_tps), 2) if gen_tps else None,
        "runs": runs,
        "new_tokens": new_tokens,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiers", default="small,medium,large")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.runs, args.new_tokens)))
        return
    rows = []
    for name in args.tiers.split(","):
        out = subprocess.run(
            [sys.executable, __file__, "--one", name, "--runs", str(args.runs), "--new-tokens", str(args.new_tokens)],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"measured {name}", file=sys.stderr, flush=True)
    cols = ["tier", "params_m", "dtype", "threads", "load_s", "rss_mb", "prompt_tok_s", "gen_tok_s"]
    print(" | ".join(f"{c:>12}" for c in cols))
    for r in rows:
        print(" | ".join(f"{str(r[c]):>12}" for c in cols))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tiers.json").write_text(json.dumps({"machine": "2-core CPU", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
