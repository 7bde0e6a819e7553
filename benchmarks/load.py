"""Load and soak against the served app (small tier, loopback only, every loop bounded).

    .venv/bin/python benchmarks/load.py [--duration 30] [--soak-s 600] [--soak-rate auto]

1. Closed loop at concurrency 1, 4, 16, 64 (8-token greedy answers): throughput, p50/p95/p99
   latency, error rate, and how beyond capacity is handled (503 + Retry-After from the tier's
   bounded queue, never a silent timeout).
2. Soak: an open loop at a sustainable rate (default: half the best closed-loop throughput) for
   ``--soak-s`` seconds; errors, latency, and the RSS of every Ray/Serve process at start and end
   (sampled every 15 s; plotted). ``--soak-s 0`` re-runs the sweep and keeps the last soak.
Closed-loop clients honour Retry-After (as OpenAI's clients do); a client that retried at once
would turn shedding into a hot loop of rejections.
Writes benchmarks/results/load.json and load.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import psutil
from harness.loadgen import closed_loop, open_loop, summarize

from ladder.cluster.redis_server import free_port
from ladder.cluster.runtime import Runtime
from ladder.cluster.settings import LadderConfig
from ladder.serving.launch import deploy, restrict

RESULTS = Path(__file__).parent / "results"
KEY = "sk-ladder-load"
ROLES = {
    "tier-small": "tier replica",
    "ladder-router": "router ingress",
    "ProxyActor": "http proxy",
    "ServeController": "serve controller",
    "raylet": "raylet",
    "gcs_server": "gcs",
    "redis-server": "redis",
}


def rss_by_role() -> dict[str, float]:
    """MiB of resident memory per Ladder/Ray role on this machine."""
    out: dict[str, float] = {}
    for p in psutil.process_iter(["cmdline", "memory_info"]):
        cmd = " ".join(p.info["cmdline"] or [])
        for needle, role in ROLES.items():
            if needle in cmd and p.info["memory_info"]:
                out[role] = out.get(role, 0.0) + p.info["memory_info"].rss / 2**20
                break
    return out


def server_config(port: int) -> LadderConfig:
    data = LadderConfig().model_dump()
    data["server"]["api_keys"] = [KEY]
    data["ray"]["num_cpus"] = 2
    return restrict(LadderConfig.model_validate(data), ["small"], "127.0.0.1", port)


def sweep(url: str, levels: list[int], duration_s: float) -> list[dict]:
    rows = []
    for c in levels:
        t0 = time.perf_counter()
        outcomes = asyncio.run(closed_loop(url, KEY, c, duration_s))
        row = {"concurrency": c, **summarize(outcomes, time.perf_counter() - t0)}
        rows.append(row)
        print(
            f"c={c:<3} {row['requests']:>5} req  ok {row['ok']:>5}  shed {row['shed_with_retry_after']:>4}  "
            f"other {row['other_errors']:>3}  no-resp {row['no_response']:>3}  {row['throughput_rps']:.2f} rps  "
            f"p50 {row['p50_s']:.2f}s p95 {row['p95_s']:.2f}s p99 {row['p99_s']:.2f}s",
            flush=True,
        )
    return rows


def soak(url: str, rate: float, seconds: float) -> dict:
    samples = [{"t": 0.0, **rss_by_role()}]

    def tick(t: float) -> None:
        if t - samples[-1]["t"] >= 15:
            samples.append({"t": round(t, 1), **rss_by_role()})

    t0 = time.perf_counter()
    outcomes = asyncio.run(open_loop(url, KEY, rate, seconds, on_tick=tick))
    samples.append({"t": round(time.perf_counter() - t0, 1), **rss_by_role()})
    start, end = samples[0], samples[-1]
    roles = sorted(k for k in end if k != "t")
    return {
        "rate_rps": rate,
        "seconds": seconds,
        **summarize(outcomes, time.perf_counter() - t0),
        "rss_mib_start": {r: round(start.get(r, 0), 1) for r in roles},
        "rss_mib_end": {r: round(end.get(r, 0), 1) for r in roles},
        "rss_samples": samples,
    }


def plot(rows: list[dict], soaked: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if soaked else 1, figsize=(11 if soaked else 5.5, 4), squeeze=False)
    ax = axes[0][0]
    cs = [r["concurrency"] for r in rows]
    for q in ("p50_s", "p95_s", "p99_s"):
        ax.plot(cs, [r[q] for r in rows], marker="o", label=q[:-2])
    ax.set_xscale("log", base=2), ax.set_xlabel("concurrent clients"), ax.set_ylabel("latency of 200s (s)")
    twin = ax.twinx()
    twin.bar(
        cs,
        [r["shed_with_retry_after"] / max(1, r["requests"]) for r in rows],
        width=[c * 0.3 for c in cs],
        alpha=0.25,
        color="red",
        label="shed share",
    )
    twin.set_ylabel("share shed (503 + Retry-After)")
    ax.legend(loc="upper left"), ax.set_title("closed loop, small tier, 8 tokens")
    if soaked:
        ax = axes[0][1]
        for role in soaked["rss_mib_end"]:
            ax.plot(
                [s["t"] / 60 for s in soaked["rss_samples"]],
                [s.get(role, 0) for s in soaked["rss_samples"]],
                label=role,
            )
        ax.set_xlabel("minutes"), ax.set_ylabel("RSS (MiB)"), ax.legend(fontsize=7)
        ax.set_title(f"soak at {soaked['rate_rps']:.2f} req/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="1,4,16,64")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per concurrency level")
    ap.add_argument("--soak-s", type=float, default=600.0, help="0 skips the soak")
    ap.add_argument("--soak-rate", default="auto", help="requests/s, or auto = half the best throughput")
    args = ap.parse_args()
    cfg = server_config(free_port())
    tier = cfg.tiers[0]
    with Runtime.start(cfg) as runtime:
        url = deploy(cfg, runtime)
        asyncio.run(closed_loop(url, KEY, 1, 3))  # warm-up
        rows = sweep(url, [int(c) for c in args.levels.split(",")], args.duration)
        soaked = None
        if args.soak_s > 0:
            best = max(r["throughput_rps"] for r in rows)
            rate = best / 2 if args.soak_rate == "auto" else float(args.soak_rate)
            print(f"soak: {rate:.2f} req/s for {args.soak_s:.0f} s ...", flush=True)
            soaked = soak(url, rate, args.soak_s)
            print(json.dumps({k: v for k, v in soaked.items() if k != "rss_samples"}, indent=1), flush=True)
    RESULTS.mkdir(exist_ok=True)
    previous = RESULTS / "load.json"
    if soaked is None and previous.exists():  # a sweep-only run keeps the last soak's figures
        soaked = json.loads(previous.read_text()).get("soak")
    result = {
        "tier": "small",
        "max_ongoing_requests": tier.max_ongoing_requests,
        "max_queued_requests": tier.max_queued_requests,
        "duration_s": args.duration,
        "sweep": rows,
        "soak": soaked,
    }
    (RESULTS / "load.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(rows, soaked, RESULTS / "load.png")
    print(f"wrote {RESULTS / 'load.json'} and load.png")


if __name__ == "__main__":
    main()
