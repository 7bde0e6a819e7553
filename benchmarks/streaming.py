"""Routed streams (issue 20): prefix decisions vs whole-answer IDK, offline and on the served ladder.

    .venv/bin/python benchmarks/streaming.py [--duration 30] [--clients 1,16] [--offline-only]

1. Offline, cross-validated on the committed collected outcomes (HumanEval + GSM8K, every rung of
   the default ladder): 5 folds by a stable hash of the id; on the other four, the policy is
   trained (fit part) and calibrated to the default target (validation part) exactly as
   scripts/train-default-policy.sh does — router and whole-answer IDK thresholds first, then the
   prefix gates (``ladder.policies.prefix.calibrate_prefix``: k and thresholds); both policies are
   then replayed on the held-out fold. Reported: quality (share correct) and USD (configured
   prices; a rung stopped after its prefix costs its prompt + k tokens) of each, the k chosen,
   the share of requests that stream live and the tokens generated before the first one reaches
   the client.
2. Served: ``ladder serve`` with the three default tiers and the bundled policy (which carries
   its gates), a closed loop of N streaming clients on held-out questions of those outcomes
   (greedy, 128 tokens), routed (``model: "ladder"``) and pinned to the tier the routed answers
   most often came from, side by side on the same running stack. Time to first token = the first
   content chunk.
Writes benchmarks/results/streaming.json: ``{ttft_routed_p50_s, ttft_pinned_p50_s, total_p50_s,
clients, prefix_vs_full: {quality_delta, cost_delta, k}}`` (the first three at each client count
in ``served``; the top-level ones at 16 clients), with the details beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from engine import one, start_ladder, stop, wait_ready  # noqa: E402

from ladder.cluster.redis_server import free_port  # noqa: E402
from ladder.cluster.settings import LadderConfig  # noqa: E402
from ladder.offline.pipeline import answer_tokens, parse_target, rung_costs, three_way  # noqa: E402
from ladder.offline.training import TrainSpec, gate_scores, idk_scores, train_policy  # noqa: E402
from ladder.outcomes.io import read_jsonl  # noqa: E402
from ladder.outcomes.schema import Outcomes, stable_split  # noqa: E402
from ladder.policies.calibrate import calibrate, simulate  # noqa: E402
from ladder.policies.features import FeaturizerKind  # noqa: E402
from ladder.policies.prefix import calibrate_prefix, simulate_prefix  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
OUTCOMES = [ROOT / "data" / "outcomes" / "humaneval.jsonl", ROOT / "data" / "outcomes" / "gsm8k.jsonl"]
TARGET = "large<=0.5"  # the bundled policy's (scripts/train-default-policy.sh)
FOLDS = 5
MAX_TOKENS = 128


def load() -> Outcomes:
    tmp = Path(tempfile.mkdtemp(prefix="ladder-stream-")) / "code-math.jsonl"
    tmp.write_text("".join(p.read_text() for p in OUTCOMES))
    return read_jsonl(tmp)


def fold_of(ids: tuple[str, ...]) -> np.ndarray:
    return np.array(
        [int.from_bytes(hashlib.blake2b(f"fold:{i}".encode(), digest_size=4).digest(), "big") % FOLDS for i in ids]
    )


def prices() -> dict[str, tuple[float, float]]:
    return {t.name: (t.price.input_per_1m, t.price.output_per_1m) for t in LadderConfig().tiers}


def offline() -> dict:
    outcomes = load()
    target = parse_target(TARGET, outcomes.rungs)
    folds = fold_of(outcomes.ids)
    rows, ks = collections.defaultdict(list), []
    for f in range(FOLDS):
        rest, held = outcomes.take(folds != f), outcomes.take(folds == f)
        is_val = stable_split(rest.ids, 0.2, salt="ladder-validation")
        fit, val = rest.take(~is_val), rest.take(is_val)
        policy = train_policy(fit, TrainSpec(FeaturizerKind.TFIDF))

        def scores(part: Outcomes) -> tuple[np.ndarray, np.ndarray]:
            x = policy.featurizer.transform(list(part.queries))
            route = np.stack([s.proba(x) for s in policy.boundaries], axis=1)
            return route, idk_scores(policy, part, route)

        route, accept = scores(val)
        point, _ = calibrate(target, route, val.quality, rung_costs(val, prices()), accept)
        chosen = replace(policy, thresholds=point.thresholds)
        ath = point.accept_thresholds
        gates = gate_scores(chosen, val, route)
        choice = calibrate_prefix(
            target,
            route,
            point.thresholds,
            val.quality,
            rung_costs(val, prices()),
            {k: rung_costs(val, prices(), output_cap=k) for k in gates},
            accept,
            ath,
            gates,
            answer_tokens(val),
        )
        ks.append(choice.tokens)
        # replay both on the held-out fold
        route, accept = scores(held)
        costs = rung_costs(held, prices())
        full = simulate(route, point.thresholds, held.quality, costs, accept, ath)
        k = choice.tokens
        held_gates = gate_scores(chosen, held, route).get(k, np.full((len(held), 2), np.nan))
        pre = simulate_prefix(
            route,
            point.thresholds,
            held.quality,
            costs,
            rung_costs(held, prices(), output_cap=k) if k else costs,
            accept,
            ath,
            held_gates,
            choice.accept_at,
            choice.escalate_below,
            answer_tokens(held),
            k,
        )
        base = simulate_prefix(
            route,
            point.thresholds,
            held.quality,
            costs,
            costs,
            accept,
            ath,
            np.full((len(held), 2), np.nan),
            (2.0, 2.0),
            (-1.0, -1.0),
            answer_tokens(held),
            0,
        )
        assert np.allclose(base.sim.cost, full.cost) and (base.sim.answered_by == full.answered_by).all()
        for name, value in [
            ("q_full", full.quality),
            ("q_prefix", pre.sim.quality),
            ("c_full", full.cost),
            ("c_prefix", pre.sim.cost),
            ("live_full", base.live),
            ("live_prefix", pre.live),
            ("delay_full", base.delay),
            ("delay_prefix", pre.delay),
        ]:
            rows[name].append(value)
        print(
            f"fold {f}: k={k} quality full {full.quality.mean():.3f} prefix {pre.sim.quality.mean():.3f}; "
            f"USD/1k {full.cost.mean() * 1e3:.4f} vs {pre.sim.cost.mean() * 1e3:.4f}; live "
            f"{base.live.mean():.2f} -> {pre.live.mean():.2f}; delay {base.delay.mean():.0f} -> "
            f"{pre.delay.mean():.0f} tokens",
            flush=True,
        )
    r = {k: np.concatenate(v) for k, v in rows.items()}
    d = r["q_prefix"] - r["q_full"]
    return {
        "rows": int(len(d)),
        "target": TARGET,
        "k": collections.Counter(ks).most_common(1)[0][0],
        "k_per_fold": ks,
        "quality_full": float(r["q_full"].mean()),
        "quality_prefix": float(r["q_prefix"].mean()),
        "quality_delta": float(d.mean()),
        "quality_delta_ci95": float(1.96 * d.std(ddof=1) / np.sqrt(len(d))),
        "cost_delta": float(r["c_prefix"].sum() / r["c_full"].sum() - 1),
        "usd_per_1k_full": float(r["c_full"].mean() * 1e3),
        "usd_per_1k_prefix": float(r["c_prefix"].mean() * 1e3),
        "live_full": float(r["live_full"].mean()),
        "live_prefix": float(r["live_prefix"].mean()),
        "delay_tokens_full": float(r["delay_full"].mean()),
        "delay_tokens_prefix": float(r["delay_prefix"].mean()),
    }


async def closed_loop(url: str, model: str, prompts: list[str], clients: int, duration_s: float) -> list[dict]:
    results, counter = [], iter(range(10**9))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def user() -> None:
            while time.perf_counter() - t0 < duration_s:
                i = next(counter)
                body = {
                    "model": model,
                    "max_tokens": MAX_TOKENS,
                    "temperature": 0,
                    "stream": True,
                    "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
                }
                results.append(await one(client, url + "/v1/chat/completions", body))

        await asyncio.gather(*(user() for _ in range(clients)))
    return results


def p50(xs: list[float]) -> float | None:
    return float(np.percentile(xs, 50)) if xs else None


def summary(results: list[dict], system: str, clients: int) -> dict:
    ok = [r for r in results if r["status"] == 200 and r["ttft_s"] is not None]
    tiers = collections.Counter((r["ladder"] or {}).get("tier") for r in ok)
    decided = collections.Counter(str((r["ladder"] or {}).get("decided_at")) for r in ok)
    return {
        "system": system,
        "clients": clients,
        "requests": len(results),
        "ok": len(ok),
        "ttft_p50_s": p50([r["ttft_s"] for r in ok]),
        "total_p50_s": p50([r["latency_s"] for r in ok]),
        "answered_by": dict(tiers),
        "decided_at": dict(decided),
        "escalations": float(np.mean([(r["ladder"] or {}).get("escalations", 0) for r in ok])) if ok else None,
    }


def served(clients: list[int], duration: float) -> list[dict]:
    outcomes = load()
    # questions the served policy was neither fitted nor calibrated on: the test part of the one split
    # (offline.pipeline.three_way) the bundled policy was made with (a cross-validation fold is not:
    # most of its rows were in the bundled policy's fit or validation parts)
    held = three_way(outcomes, np.zeros(len(outcomes), bool)).test
    prompts = list(held.queries)
    port, tmp = free_port(), Path(tempfile.mkdtemp(prefix="ladder-stream-"))
    proc = start_ladder(ROOT / "configs" / "default.yaml", port, tmp / "serve.log")
    url, rows = f"http://127.0.0.1:{port}", []
    try:
        wait_ready(url + "/health", 900, proc)
        while "Ladder is serving" not in (tmp / "serve.log").read_text():
            if proc.poll() is not None:
                raise RuntimeError(f"ladder serve exited; see {tmp / 'serve.log'}")
            time.sleep(1)
        asyncio.run(closed_loop(url, "ladder", prompts, 2, 20))  # warm-up (every rung's graph)
        for c in clients:
            routed = summary(asyncio.run(closed_loop(url, "ladder", prompts, c, duration)), "routed", c)
            print(json.dumps(routed), flush=True)
            tier = max(routed["answered_by"], key=routed["answered_by"].get)
            pinned = summary(asyncio.run(closed_loop(url, tier, prompts, c, duration)), f"pinned-{tier}", c)
            print(json.dumps(pinned), flush=True)
            rows.append(
                {
                    "clients": c,
                    "routed": routed,
                    "pinned": pinned,
                    "ttft_ratio": routed["ttft_p50_s"] / pinned["ttft_p50_s"],
                }
            )
    finally:
        stop(proc)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--clients", default="1,16")
    ap.add_argument("--offline-only", action="store_true")
    args = ap.parse_args()
    cv = offline()
    print(
        f"\nprefix vs whole answer, {cv['rows']} rows, {FOLDS}-fold CV, target {TARGET}: quality "
        f"{cv['quality_full']:.3f} -> {cv['quality_prefix']:.3f} (delta {cv['quality_delta']:+.3f} "
        f"± {cv['quality_delta_ci95']:.3f}), USD {cv['cost_delta']:+.1%}, k={cv['k']} {cv['k_per_fold']}, live "
        f"{cv['live_full']:.0%} -> {cv['live_prefix']:.0%}, first token after {cv['delay_tokens_full']:.0f} -> "
        f"{cv['delay_tokens_prefix']:.0f} generated tokens",
        flush=True,
    )
    out: dict = {"prefix_vs_full": cv}
    if not args.offline_only:
        rows = served([int(c) for c in args.clients.split(",")], args.duration)
        print("\n| clients | routed TTFT p50 | pinned TTFT p50 | ratio | routed total p50 | answered by |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['clients']} | {r['routed']['ttft_p50_s']:.2f} s | {r['pinned']['ttft_p50_s']:.2f} s "
                f"({r['pinned']['system']}) | {r['ttft_ratio']:.1f}x | {r['routed']['total_p50_s']:.2f} s | "
                f"{r['routed']['answered_by']} |"
            )
        top = next((r for r in rows if r["clients"] == 16), rows[-1])
        out.update(
            ttft_routed_p50_s=top["routed"]["ttft_p50_s"],
            ttft_pinned_p50_s=top["pinned"]["ttft_p50_s"],
            total_p50_s=top["routed"]["total_p50_s"],
            clients=top["clients"],
            served=rows,
            max_tokens=MAX_TOKENS,
            duration_s=args.duration,
        )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "streaming.json"
    previous = json.loads(path.read_text()) if path.exists() and args.offline_only else {}
    path.write_text(json.dumps({**previous, **out}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
