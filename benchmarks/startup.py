"""How long `ladder serve` takes to be ready, what it holds, and how long it takes to stop.

Starts `ladder serve` (the default config unless --config) as a user would, polls `GET /ready`
until it answers 200, reads the memory the machine has in use (`MemAvailable`), then sends
SIGTERM and times the stop (exit code and leftover processes checked). Each start is one of:
  cold: a fresh, empty torch-inductor cache (every engine compiles its graph from scratch)
  warm: the inductor cache the previous start left (what a restart on the same machine sees)
Converted weights are reused in both (`ladder prepare` first; converting is a one-off, timed
by `ladder prepare` itself). Writes benchmarks/results/startup.json and prints a table.

    python benchmarks/startup.py [--config FILE] [--runs cold,warm,warm]
    python benchmarks/startup.py --runs warm,warm --machine-cache   # the cache earlier serves left
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from harness.meta import stamp
from harness.processes import descendants, survivors

from ladder.cluster.redis_server import free_port

RESULTS = Path(__file__).parent / "results"


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def one_start(kind: str, config: str | None, inductor_dir: str | None, log_dir: Path) -> dict:
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    if inductor_dir is not None:  # None: the cache every `ladder serve` on this machine uses
        env["TORCHINDUCTOR_CACHE_DIR"] = inductor_dir
    cmd = [sys.executable, "-m", "ladder.cli", "serve", "--port", str(port)] + (["--config", config] if config else [])
    idle = available_gib()
    err = log_dir / f"{kind}-{port}.stderr"
    t0 = time.monotonic()
    with err.open("w") as e:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=e, env=env)
    ready_s = None
    tiers: dict = {}
    while proc.poll() is None and time.monotonic() - t0 < 1200:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5)
            tiers = r.json().get("tiers", tiers)
            if r.status_code == 200:
                ready_s = time.monotonic() - t0
                break
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    if ready_s is None:
        proc.kill()
        raise SystemExit(f"{kind} start: not ready ({err.read_text()[-2000:]})")
    in_use = idle - available_gib()
    tree = descendants(proc.pid) - {proc.pid}
    t1 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=300)
    left = survivors(tree, wait_s=30)
    return {
        "kind": kind,
        "ready_s": round(ready_s, 1),
        "memory_in_use_gib": round(in_use, 2),
        "stop_s": round(time.monotonic() - t1, 1),
        "exit_code": code,
        "left_running": len(left),
        "tiers": tiers,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=None)
    ap.add_argument("--runs", default="cold,warm", help="comma-separated: cold | warm")
    ap.add_argument(
        "--machine-cache",
        action="store_true",
        help="warm starts on the inductor cache this machine's `ladder serve` already filled (no cold run)",
    )
    args = ap.parse_args()
    if args.machine_cache and "cold" in args.runs.split(","):
        raise SystemExit("--machine-cache measures warm starts only")
    subprocess.run(
        [sys.executable, "-m", "ladder.cli", "prepare"] + (["--config", args.config] if args.config else []), check=True
    )
    runs = []
    with tempfile.TemporaryDirectory(prefix="ladder-startup-") as tmp:
        inductor = Path(tmp, "inductor")
        for kind in args.runs.split(","):
            if kind == "cold":
                shutil.rmtree(inductor, ignore_errors=True)
            runs.append(one_start(kind, args.config, None if args.machine_cache else str(inductor), Path(tmp)))
            print(json.dumps(runs[-1]), flush=True)
    print(f"\n{'start':<6} {'ready s':>8} {'GiB in use':>11} {'stop s':>7} {'exit':>5} {'left':>5}")
    for r in runs:
        print(
            f"{r['kind']:<6} {r['ready_s']:>8} {r['memory_in_use_gib']:>11} {r['stop_s']:>7} {r['exit_code']:>5} {r['left_running']:>5}"
        )
    out = {**stamp(sys.argv, None), "config": args.config or "default", "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
