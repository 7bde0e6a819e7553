"""Keys with plans on the real app: two frontier points side by side, and a budget that runs out
(issue 32).

    .venv/bin/python benchmarks/budgets.py [--clients 8] [--limit N (sampled by id hash)] [--budget-requests 16]
        [--ingress-replicas 2] [--mmlu-pro 48] [--data ../shared/data]

``ladder serve`` with the default config (default tiers, the bundled policy, the embedded Redis)
and three key plans (``server.keys``, SHA-256 digests only):
1. **two points side by side**: ``cheap`` (target ``--cheap-target``, default ``large<=0.15``) and
   ``default`` (no target: the policy's own calibrated point) each send the held-out code + math
   rows (the test part of ``offline.pipeline.three_way``, as ``routed_serving.py``: rows the policy
   never saw) and ``--mmlu-pro`` multiple-choice questions outside the policy's data — the
   calibration's mix of code, math and MC, which its reach describes (``--limit`` keeps the mix:
   code and math alone start at small far less often than MC), interleaved over the same ``--clients`` clients. Per key: the share of requests that
   reached each rung and answered from it, against the key's frontier point's calibrated reach
   with a 95% interval for this many requests (calibration's spread, ``sqrt(1/n + 1/m)``);
2. **a budget**: ``budgeted`` (the policy's point, budget B = ``--budget-requests`` × that point's
   calibrated cost per request, period ``--period-s``, default 5 minutes: pacing spreads a budget
   over its period, so an hour's budget would take an hour to run out; the part runs inside one
   period, from its start: the app's periods start at multiples of it) sends the same rows from
   ``--clients`` clients at once until the app answers 429 ``insufficient_quota`` or the period ends (a 429 ``rate_limit_exceeded`` — the rest
   is held by requests in flight — is retried after a second): spent (Redis, ``GET /admin/keys``) vs B
   (target: ≤ B + the most one request cost), and per request the frontier point it was routed at
   (read from the thresholds in its ``ladder`` object): pacing moves it to cheaper points before
   the budget is gone.
``--ingress-replicas`` (default 2) router + ingress replicas, so the budget's spend and the limits are
shared through Redis as they are in a scaled-out app (``benchmarks/key_limits.py`` measures the
limits' accuracy across replicas in-process). Writes benchmarks/results/budgets.json, stamped with commit, policy version
and command.
"""

from __future__ import annotations

import argparse
from collections import Counter
import asyncio
import hashlib
import json
import math
import secrets
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from engine import start_ladder, stop, wait_ready
from harness.meta import DEFAULT_POLICY, write_results
from routed_serving import MAX_TOKENS, Item, workload
from tqdm import tqdm

from ladder.cluster.redis_server import free_port
from ladder.cluster.settings import load_config
from ladder.outcomes.schema import stable_hash
from ladder.policies.calibrate import parse_target
from ladder.policies.operating_points import FrontierPoint, point_for

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
RUNGS = ("small", "medium", "large")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def frontier_points() -> tuple[list[FrontierPoint], FrontierPoint, int]:
    """The bundled policy's Pareto table, its own point, and how many rows calibrated it."""
    meta = json.loads(DEFAULT_POLICY.read_text())["meta"]
    points = [FrontierPoint.of(row) for row in meta["pareto"]]
    return points, FrontierPoint.of(meta["operating_point"]), int(meta["calibrated_on_rows"])


def mixed_sample(items: list[Item], limit: int | None) -> list[Item]:
    """``limit`` items keeping each dataset's share (the calibrated reach describes the mix; the
    first N rows would be nearly all HumanEval): per dataset in id-hash order, then interleaved."""
    by: dict[str, list[Item]] = {}
    order = stable_hash([it.id for it in items], "ladder-sample")
    for i in np.argsort(order, kind="stable"):
        by.setdefault(items[i].dataset, []).append(items[i])
    n = len(items) if limit is None else min(limit, len(items))
    share = {d: round(n * len(v) / len(items)) for d, v in by.items()}
    return [it for d, v in by.items() for it in v[: share[d]]]


def interval(p: float, n: int, m: int) -> tuple[float, float]:
    """95% interval of a share measured on m requests around p calibrated on n rows."""
    half = 1.96 * math.sqrt(max(p * (1 - p), 0.0) * (1 / n + 1 / m))
    return (round(max(0.0, p - half), 4), round(min(1.0, p + half), 4))


async def ask(client: httpx.AsyncClient, key: str, item: Item) -> dict:
    body = {"model": "ladder", "messages": list(item.messages), "max_tokens": item.max_tokens, "temperature": 0}
    if item.stop:
        body["stop"] = list(item.stop)
    r = await client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
    out = {"id": item.id, "status": r.status_code}
    if r.status_code == 200:
        lad = r.json()["ladder"]
        out |= {
            "tier": lad["tier"],
            "reached": [a["tier"] for a in lad["rungs_tried"] if not a.get("unavailable")],
            "thresholds": lad["thresholds"],
            "cost_usd": float(r.headers["x-ladder-cost-usd"]),
        }
    else:  # an OpenAI-style body, or (a proxy's error) plain text
        try:
            out["code"] = r.json().get("error", {}).get("code")
        except ValueError:
            out["code"], out["text"] = None, r.text[:200]
    return out


