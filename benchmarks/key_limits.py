"""What key plans cost per request, and whether their limits hold across replicas (issue 32).

    .venv/bin/python benchmarks/key_limits.py [--requests 400] [--seconds 30]

The HTTP app in-process (``serving.gateway`` over ASGI, no Ray, scripted tiers that answer at
once, so what is timed is the gateway) against a real redis-server on loopback:
1. **overhead**: the same requests, one at a time, with a plain key (no plan) and with a plan
   that has every limit and a budget (admit + settle: two Lua calls per request); p50/p95 of
   each and the p50 difference (target ≤ 2 ms);
2. **rate limit across replicas**: two gateways sharing the Redis, 8 closed-loop clients on one
   key with ``requests_per_min`` R for ``--seconds`` s: requests admitted vs what a token bucket
   allows (R at once + R/60 per second), as a ratio (target within 5%);
3. **budget across replicas**: the same clients on a key with a budget until refused: spend vs
   budget (target: ≤ budget + the cost of one request).
Writes benchmarks/results/key_limits.json, stamped with commit, policy version and command.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from harness.meta import stamp

from ladder.cluster.redis_server import EmbeddedRedis
from ladder.cluster.settings import LadderConfig
from ladder.serving.gateway import Gateway, build_api
from ladder.types import Delta, Generation

RESULTS = Path(__file__).parent / "results"
PLAIN = "sk-plain"


class InstantTier:
    """Answers at once (a few tokens): the gateway's own time is what is measured."""

    def __init__(self, tier: str, logprob: float) -> None:
        self.tier, self.logprob = tier, logprob

    async def stream(self, query):  # noqa: ANN001, ANN201
        for i, word in enumerate(("answer", " from", f" {self.tier}")):
            yield Delta(word, (i,), (self.logprob,), 5 if i == 0 else 0)
        yield Generation(self.tier, f"answer from {self.tier}", (0, 1, 2), (self.logprob,) * 3, 5, "stop", 0.0, 0.0)

    async def generate(self, query):  # noqa: ANN001, ANN201
        return Generation(self.tier, f"answer from {self.tier}", (0, 1, 2), (self.logprob,) * 3, 5, "stop", 0.0, 0.0)


def config(plans: list[dict]) -> LadderConfig:
    tier = {"source": {"kind": "local", "path": "/nowhere"}, "price": {"input_per_1m": 1000, "output_per_1m": 2000}}
    return LadderConfig(
        tiers=[
            {"name": "small", **tier, "backend": "transformers"},
            {"name": "medium", **tier, "backend": "transformers"},
        ],
        policy={"kind": "fixed", "min_mean_logprob": -1.0},
        server={"api_keys": [PLAIN], "keys": plans, "max_completion_tokens": 64},
        cache={"enabled": False},  # routing decisions are not what is measured
    )


def plan(key: str, **kw) -> dict:
    return {"id": key.removeprefix("sk-"), "sha256": hashlib.sha256(key.encode()).hexdigest(), **kw}


SECRET = b"key-limits benchmark secret 32 b"  # replicas of one app share the server secret


def gateways(cfg: LadderConfig, url: str, n: int) -> list[Gateway]:
    tiers = [InstantTier("small", -3.0), InstantTier("medium", -0.1)]  # small escalated, medium answers
    return [Gateway(cfg, tiers, tiers, url, secret=SECRET) for _ in range(n)]


def clients(gws: list[Gateway]) -> list[httpx.AsyncClient]:
    return [
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=build_api(lambda g=g: g), client=("127.0.0.1", 5000)),
            base_url="http://ladder",
        )
        for g in gws
    ]


BODY = {"model": "ladder", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


async def sequential(gw: Gateway, key: str, n: int) -> list[float]:
    (c,) = clients([gw])
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await c.post("/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"})
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
    await c.aclose()
    return out


