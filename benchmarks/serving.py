"""Serving figures on this machine, side by side in one run (small tier, loopback only).

    .venv/bin/python benchmarks/serving.py [--data ../shared/data] [--rows 200] [--requests 20]

1. Batch scoring: `ladder score`'s Ray Data job vs a plain single-process loop over the same
   worker, same rows (short outputs), rows/s and the ratio.
2. Router overhead: HTTP latency through the router (`model: ladder`: policy + Redis cache)
   vs the pinned tier (`model: small`: same ingress, no routing) vs a direct handle call to the
   tier deployment, 32 output tokens, interleaved.
3. Decision latency (in process, real Redis): cache hit vs miss, for the fixed policy and a
   TF-IDF learned policy.
4. Streaming: time to first token vs total time for a pinned tier.
Writes benchmarks/results/serving.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from ladder.cluster.compose import build_worker, materialize
from ladder.cluster.redis_server import free_port
from ladder.cluster.runtime import Runtime
from ladder.cluster.settings import LadderConfig
from ladder.jobs.batch import score
from ladder.policies.fixed import FixedPolicy
from ladder.router.cascade import decide
from ladder.serving.cache import RedisRouteCache
from ladder.serving.launch import deploy, restrict
from ladder.types import Query
from ladder.serving.signing import Signer

RESULTS = Path(__file__).parent / "results"

SIGNER = Signer(b"the benchmark server secret")  # ladder serve makes one per start


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(xs, p) * 1000)


def batch_vs_loop(cfg: LadderConfig, rows: int) -> dict:
    prompts = [
        {"id": f"b{i}", "prompt": f"Give one word that rhymes with number {i}.", "max_tokens": 4} for i in range(rows)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp, "in.jsonl"), Path(tmp, "out.jsonl")
        src.write_text("".join(json.dumps(r) + "\n" for r in prompts))
        s = score(cfg, src, out, actors=1, batch_size=16)
    tier = cfg.tiers[0]
    worker = build_worker(tier, materialize(cfg, tier)).load()
    t0 = time.perf_counter()
    for r in prompts:
        worker.generate_sync(Query.of(r["prompt"], max_tokens=4))
    loop_s = time.perf_counter() - t0
    return {
        "rows": rows,
        "ray_data_rows_s": rows / s.wall_s,
        "plain_loop_rows_s": rows / loop_s,
        "ratio": (rows / s.wall_s) / (rows / loop_s),
        "ray_data_wall_s": s.wall_s,
        "loop_wall_s": loop_s,
    }


def router_overhead(url: str, n: int) -> dict:
    from ray import serve

    handle = serve.get_deployment_handle("tier-small", app_name="ladder-tier-small")
    times: dict[str, list[float]] = {"router": [], "pinned": [], "direct_handle": []}
    prompts = [f"Describe the number {i} in one sentence." for i in range(n)]
    with httpx.Client(timeout=120) as client:
        for p in prompts:
            for mode in ("router", "pinned", "direct_handle"):
                t0 = time.perf_counter()
                if mode == "direct_handle":
                    handle.generate.remote(Query.of(p, max_tokens=32)).result()
                else:
                    r = client.post(
                        url + "/v1/chat/completions",
                        json={
                            "model": "ladder" if mode == "router" else "small",
                            "max_tokens": 32,
                            "temperature": 0,
                            "messages": [{"role": "user", "content": p}],
                        },
                    )
                    r.raise_for_status()
                times[mode].append(time.perf_counter() - t0)
    out: dict = {m: {"p50_ms": pct(v, 50), "p95_ms": pct(v, 95)} for m, v in times.items()}
    # Paired per prompt (same prompt, same greedy tokens), so prompt-length noise cancels.
    for other in ("pinned", "direct_handle"):
        rel = [r / o - 1 for r, o in zip(times["router"], times[other])]
        out[f"overhead_vs_{other}_median_paired"] = float(np.median(rel))
    return out


async def decision_latency(redis_url: str, policies: dict) -> dict:
    cache = RedisRouteCache(redis_url, ttl_s=600, signer=SIGNER)
    out = {}
    for name, policy in policies.items():
        miss, hit = [], []
        for i in range(300):
            q = Query.of(f"{name} decision probe number {i}: what is {i} squared?")
            t0 = time.perf_counter()
            await decide(q, policy, cache, 3)
            miss.append(time.perf_counter() - t0)
        await cache.flush()
        for i in range(300):
            q = Query.of(f"{name} decision probe number {i}: what is {i} squared?")
            t0 = time.perf_counter()
            _, was_hit = await decide(q, policy, cache, 3)
            hit.append(time.perf_counter() - t0)
            assert was_hit
        featurize = []  # the policy alone on the same queries: the part a cache miss cannot avoid
        for i in range(300):
            q = Query.of(f"{name} decision probe number {i}: what is {i} squared?")
            t0 = time.perf_counter()
            policy.route(q)
            featurize.append(time.perf_counter() - t0)
        out[name] = {
            "miss_p50_ms": pct(miss, 50),
            "miss_p99_ms": pct(miss, 99),
            "hit_p50_ms": pct(hit, 50),
            "hit_p99_ms": pct(hit, 99),
            "policy_only_p50_ms": pct(featurize, 50),
        }
    await cache.close()
    return out


def streaming(url: str, n: int) -> dict:
    ttft, total = [], []
    body = {
        "model": "small",
        "max_tokens": 64,
        "temperature": 0,
        "stream": True,
        "messages": [{"role": "user", "content": "Write a short paragraph about the sea."}],
    }
    with httpx.Client(timeout=120) as client:
        for _ in range(n):
            t0, first = time.perf_counter(), None
            with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
                for line in r.iter_lines():
                    if first is None and '"content":"' in line and '"content":""' not in line:
                        first = time.perf_counter() - t0
            total.append(time.perf_counter() - t0)
            ttft.append(first or total[-1])
    return {
        "ttft_p50_ms": pct(ttft, 50),
        "total_p50_ms": pct(total, 50),
        "ttft_over_total": statistics.median(ttft) / statistics.median(total),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--only-batch", action="store_true", help="run part 1 only (writes serving_batch.json)")
    ap.add_argument("--skip-batch", action="store_true", help="skip part 1 (keeps serving_batch.json)")
    args = ap.parse_args()
    base = LadderConfig().model_dump()
    base["tiers"][0]["threads"] = 2  # same torch threads for the Ray Data actor and the plain loop
    cfg = restrict(LadderConfig.model_validate(base), ["small"], "127.0.0.1", free_port())
    report: dict = {}
    with Runtime.start(cfg) as runtime:
        if not args.skip_batch:
            report["batch"] = batch_vs_loop(cfg, args.rows)
            print("batch:", json.dumps(report["batch"]), flush=True)
        if args.only_batch:
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / "serving_batch.json").write_text(json.dumps(report, indent=1))
            return
        url = deploy(cfg, runtime)
        report["router_overhead"] = router_overhead(url, args.requests)
        print("overhead:", json.dumps(report["router_overhead"]), flush=True)
        policies = {"fixed": FixedPolicy()}
        if (args.data / "routellm").is_dir():
            from ladder.offline.pipeline import load_outcomes
            from ladder.offline.training import TrainSpec, train_policy
            from ladder.policies.features import FeaturizerKind

            outcomes, _ = load_outcomes("routellm:mmlu", args.data)
            policies["tfidf-learned"] = train_policy(outcomes, TrainSpec(FeaturizerKind.TFIDF, idk=False))
        report["decision"] = asyncio.run(decision_latency(runtime.redis_url, policies))
        print("decision:", json.dumps(report["decision"]), flush=True)
        report["streaming"] = streaming(url, 5)
        print("streaming:", json.dumps(report["streaming"]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
