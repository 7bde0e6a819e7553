"""Batch scoring at engine speed, side by side in one run (issue 23).

    .venv/bin/python benchmarks/batch.py --data ../shared/data [--rows 1000] [--cascade-rows 1000]

The same prompts (the first ``--rows`` GSM8K training questions, chat template of the tier,
64-token greedy answers) through:
- ``ladder score`` with the small tier alone (always-small: the fixed policy, one rung);
- vLLM's offline ``LLM.generate`` on the same converted weights with the same engine settings
  (``max_num_seqs``, ``max_model_len``, KV cache, threads): the engine's ceiling;
- ``ladder score`` on the default three-tier ladder with its default learned policy (router + IDK
  with the code verifier): rung mix, escalations, cost — in the ``whole`` layout (each Ray Data
  actor holds every tier: ``ladder-score-cascade``) and in the ``pools`` layout (each tier in an
  actor of its own, called by light cascade actors: ``ladder-score-cascade-pools``; issue 31).
Each system runs as its own process, timed end to end (start-up of Ray, engines and the job
included, as a user waits for it). Writes benchmarks/results/batch.json:
``{rows, runs: [{system, tokens_per_s, rows_per_s, wall_s, ...}], ratio_vs_vllm_offline}``
(``--out`` another file, e.g. for the layouts alone: ``--skip ladder-score-small,vllm-offline``),
stamped with commit, policy version and command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml
from harness.meta import write_results

RESULTS = Path(__file__).parent / "results"
MAX_TOKENS = 64

OFFLINE = (
    r"""
import json, os, sys, time
t0 = time.perf_counter()
folder, prompts_path, seqs, max_len = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
kv_bytes, dtype = int(float(sys.argv[5]) * 2**30), sys.argv[6]
cores = sorted(os.sched_getaffinity(0))
os.environ.update(VLLM_NO_USAGE_STATS="1",
                  VLLM_CPU_OMP_THREADS_BIND=",".join(map(str, cores)), OMP_NUM_THREADS=str(len(cores)))