async def closed_loop(gws: list[Gateway], key: str, n_clients: int, seconds: float | None) -> list[httpx.Response]:
    """``n_clients`` loops over the gateways in turn, for ``seconds`` (None: until a 429 budget refusal)."""
    cs, out, stop = clients(gws), [], time.perf_counter() + (seconds or 600)
    done = asyncio.Event()

    async def loop(i: int) -> None:
        c = cs[i % len(cs)]
        while time.perf_counter() < stop and not done.is_set():
            r = await c.post("/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"})
            out.append(r)
            if seconds is None and r.status_code == 429 and n_clients == 1:
                done.set()
            elif seconds is None and r.status_code == 429:
                return  # this client stops; the budget is gone only when one alone is refused
            elif r.status_code == 429:
                await asyncio.sleep(0.005)  # a refused client retries soon, as one honouring nothing would

    await asyncio.gather(*(loop(i) for i in range(n_clients)))
    for c in cs:
        await c.aclose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rpm", type=int, default=600)
    ap.add_argument("--budget", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=RESULTS / "key_limits.json")
    args = ap.parse_args()
    with EmbeddedRedis() as redis_server:
        url = redis_server.url
        limited = plan("sk-limited", limits={"requests_per_min": 10**6, "tokens_per_min": 10**8, "concurrent": 64})
        limited["budget"] = {"usd": 10**6}
        rate = plan("sk-rate", limits={"requests_per_min": args.rpm})
        budget = plan("sk-budget", budget={"usd": args.budget})
        cfg = config([limited, rate, budget])

        # 1. overhead, interleaved in blocks so drift hits both alike
        gw = gateways(cfg, url, 1)[0]
        plain_s, plan_s = [], []
        for _ in range(4):
            plain_s += asyncio.run(sequential(gw, PLAIN, args.requests // 4))
            plan_s += asyncio.run(sequential(gw, "sk-limited", args.requests // 4))
        overhead = {
            "plain_p50_ms": round(float(np.median(plain_s)) * 1e3, 3),
            "plain_p95_ms": round(float(np.percentile(plain_s, 95)) * 1e3, 3),
            "plan_p50_ms": round(float(np.median(plan_s)) * 1e3, 3),
            "plan_p95_ms": round(float(np.percentile(plan_s, 95)) * 1e3, 3),
        }
        overhead["added_p50_ms"] = round(overhead["plan_p50_ms"] - overhead["plain_p50_ms"], 3)

        # 2. requests/min across two replicas
        gws = gateways(cfg, url, 2)
        t0 = time.perf_counter()
        rs = asyncio.run(closed_loop(gws, "sk-rate", 8, args.seconds))
        wall = time.perf_counter() - t0
        admitted = sum(r.status_code == 200 for r in rs)
        allowed = args.rpm + args.rpm / 60 * wall
        rate_row = {
            "requests_per_min": args.rpm,
            "seconds": round(wall, 2),
            "sent": len(rs),
            "admitted": admitted,
            "bucket_allows": round(allowed, 1),
            "ratio": round(admitted / allowed, 4),
        }

        # 3. a budget across two replicas: 8 clients until each is refused (reservations of the
        # others in flight may refuse one early), then one client until it is refused too
        budget_gws = gateways(cfg, url, 2)
        rs = asyncio.run(closed_loop(budget_gws, "sk-budget", 8, None))
        rs += asyncio.run(closed_loop(budget_gws, "sk-budget", 1, None))
        ok = [r for r in rs if r.status_code == 200]
        costs = [float(r.headers["x-ladder-cost-usd"]) for r in ok]
        usage = asyncio.run(gws[0].quotas.usage("budget", 86_400))
        budget_row = {
            "budget_usd": args.budget,
            "answered": len(ok),
            "spent_usd": round(usage["spent_usd"], 6),
            "charged_usd": round(sum(costs), 6),
            "max_request_usd": round(max(costs), 6),
            "over_budget_usd": round(max(0.0, usage["spent_usd"] - args.budget), 6),
        }
    result = {**stamp(sys.argv), "overhead": overhead, "rate_limit": rate_row, "budget": budget_row}
    print(f"{'':<28}{'p50 ms':>10}{'p95 ms':>10}")
    print(f"{'plain key':<28}{overhead['plain_p50_ms']:>10.2f}{overhead['plain_p95_ms']:>10.2f}")
    print(f"{'plan (limits + budget)':<28}{overhead['plan_p50_ms']:>10.2f}{overhead['plan_p95_ms']:>10.2f}")
    print(f"added p50: {overhead['added_p50_ms']:.2f} ms")
    print(
        f"rpm {args.rpm}, 2 replicas, 8 clients, {rate_row['seconds']} s: admitted {admitted} of "
        f"{rate_row['bucket_allows']} allowed (ratio {rate_row['ratio']})"
    )
    print(
        f"budget USD {args.budget}: spent {budget_row['spent_usd']} over {len(ok)} answers "
        f"(over by {budget_row['over_budget_usd']}; one request costs ≤ {budget_row['max_request_usd']})"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
