"""Two vLLM engines on one machine's cores: how they share them (issue 28, item 2).

    .venv/bin/python benchmarks/engine_sharing.py [--modes shared,passive,split,turns] [--duration 25]

The medium and large tiers' engines (vLLM's CPU engine, the default config's settings), started in
one process as a tier replica starts them, under each way of sharing the cores:
- ``shared``: both bound to every core, 2 OpenMP threads each (what ``make serve`` did);
- ``passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep, not spin);
- ``split``: medium on core 0, large on core 1, one thread each;
- ``turns``: both on every core, taking turns per engine step (``ladder.workers.engine_share``);
- ``lend``: medium owns core 0 and large the last one; each borrows the other's while it idles.
Per mode, closed loops of 64-token greedy requests for ``--duration`` s each: medium alone (16
clients), large alone (16), and both at once (12 on medium + 4 on large, the shape of a mix that
mostly stops at medium; then 4 + 12, one that mostly needs large).
Tokens/s per engine from the tokens each finished request produced. Writes
benchmarks/results/engine_sharing.json (``modes`` = {mode: {phase: {medium_tps, large_tps}}},
``work_rate``: each mixed phase's tokens as a share of what the two engines alone on the whole
machine would do in the time — 1.0 means the engines lost nothing to each other or to a split).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from harness.engine_loop import closed_loop
from harness.meta import stamp

from ladder.cluster.compose import build_worker, materialize
from ladder.cluster.settings import LadderConfig
from ladder.types import Query
from ladder.workers.options import CoreSharing

RESULTS = Path(__file__).parent / "results"
PHASES = {"medium": (16, 0), "large": (0, 16), "mixed": (12, 4), "mixed_large": (4, 12)}


def mode_options(mode: str, tier: str, cores: list[int]) -> tuple[dict, dict[str, str]]:
    """(the tier's vllm options to change, extra environment) of a sharing mode."""
    own = [0] if tier == "medium" else [len(cores) - 1]  # (positions in the usable cores)
    if mode in ("split", "lend"):  # split: sessions 11–16's default layout
        return {"cores": own, "sharing": CoreSharing.LEND if mode == "lend" else CoreSharing.FREE}, {}
    if mode == "turns":
        return {"cores": None, "sharing": CoreSharing.TURNS}, {}
    every = {"cores": None, "sharing": CoreSharing.FREE}
    return every, ({"OMP_WAIT_POLICY": "PASSIVE"} if mode == "passive" else {})


async def measure(workers: dict, duration: float) -> dict:
    """Tokens/s per engine: every token it produced in the window (the worker's own counter), so a
    request still running at the end counts for what it did."""
    out = {}
    for phase, (cm, cl) in PHASES.items():
        before = {t: w.generated_tokens for t, w in workers.items()}
        jobs = [closed_loop(workers["medium"], cm, duration)] if cm else []
        jobs += [closed_loop(workers["large"], cl, duration)] if cl else []
        await asyncio.gather(*jobs)
        out[phase] = {f"{t}_tps": round((w.generated_tokens - before[t]) / duration, 2) for t, w in workers.items()}
        await asyncio.sleep(2)  # cancelled requests leave the engines
        print(f"  {phase:7s} medium {out[phase]['medium_tps']:7.1f} tok/s   large {out[phase]['large_tps']:6.1f} tok/s")
    return out


def run_mode(mode: str, duration: float) -> dict:
    config = LadderConfig()
    cores = sorted(os.sched_getaffinity(0))
    workers = {}
    for name in ("medium", "large"):
        tier = config.tier(name)
        change, env = mode_options(mode, name, cores)
        tier = tier.model_copy(update={"vllm": tier.vllm.model_copy(update=change)})
        os.environ.update(env)  # read by the engine process this load starts
        workers[name] = build_worker(tier, materialize(config, tier)).load()

    async def go() -> dict:
        warm = Query.of("Say hello.", max_tokens=8, temperature=0.0)
        await asyncio.gather(*(w.generate(warm) for w in workers.values()))
        return await measure(workers, duration)

    try:
        return asyncio.run(go())
    finally:
        for w in workers.values():
            w.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="split,turns,lend")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # run one mode in this process, print its JSON
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_mode(args.one, args.duration)), flush=True)
        return
    modes = {}
    for mode in args.modes.split(","):
        print(f"mode {mode}: starting medium + large engines …", flush=True)
        # one process per mode: engines and their OpenMP settings start fresh
        p = subprocess.run(
            [sys.executable, __file__, "--one", mode, "--duration", str(args.duration)],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        )
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if not lines:
            print(p.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"mode {mode} failed")
        print("\n".join(ln for ln in p.stdout.splitlines() if not ln.startswith("RESULT ")))
        modes[mode] = json.loads(lines[0][7:])
    # each mixed phase's work as a share of what the engines do alone on the whole machine: the
    # best alone rate of either engine over the modes run, so a mode that halves an engine's cores
    # shows it here
    best = {t: max(r[t][f"{t}_tps"] for r in modes.values()) for t in ("medium", "large")}
    work_rate = {
        m: {
            ph: round(sum(r[ph][f"{t}_tps"] / max(best[t], 1e-9) for t in ("medium", "large")), 3)
            for ph in ("mixed", "mixed_large")
        }
        for m, r in modes.items()
    }
    print(
        "\n| mode | medium alone tok/s | large alone tok/s | 12+4: medium + large tok/s | 4+12 | work rate 12+4 / 4+12 |"
    )
    print("|---|---|---|---|---|---|")
    for m, r in modes.items():
        print(
            f"| {m} | {r['medium']['medium_tps']} | {r['large']['large_tps']} | "
            f"{r['mixed']['medium_tps']} + {r['mixed']['large_tps']} | "
            f"{r['mixed_large']['medium_tps']} + {r['mixed_large']['large_tps']} | "
            f"{work_rate[m]['mixed']} / {work_rate[m]['mixed_large']} |"
        )
    RESULTS.mkdir(exist_ok=True)
    out = {**stamp(sys.argv), "duration_s": args.duration, "phases": PHASES, "modes": modes, "work_rate": work_rate}
    (RESULTS / "engine_sharing.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