if __name__ == "__main__":
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    tok = AutoTokenizer.from_pretrained(folder)
    prompts = [json.loads(line)["prompt"] for line in open(prompts_path)]
    ids = [tok(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True),
               add_special_tokens=False)["input_ids"] for p in prompts]
    llm = LLM(model=folder, dtype=dtype, max_model_len=max_len, max_num_seqs=seqs, seed=0, kv_cache_memory_bytes=kv_bytes)
    outs = llm.generate([{"prompt_token_ids": i} for i in ids], SamplingParams(max_tokens=%d, temperature=0.0))
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    print("RESULT " + json.dumps({"tokens": tokens, "rows": len(outs), "wall_s": time.perf_counter() - t0}))
"""
    % MAX_TOKENS
)


def gsm8k_prompts(data: Path, n: int) -> list[dict]:
    rows = []
    with (data / "routellm" / "gsm8k" / "train.jsonl").open() as f:
        for i, line in enumerate(f):
            if i >= n:
                break
            rows.append({"id": f"gsm8k-train-{i}", "prompt": json.loads(line)["question"], "max_tokens": MAX_TOKENS})
    return rows


def run_score(name: str, config: Path, prompts: Path, tmp: Path, tiers: str | None, layout: str = "whole") -> dict:
    out = tmp / f"{name}.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "ladder.cli",
        "score",
        str(prompts),
        "-o",
        str(out),
        "--config",
        str(config),
        "-n",
        str(MAX_TOKENS),
        *(["--tiers", tiers] if tiers else []),
        "--layout",
        layout,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ok = [r for r in records if "error" not in r]
    tokens = sum(r["completion_tokens"] for r in ok)
    return {
        "system": name,
        "layout": layout,
        "rows": len(records),
        "errors": len(records) - len(ok),
        "completion_tokens": tokens,
        "tokens_per_s": tokens / wall,
        "rows_per_s": len(records) / wall,
        "wall_s": wall,
        "mix": dict(Counter(r["tier"] for r in ok)),
        "escalations": sum(r["escalations"] for r in ok),
        "cost_usd": sum(r["cost_usd"] for r in ok),
    }


def run_offline(prompts: Path, tmp: Path) -> dict:
    from ladder.cluster.compose import materialize
    from ladder.cluster.settings import LadderConfig

    cfg = LadderConfig()
    small = cfg.tier("small")
    folder, e = materialize(cfg, small), small.engine
    script = tmp / "offline.py"
    script.write_text(OFFLINE)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(folder),
            str(prompts),
            str(e.max_num_seqs),
            str(e.max_model_len),
            str(e.kv_cache_gib),
            small.dtype,
        ],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"vllm-offline failed:\n{proc.stderr[-3000:]}")
    r = json.loads(line[0][7:])
    return {
        "system": "vllm-offline",
        "rows": r["rows"],
        "errors": 0,
        "completion_tokens": r["tokens"],
        "tokens_per_s": r["tokens"] / wall,
        "rows_per_s": r["rows"] / wall,
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--cascade-rows", type=int, default=None, help="rows for the cascade run (default --rows)")
    ap.add_argument("--skip", default="", help="comma-separated systems to skip")
    ap.add_argument("--out", type=Path, default=RESULTS / "batch.json")
    args = ap.parse_args()
    from ladder.cluster.settings import LadderConfig

    tmp = Path(tempfile.mkdtemp(prefix="ladder-batch-"))
    rows = gsm8k_prompts(args.data, args.rows)
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    small_cfg = tmp / "small.yaml"
    data = LadderConfig().model_dump(mode="json")
    data["cache"]["enabled"] = False
    small_cfg.write_text(yaml.safe_dump(data))
    data["policy"] = {"kind": "fixed"}  # one tier: nothing to route, no verifier to read
    for t in data["tiers"]:
        t["verifier"] = None
    small_cfg.write_text(yaml.safe_dump(data))
    data = LadderConfig().model_dump(mode="json")  # the default ladder and its learned policy
    data["cache"]["enabled"] = False
    cascade_cfg = tmp / "cascade.yaml"
    cascade_cfg.write_text(yaml.safe_dump(data))
    cascade_prompts = tmp / "cascade-prompts.jsonl"
    cascade_prompts.write_text("".join(json.dumps(r) + "\n" for r in rows[: args.cascade_rows or args.rows]))
    skip = set(args.skip.split(","))
    runs = []
    for name, job in (
        ("ladder-score-small", lambda: run_score("ladder-score-small", small_cfg, prompts, tmp, "small")),
        ("vllm-offline", lambda: run_offline(prompts, tmp)),
        ("ladder-score-cascade", lambda: run_score("ladder-score-cascade", cascade_cfg, cascade_prompts, tmp, None)),
        (
            "ladder-score-cascade-pools",
            lambda: run_score("ladder-score-cascade-pools", cascade_cfg, cascade_prompts, tmp, None, "pools"),
        ),
    ):
        if name in skip:
            continue
        print(f"running {name} ...", flush=True)
        runs.append(job())
        print(json.dumps(runs[-1]), flush=True)
    by = {r["system"]: r for r in runs}
    ratio = (
        by["ladder-score-small"]["tokens_per_s"] / by["vllm-offline"]["tokens_per_s"]
        if {"ladder-score-small", "vllm-offline"} <= set(by)
        else None
    )
    pools = by.get("ladder-score-cascade-pools")
    out = {
        "rows": args.rows,
        "max_tokens": MAX_TOKENS,
        "cpus": len(os.sched_getaffinity(0)),
        "cascade_policy": "the bundled learned default",
        "runs": runs,
        "ratio_vs_vllm_offline": ratio,
        "pools_vs_whole_tokens_per_s": (
            pools["tokens_per_s"] / by["ladder-score-cascade"]["tokens_per_s"]
            if pools and "ladder-score-cascade" in by
            else None
        ),
    }
    write_results(args.out, sys.argv, cascade_cfg, **out)
    print(f"\n{'system':<24}{'rows':>6}{'tok/s':>9}{'rows/s':>8}{'wall s':>8}  mix / cost")
    for r in runs:
        extra = f"{r.get('mix', '')} esc={r.get('escalations', '-')} ${r.get('cost_usd', 0):.5f}" if "mix" in r else ""
        print(
            f"{r['system']:<24}{r['rows']:>6}{r['tokens_per_s']:>9.1f}{r['rows_per_s']:>8.2f}{r['wall_s']:>8.0f}  {extra}"
        )
    print(f"ladder score (always-small) / vLLM offline tokens/s: {ratio}")
    print(f"cascade, pools / whole layout tokens/s: {out['pools_vs_whole_tokens_per_s']}")


if __name__ == "__main__":
    main()
