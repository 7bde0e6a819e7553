"""What a speculative verification costs on this machine: a full-depth pass (every layer and the
LM head, Ladder's layer-by-layer runner, float32) over n = 1..9 positions, relative to one
position, under each rule for the few-row matrix products (issue 34):

- ``plain``: torch's ``F.linear`` (what ``model(...)`` does);
- ``transposed``: ``W @ xᵀ`` (issue 22's rule, chosen on an AVX2 CPU where ``F.linear`` over
  2–7 rows cost 2–6× one row);
- ``packed``: oneDNN's linear over a weight packed once at tuning (session 24);
- ``tuned``: per row count, whichever of the three gave the fastest full pass when the model was
  tuned (``LayerwiseModel.tune``, what Ladder runs now); ``tuned_kernels`` says which.

Side by side in one process, the rules interleaved per repetition (this machine is noisy). A
speculative round verifying k drafts pays cost[k + 1]; ``adaptive_depth.plan_tree`` reads
the tuned row to cut a chain where it stops paying.

    .venv/bin/python benchmarks/verify_cost.py [--tiers small,medium] [--reps 5]

Writes benchmarks/results/verify_cost.json: per tier, ``one_position_ms``, ``relative`` (rule ->
[cost of 1..9 positions]) and ``tuned_kernels`` (positions -> kernel), with the commit and command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from harness.meta import stamp

from ladder.cluster.compose import materialize
from ladder.cluster.settings import LadderConfig
from ladder.workers.layerwise import KERNEL_RULES, LayerwiseModel, set_kernel_rule
from ladder.workers.transformer import DeviceConfig, TransformersWorker

RESULTS = Path(__file__).parent / "results"
MAX_ROWS = 9


def measure(tier: str, reps: int) -> dict:
    cfg = LadderConfig()
    worker = TransformersWorker(tier, materialize(cfg, cfg.tier(tier)), DeviceConfig(dtype="float32")).load()
    lw = LayerwiseModel(worker.model)
    best = {rule: [float("inf")] * MAX_ROWS for rule in KERNEL_RULES}
    for _ in range(reps):  # the rules interleaved: each repetition times every rule once
        for rule in KERNEL_RULES:
            set_kernel_rule(rule)
            lw.tune(MAX_ROWS, reps=1)
            best[rule] = [min(a, b) for a, b in zip(best[rule], lw.pass_times(MAX_ROWS, reps=1))]
    set_kernel_rule("tuned")
    lw.tune(MAX_ROWS)  # the choice Ladder would run with, reported beside the costs
    kernels = {str(n): kernel for n, kernel in sorted(lw.kernels.items())}
    one = min(b[0] for b in best.values())  # the fastest one-position pass of any rule
    return {
        "one_position_ms": round(one * 1e3, 2),
        "tuned_kernels": kernels,
        "relative": {rule: [round(t / one, 3) for t in b] for rule, b in best.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiers", default="small,medium")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "verify_cost.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tiers = {t: measure(t, args.reps) for t in args.tiers.split(",")}
    Path(args.out).write_text(json.dumps({**stamp(sys.argv), "args": vars(args), "tiers": tiers}, indent=2) + "\n")
    print(f"{'tier':<8}{'rule':<12}{'1 pos ms':>9}  relative cost of 1..{MAX_ROWS} positions")
    for tier, r in tiers.items():
        for rule, costs in r["relative"].items():
            print(f"{tier:<8}{rule:<12}{r['one_position_ms']:>9.1f}  " + " ".join(f"{c:4.2f}" for c in costs))
        print(f"{tier:<8}tuned kernels: {r['tuned_kernels']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
