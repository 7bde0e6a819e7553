"""Serving at engine speed, side by side in one run (issue 18).

    .venv/bin/python benchmarks/engine.py [--duration 30] [--clients 1,16,64] [--systems ladder,plain-vllm,ladder-transformers]

Same machine, same converted weights (the small tier), same load: a closed loop of N streaming
clients (64-token greedy answers, loopback only, every loop bounded by ``--duration``; requests in
flight at the end finish and count). Systems:
- ``ladder``: Ladder's app as ``make serve`` runs it (router on: ``model: "ladder"``, the default
  vLLM backend), small tier only;
- ``plain-vllm``: vLLM's own OpenAI server (``python -m vllm.entrypoints.openai.api_server``) on
  the same folder, with the same engine settings (max_num_seqs, max_model_len, KV cache, threads);
- ``ladder-transformers``: Ladder's app with the small tier on its transformers backend.
Completion tokens come from each response's ``usage``; time to first token is the first content
chunk. Writes benchmarks/results/engine.json: ``runs`` = [{system, clients, completion_tokens_per_s,
p50_s, p95_s, ttft_p50_s, errors}], ``ratio_vs_plain_vllm`` (tokens/s at 16 clients), and also the
time until ``ladder serve`` is ready with all three tiers plus the whole stack's memory (PSS)
(``--stack``, on by default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
from harness.loadgen import QUESTIONS

from ladder.cluster.compose import materialize
from ladder.cluster.redis_server import free_port

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
MAX_TOKENS = 64


def body(i: int, model: str) -> dict:
    return {
        "model": model,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} Explain in detail. (#{i})"}],
    }


async def one(client: httpx.AsyncClient, url: str, payload: dict) -> dict:
    start = time.perf_counter()
    ttft, tokens, status, ext = None, 0, None, None
    try:
        async with client.stream("POST", url, json=payload) as r:
            status = r.status_code
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    status = 599
                for choice in event.get("choices") or ():
                    if ttft is None and (choice.get("delta") or {}).get("content"):
                        ttft = time.perf_counter() - start
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                ext = event.get("ladder", ext)  # Ladder's last chunk says which rung answered, and how
    except httpx.HTTPError:
        status = None
    return {"status": status, "latency_s": time.perf_counter() - start, "ttft_s": ttft, "tokens": tokens, "ladder": ext}


async def closed_loop(base: str, model: str, clients: int, duration_s: float, key: str | None) -> dict:
    url, results, counter = base + "/v1/chat/completions", [], iter(range(10**9))
    headers = {"authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=300, headers=headers, limits=limits) as client:

        async def user() -> None:
            while time.perf_counter() - t0 < duration_s:
                r = await one(client, url, body(next(counter), model))
                results.append(r)
                if r["status"] == 503:  # shed: back off as OpenAI's clients do (Retry-After)
                    await asyncio.sleep(1.0)

        await asyncio.gather(*(user() for _ in range(clients)))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == 200]
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] if xs else None  # noqa: E731
    return {
        "clients": clients,
        "requests": len(results),
        "ok": len(ok),
        "shed_503": sum(1 for r in results if r["status"] == 503),
        "errors": sum(1 for r in results if r["status"] not in (200, 503)),
        "completion_tokens_per_s": sum(r["tokens"] for r in ok) / wall,
        "p50_s": q([r["latency_s"] for r in ok], 0.5),
        "p95_s": q([r["latency_s"] for r in ok], 0.95),
        "ttft_p50_s": q([r["ttft_s"] for r in ok if r["ttft_s"] is not None], 0.5),
        "wall_s": wall,
    }


def wait_ready(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")


def stack_pss_mib(root: psutil.Process) -> float:
    procs = [root, *root.children(recursive=True)]
    # Ray starts its own daemons outside the tree of `ladder serve`: count every raylet/gcs/worker too.
    names = ("raylet", "gcs_server", "ray::", "redis-server", "VLLM", "EngineCore", "dashboard")
    extra = [p for p in psutil.process_iter(["cmdline"]) if any(n in " ".join(p.info["cmdline"] or []) for n in names)]
    seen, total = set(), 0
    for p in procs + extra:
        try:
            if p.pid not in seen:
                seen.add(p.pid)
                total += p.memory_full_info().pss  # proportional: shared pages counted once
        except psutil.Error:
            pass
    return total / 2**20


def write_config(path: Path, backend: str, tiers: list[str]) -> None:
    from ladder.cluster.settings import LadderConfig

    data = LadderConfig().model_dump(mode="json")
    data["tiers"] = [t for t in data["tiers"] if t["name"] in tiers]
    if len(tiers) < 3:
        data["policy"] = {"kind": "fixed"}  # the bundled learned policy covers the whole ladder
    for t in data["tiers"]:
        if backend == "transformers":
            t.update(backend="transformers", vllm=None, max_ongoing_requests=4)
    import yaml

    path.write_text(yaml.safe_dump(data))


def start_ladder(config: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "ladder.cli", "serve", "--config", str(config), "--port", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def start_plain_vllm(folder: Path, port: int, log: Path) -> subprocess.Popen:
    from ladder.cluster.settings import LadderConfig

    tier = LadderConfig().tier("small")
    e = tier.engine
    cores = sorted(os.sched_getaffinity(0))
    # The same engine settings Ladder's worker gives vLLM (workers/vllm_worker.py), so only the
    # serving layer differs.
    env = {
        **os.environ,
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores)),
        "OMP_NUM_THREADS": str(len(cores)),
    }
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(folder),
        "--served-model-name",
        "small",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        tier.dtype,
        "--kv-cache-memory-bytes",
        str(int(e.kv_cache_gib * 2**30)),
        "--max-model-len",
        str(e.max_model_len),
        "--max-num-seqs",
        str(e.max_num_seqs),
        "--seed",
        "0",
        "--disable-log-stats",
        "--disable-uvicorn-access-log",
    ]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True
    )  # nothing left over
    time.sleep(3)


def run_system(system: str, clients: list[int], duration: float, tmp: Path) -> list[dict]:
    from ladder.cluster.settings import LadderConfig

    port = free_port()
    log = tmp / f"{system}.log"
    if system == "plain-vllm":
        folder = materialize(LadderConfig(), LadderConfig().tier("small"))
        proc, model, ready_url = start_plain_vllm(folder, port, log), "small", f"http://127.0.0.1:{port}/v1/models"
    else:
        cfg = tmp / f"{system}.yaml"
        write_config(cfg, "transformers" if system == "ladder-transformers" else "vllm", ["small"])
        proc, model, ready_url = start_ladder(cfg, port, log), "ladder", f"http://127.0.0.1:{port}/health"
    rows = []
    try:
        ready = wait_ready(ready_url, 600, proc)
        print(f"{system}: ready in {ready:.0f}s", flush=True)
        asyncio.run(closed_loop(f"http://127.0.0.1:{port}", model, 2, 10, None))  # warm-up
        for c in clients:
            row = {"system": system, **asyncio.run(closed_loop(f"http://127.0.0.1:{port}", model, c, duration, None))}
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        stop(proc)
    return rows


def stack_start(tmp: Path) -> dict:
    """`ladder serve` with all three default tiers: seconds until /health answers, and the RSS then."""
    port = free_port()
    started = time.perf_counter()
    proc = start_ladder(ROOT / "configs" / "default.yaml", port, tmp / "stack.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", 900, proc)
        t0 = time.perf_counter()
        while "Ladder is serving" not in (tmp / "stack.log").read_text():  # printed once every replica is up
            if proc.poll() is not None or time.perf_counter() - t0 > 900:
                raise RuntimeError("the three-tier stack did not come up")
            time.sleep(1)
        ready = time.perf_counter() - started
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            timeout=300,
            json={"model": "large", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]},
        )
        # the README's own request, routed by the default (learned) policy
        routed = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            timeout=300,
            json={"model": "ladder", "max_tokens": 32, "messages": [{"role": "user", "content": "What is 2+2?"}]},
        ).json()
        return {
            "ready_s": ready,
            "pss_mib": stack_pss_mib(psutil.Process(proc.pid)),
            "large_answered": r.status_code == 200,
            "readme_request": {"answer": routed["choices"][0]["message"]["content"], "ladder": routed.get("ladder")},
        }
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--clients", default="1,16,64")
    ap.add_argument("--systems", default="ladder,plain-vllm,ladder-transformers")
    ap.add_argument("--no-stack", action="store_true", help="skip the three-tier start-up measurement")
    args = ap.parse_args()
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="ladder-engine-"))
    clients = [int(c) for c in args.clients.split(",")]
    runs = []
    for system in filter(None, args.systems.split(",")):
        runs.extend(run_system(system, clients, args.duration, tmp))
    by = {(r["system"], r["clients"]): r for r in runs}
    ratio = None
    if ("ladder", 16) in by and ("plain-vllm", 16) in by:
        ratio = by[("ladder", 16)]["completion_tokens_per_s"] / by[("plain-vllm", 16)]["completion_tokens_per_s"]
    out = {
        "max_tokens": MAX_TOKENS,
        "duration_s": args.duration,
        "cpus": len(os.sched_getaffinity(0)),
        "runs": runs,
        "ratio_vs_plain_vllm": ratio,
        "p50_ratio_vs_plain_vllm": (by[("ladder", 16)]["p50_s"] / by[("plain-vllm", 16)]["p50_s"]) if ratio else None,
    }
    if not args.no_stack:
        out["stack"] = stack_start(tmp)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine.json").write_text(json.dumps(out, indent=2))
    print(f"\n{'system':<22}{'clients':>8}{'tok/s':>9}{'p50 s':>8}{'p95 s':>8}{'ttft s':>8}{'503':>6}{'err':>5}")
    for r in runs:
        f = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
        print(
            f"{r['system']:<22}{r['clients']:>8}{r['completion_tokens_per_s']:>9.1f}{f(r['p50_s']):>8}"
            f"{f(r['p95_s']):>8}{f(r['ttft_p50_s']):>8}{r['shed_503']:>6}{r['errors']:>5}"
        )
    print(f"ladder / plain vLLM tokens/s at 16 clients: {ratio}")
    if "stack" in out:
        print(
            f"three-tier `ladder serve` ready in {out['stack']['ready_s']:.0f}s, stack PSS {out['stack']['pss_mib']:.0f} MiB"
        )
    print(f"logs: {tmp}")


if __name__ == "__main__":
    main()