async def side_by_side(url: str, keys: dict[str, str], items: list[Item], clients: int) -> dict[str, list[dict]]:
    """Every item once per key, the keys' requests interleaved over one pool of clients."""
    queue: asyncio.Queue[tuple[str, Item]] = asyncio.Queue()
    for item in items:
        for name in keys:
            queue.put_nowait((name, item))
    out: dict[str, list[dict]] = {name: [] for name in keys}
    bar = tqdm(total=queue.qsize(), desc="two points", unit="answer")
    async with httpx.AsyncClient(base_url=url, timeout=1800) as client:

        async def user() -> None:
            while not queue.empty():
                name, item = queue.get_nowait()
                out[name].append(await ask(client, keys[name], item))
                bar.update()

        await asyncio.gather(*(user() for _ in range(clients)))
    bar.close()
    return out


async def until_refused(url: str, key: str, items: list[Item], clients: int, period_s: float) -> list[dict]:
    """Clients cycle through the items on one key until one is refused for its budget, or the
    budget's period is over; the others finish what they have in flight. The app's periods start
    at multiples of ``period_s`` (Redis's clock, this machine's): the part starts at a period's
    start and sends nothing in its last 2 s, so every request is booked in that one period (a
    run that straddled two would get two budgets, as a key rightly does)."""
    await asyncio.sleep(period_s - time.time() % period_s + 0.5)
    ends = (time.time() // period_s + 1) * period_s - 2
    out: list[dict] = []
    refused = asyncio.Event()
    asyncio.get_running_loop().call_later(ends - time.time(), refused.set)
    nxt = iter(range(10**6))
    bar = tqdm(desc="budget", unit="answer")
    async with httpx.AsyncClient(base_url=url, timeout=1800) as client:

        async def user() -> None:
            while not refused.is_set():
                sent = time.time()
                row = await ask(client, key, items[next(nxt) % len(items)])
                row["sent"], row["t"] = sent, time.time()
                out.append(row)
                bar.update()
                if row["status"] == 429 and row.get("code") == "insufficient_quota":
                    refused.set()
                elif row["status"] == 429:  # what is left is held by requests in flight: retry
                    await asyncio.sleep(1)

        await asyncio.gather(*(user() for _ in range(clients)))
    bar.close()
    return out


def mix_summary(rows: list[dict], point: FrontierPoint, n_cal: int) -> dict:
    ok = [r for r in rows if r["status"] == 200]
    m = max(len(ok), 1)
    reach = [sum(t in r["reached"] for r in ok) / m for t in RUNGS]
    answered = [sum(r["tier"] == t for r in ok) / m for t in RUNGS]
    expected = [interval(p, n_cal, m) for p in point.reach]
    return {
        "requests": len(rows),
        "errors": len(rows) - len(ok),
        "point": {"cost_per_1k": round(point.cost_per_1k, 4), "quality": round(point.quality, 4), "reach": point.reach},
        "reach": [round(x, 4) for x in reach],
        "reach_expected_ci95": expected,
        "reach_within": [lo <= x <= hi for x, (lo, hi) in zip(reach, expected)],
        "answered_mix": [round(x, 4) for x in answered],
        "usd_per_request": round(sum(r["cost_usd"] for r in ok) / m, 8),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None, help="N held-out rows, sampled by id hash")
    ap.add_argument(
        "--mmlu-pro",
        type=int,
        default=48,
        help="MMLU-Pro questions added, none of them the policy's (0: none; the policy is calibrated on a third MC)",
    )
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--cheap-target", default="large<=0.15")
    ap.add_argument("--budget-requests", type=int, default=16, help="budget = this many requests at the policy's point")
    ap.add_argument(
        "--period-s", type=float, default=300, help="the budget's period (pacing spreads the budget over it)"
    )
    ap.add_argument(
        "--ingress-replicas", type=int, default=2, help="server.ingress_replicas (limits are shared via Redis)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "budgets.json")
    args = ap.parse_args()

    points, own, n_cal = frontier_points()
    cheap = point_for(parse_target(args.cheap_target, RUNGS), points)
    if cheap is None:
        sys.exit(f"error: no point of the bundled policy's frontier meets {args.cheap_target}")
    # held-out code + math rows and unseen MC questions: the calibration's mix (its intervals are for it)
    items = mixed_sample(workload(args.data, args.mmlu_pro, None), args.limit)
    usd_per_request = own.cost_per_1k / 1000  # the calibration's cost model: USD per 1K queries
    budget = round(args.budget_requests * usd_per_request, 8)
    keys = {name: f"sk-bench-{name}-{secrets.token_hex(8)}" for name in ("cheap", "default", "budgeted")}
    admin = secrets.token_urlsafe(24)
    data = load_config(args.config).model_dump(mode="json")
    data["server"]["admin_keys"] = [admin]
    data["server"]["ingress_replicas"] = args.ingress_replicas
    data["server"]["keys"] = [
        {"id": "cheap", "sha256": digest(keys["cheap"]), "target": args.cheap_target},
        {"id": "default", "sha256": digest(keys["default"])},
        {"id": "budgeted", "sha256": digest(keys["budgeted"]), "budget": {"usd": budget, "period_s": args.period_s}},
    ]
    tmp = Path(tempfile.mkdtemp(prefix="ladder-budgets-"))
    config = tmp / "ladder.yaml"
    config.write_text(yaml.safe_dump(data))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_ladder(config, port, tmp / "serve.log")
    try:
        wait_ready(url + "/ready", 1800, proc)
        print(f"workload: {len(items)} held-out rows; budget {budget} USD", flush=True)
        runs = asyncio.run(side_by_side(url, {k: keys[k] for k in ("cheap", "default")}, items, args.clients))
        mixes = {"cheap": mix_summary(runs["cheap"], cheap, n_cal), "default": mix_summary(runs["default"], own, n_cal)}
        save(args, items, mixes, None)  # the first part stands even if the budget's is cut short
        budget_rows = asyncio.run(until_refused(url, keys["budgeted"], items, args.clients, args.period_s))
        usage = httpx.get(url + "/admin/keys", headers={"authorization": f"Bearer {admin}"}, timeout=30).json()
    finally:
        stop(proc)

    # points sharing router thresholds differ in their IDK thresholds, which the answer does not
    # carry: such a request is placed at the cheapest of them
    by_thresholds: dict[tuple, FrontierPoint] = {}
    for p in sorted(points, key=lambda p: -p.cost_per_1k):
        by_thresholds[tuple(round(t, 6) for t in p.thresholds)] = p
    served = [r for r in budget_rows if r["status"] == 200]
    paced = [by_thresholds.get(tuple(round(t, 6) for t in r["thresholds"])) for r in served]
    spent = next((k for k in usage.get("keys", []) if k.get("id") == "budgeted"), {})
    most = max((r["cost_usd"] for r in served), default=0.0)
    charged = round(sum(r["cost_usd"] for r in served), 8)
    periods = sorted({int(r["sent"] // args.period_s) for r in budget_rows})
    budget_summary = {
        "budget_usd": budget,
        "period_s": args.period_s,
        "exhausted": any(r.get("code") == "insufficient_quota" for r in budget_rows),
        "clients": args.clients,
        "ingress_replicas": args.ingress_replicas,
        "answered": len(served),
        "refused": sum(r.get("code") == "insufficient_quota" for r in budget_rows),
        "told_to_retry": sum(r.get("code") == "rate_limit_exceeded" for r in budget_rows),
        "other_errors": sum(r["status"] not in (200, 429) for r in budget_rows),
        "spent_usd_redis": spent.get("spent_usd"),
        "spent_usd_answers": charged,
        "periods": len(periods),  # 1 by construction: the part runs inside one period
        "most_one_request_usd": most,
        "within_budget_plus_one": bool(charged <= budget + most),
        # per answered request in order: the frontier point's cost per 1K it was routed at
        "points_cost_per_1k": [round(p.cost_per_1k, 4) if p else None for p in paced],
    }
    print("\n| key | target | requests | reach small / medium / large (expected 95%) | answered mix | USD/request |")
    print("|---|---|---|---|---|---|")
    for name, s in mixes.items():
        cells = " / ".join(f"{x:.2f} ({lo:.2f}–{hi:.2f})" for x, (lo, hi) in zip(s["reach"], s["reach_expected_ci95"]))
        target = args.cheap_target if name == "cheap" else "policy's own"
        mix = "/".join(f"{x:.0%}" for x in s["answered_mix"])
        print(f"| {name} | {target} | {s['requests']} | {cells} | {mix} | {s['usd_per_request']:.6f} |")
    print(json.dumps({k: v for k, v in budget_summary.items() if k != "points_cost_per_1k"}))
    save(args, items, mixes, budget_summary)


def save(args: argparse.Namespace, items: list[Item], mixes: dict, budget: dict | None) -> None:
    write_results(
        args.out,
        sys.argv,
        args.config,
        workload={
            "rows": len(items),
            "datasets": dict(Counter(it.dataset for it in items)),
            "held_out_from": "three_way(...).test; mmlu-pro: the first --mmlu-pro by id hash, outside the policy's data",
            "max_tokens": MAX_TOKENS,
        },
        ingress_replicas=args.ingress_replicas,
        keys=mixes,
        budget=budget,
    )


if __name__ == "__main__":
    main()
