"""What a decode step costs each tier at each batch size, and what that allows a ladder on one
machine (issue 28: why routing serves fewer answers/s than always-large here).

    .venv/bin/python benchmarks/step_cost.py [--duration 15] [--batches 1,2,4,8,16] [--max-tokens 96]

The medium and large tiers' engines (vLLM's CPU engine, the default config's settings: every core,
taking turns per step), started in one process as a tier replica starts them. Closed loops of
greedy requests for ``--duration`` s:
- each engine alone at each batch size b (b clients): tokens/s, and the time of one engine step
  ``T(b) = b / tokens_per_s`` (every running sequence gains one token per step; the prefill of
  each new request is folded in, as it is when serving);
- both engines at once at n_M + n_L = 16 clients (4 + 12, 8 + 8, 12 + 4), measured, and the same
  predicted from the alone rows by taking turns: a round is one medium step and one large step,
  ``tokens/s = (n_M + n_L) / (T_M(n_M) + T_L(n_L))``.

The served question this answers: 16 closed-loop clients, n_M of them waiting on medium at any
moment; routed tokens/s over always-large's is ``T_L(16) / (T_M(n_M) + T_L(16 - n_M))`` (while
large has any client). If decoding is bandwidth-bound (T barely grows with b), every split where
both engines stay busy runs at about ``T_L / (T_M + T_L)`` of always-large, whatever the share
at medium: splitting a batch between two engines on the same cores costs a whole medium step
per round and saves nothing on large's. Writes benchmarks/results/step_cost.json (``alone``:
{tier: {b: {tokens_per_s, step_s}}}, ``pairs``: measured vs predicted, ``ceiling``: the routed /
always-large tokens/s ratio for n_M = 0..16) and step_cost.png (that ratio against n_M).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from harness.engine_loop import closed_loop
from harness.meta import stamp

from ladder.cluster.compose import build_worker, materialize
from ladder.cluster.settings import LadderConfig

RESULTS = Path(__file__).parent / "results"
TIERS = ("medium", "large")
PAIRS = ((4, 12), (8, 8), (12, 4))


async def rate(workers: dict, clients: dict[str, int], duration: float, max_tokens: int) -> dict[str, float]:
    """Tokens/s per engine over one window of closed loops (the worker's own token counter, so a
    request still running at the end counts for what it did)."""
    before = {t: w.generated_tokens for t, w in workers.items()}
    await asyncio.gather(
        *(closed_loop(workers[t], n, duration, max_tokens) for t, n in clients.items() if n),
    )
    out = {t: (workers[t].generated_tokens - before[t]) / duration for t in clients}
    await asyncio.sleep(2)  # cancelled requests leave the engines before the next window
    return out


def step(alone: dict, tier: str, b: int) -> float:
    """One engine step's seconds at b sequences (0 for an idle engine: it takes no turn), from the
    alone rows; an unmeasured b is interpolated linearly between measured ones."""
    if b == 0:
        return 0.0
    pts = sorted((int(k), v["step_s"]) for k, v in alone[tier].items())
    for (b0, t0), (b1, t1) in zip(pts, pts[1:]):
        if b0 <= b <= b1:
            return t0 + (t1 - t0) * (b - b0) / (b1 - b0)
    return pts[-1][1] if b > pts[-1][0] else pts[0][1]


def turns_tps(alone: dict, medium: int, large: int) -> float:
    """Both engines' tokens/s together when they take turns: a round is one step of each busy one."""
    return (medium + large) / (step(alone, "medium", medium) + step(alone, "large", large))


def ceiling(alone: dict, clients: int) -> list[dict]:
    """Routed / always-large tokens/s for n_M = 0..clients clients at medium."""
    full = turns_tps(alone, 0, clients)
    return [
        {"medium_clients": m, "ratio": round(turns_tps(alone, m, clients - m) / full, 3)} for m in range(clients + 1)
    ]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([r["medium_clients"] for r in rows], [r["ratio"] for r in rows], marker="o")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axhline(1.3, color="tab:red", lw=0.8, ls="--", label="issue 28's target (1.3×)")
    ax.set_xlabel("clients waiting on medium (of 16)")
    ax.set_ylabel("routed / always-large tokens/s")
    ax.set_title("Two engines taking turns on this machine's cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--max-tokens", type=int, default=96)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    clients = max(batches)
    config = LadderConfig()
    workers = {t: build_worker(config.tier(t), materialize(config, config.tier(t))).load() for t in TIERS}

    async def go() -> tuple[dict, list[dict]]:
        await rate(workers, {t: 1 for t in TIERS}, 3.0, 8)  # warm both engines
        alone: dict = {t: {} for t in TIERS}
        for t in TIERS:
            for b in batches:
                tps = (await rate(workers, {t: b}, args.duration, args.max_tokens))[t]
                alone[t][str(b)] = {"tokens_per_s": round(tps, 2), "step_s": round(b / max(tps, 1e-9), 4)}
                print(
                    f"  {t:6s} b={b:2d}  {tps:7.1f} tok/s  step {alone[t][str(b)]['step_s'] * 1e3:6.1f} ms", flush=True
                )
        pairs = []
        for m, n in PAIRS:
            got = await rate(workers, {"medium": m, "large": n}, args.duration, args.max_tokens)
            pairs.append(
                {
                    "medium_clients": m,
                    "large_clients": n,
                    "medium_tps": round(got["medium"], 2),
                    "large_tps": round(got["large"], 2),
                    "total_tps": round(got["medium"] + got["large"], 2),
                    "predicted_total_tps": round(turns_tps(alone, m, n), 2),
                }
            )
            print(
                f"  pair {m:2d}+{n:2d}  {pairs[-1]['total_tps']:7.1f} tok/s (predicted {pairs[-1]['predicted_total_tps']})",
                flush=True,
            )
        return alone, pairs

    try:
        alone, pairs = asyncio.run(go())
    finally:
        for w in workers.values():
            w.close()
    rows = ceiling(alone, clients)
    print("\n| tier | " + " | ".join(f"b={b} tok/s (step ms)" for b in batches) + " |")
    print("|---|" + "---|" * len(batches))
    for t in TIERS:
        cells = [f"{alone[t][str(b)]['tokens_per_s']} ({alone[t][str(b)]['step_s'] * 1e3:.0f})" for b in batches]
        print(f"| {t} | " + " | ".join(cells) + " |")
    print("\n| medium + large clients | measured tok/s | predicted (turns, from the alone rows) |")
    print("|---|---|---|")
    for p in pairs:
        print(f"| {p['medium_clients']} + {p['large_clients']} | {p['total_tps']} | {p['predicted_total_tps']} |")
    print(f"\nrouted / always-large tokens/s by clients at medium (of {clients}):")
    print("  " + "  ".join(f"{r['medium_clients']}:{r['ratio']}" for r in rows))
    RESULTS.mkdir(exist_ok=True)
    out = {
        **stamp(sys.argv),
        "duration_s": args.duration,
        "max_tokens": args.max_tokens,
        "alone": alone,
        "pairs": pairs,
        "ceiling": rows,
    }
    (RESULTS / "step_cost.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(rows, RESULTS / "step_cost.png")


if __name__ == "__main__":
    main()
