"""Routing on RouteLLM's MMLU and GSM8K outcomes: every method side by side, one run.

    .venv/bin/python benchmarks/routing.py --data ../shared/data [--splits 20]

Per benchmark: 80/20 split by a stable hash of the prompt (contaminated prompts kept out of
test); random, always-weak, always-strong, oracle, kNN (MiniLM, k tuned on train), Ladder's
router with hashed TF-IDF and with MiniLM features, and (GSM8K) router + IDK on the weak model's
response. Then calibration to "≤ 30% of queries to the strong model" over random
validation/test re-splits of the held-out part, and the deployed policy's decision latency.
Writes benchmarks/results/routing.json and routing_<bench>.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ladder.offline.evaluation import compare, plot, table, tuned_knn
from ladder.offline.featcache import featurize
from ladder.offline.pipeline import ROUTELLM_PRICES, load_outcomes, rung_costs, split
from ladder.offline.training import TrainSpec, idk_scores, train_policy
from ladder.policies.calibrate import Target, calibrate, simulate
from ladder.policies.features import FeaturizerKind, MiniLMFeaturizer
from ladder.types import Query

RESULTS = Path(__file__).parent / "results"


def methods(bench: str, data: Path) -> dict:
    outcomes, contaminated = load_outcomes(f"routellm:{bench}", data)
    parts = split(outcomes, contaminated)
    train, test = parts.train, parts.test
    q = test.quality
    minilm = MiniLMFeaturizer()
    e_train = featurize(minilm, list(train.queries))
    e_test = featurize(minilm, list(test.queries))
    tfidf_policy = train_policy(train, TrainSpec(FeaturizerKind.TFIDF, idk=False))
    minilm_policy = train_policy(train, TrainSpec(FeaturizerKind.MINILM, idk=True), minilm, e_train)
    needs = {
        "router-tfidf": 1 - tfidf_policy.scores(list(test.queries))[:, 0],
        "router-minilm": 1 - minilm_policy.boundaries[0].proba(e_test),
    }
    knn_need, k = tuned_knn(e_train, train.quality, e_test)
    needs[f"knn-minilm (k={k})"] = knn_need
    accept = None
    if minilm_policy.idk:
        prior = minilm_policy.boundaries[0].proba(e_test)[:, None]
        accept = idk_scores(minilm_policy, test, prior)
        needs["router+idk"] = 1 - accept[:, 0]
    curves = compare(q, needs)
    png = plot(
        curves,
        q,
        f"RouteLLM {bench}: weak=Mixtral-8x7B, strong=GPT-4 (test n={len(test)})",
        RESULTS / f"routing_{bench}.png",
    )
    headline = "router+idk" if accept is not None else "router-tfidf"
    return {
        "bench": bench,
        "train": len(train),
        "test": len(test),
        "weak_acc": float(q[:, 0].mean()),
        "strong_acc": float(q[:, 1].mean()),
        "table": table(curves, q),
        "plot": str(png),
        "headline": headline,
        "_test": test,
        "_needs": needs,
        "_policy": tfidf_policy,
    }


def calibration_trials(test, need: np.ndarray, splits: int, cap: float = 0.30) -> dict:
    """Calibrate on a random half of the held-out rows, check on the other half, ``splits`` times."""
    rng = np.random.default_rng(0)
    scores = (1 - need)[:, None]  # P(weak is good enough)
    costs = rung_costs(test, ROUTELLM_PRICES)
    met = covered = 0
    trials = []
    for _ in tqdm(range(splits), desc="calibration re-splits", leave=False):
        val = rng.random(len(need)) < 0.5
        te = ~val
        point, _ = calibrate(
            Target(max_fraction={1: cap}), scores[val], test.quality[val], costs[val], n_future=int(te.sum())
        )
        sim = simulate(scores[te], point.thresholds, test.quality[te], costs[te])
        realized = float(sim.reached[:, 1].mean())
        lo, hi = point.reach_ci[1]
        met += realized <= cap
        covered += lo <= realized <= hi
        trials.append(
            {
                "predicted": point.reach[1],
                "interval": [lo, hi],
                "realized": realized,
                "val_quality": point.quality,
                "test_quality": float(sim.quality.mean()),
            }
        )
    return {
        "target": f"<= {cap:.0%} to strong",
        "splits": splits,
        "met": met / splits,
        "interval_covers": covered / splits,
        "trials": trials,
    }


def _timed(fn, batches: list) -> list[float]:  # noqa: ANN001
    out = []
    for b in batches:
        t0 = time.perf_counter()
        fn(b)
        out.append(time.perf_counter() - t0)
    return out


def _latency_row(single: list[float], batch: list[float]) -> dict:
    return {
        "single_p50_ms": 1e3 * float(np.percentile(single, 50)),
        "single_p99_ms": 1e3 * float(np.percentile(single, 99)),
        "batch64_p50_ms": 1e3 * float(np.percentile(batch, 50)),
        "batch64_p99_ms": 1e3 * float(np.percentile(batch, 99)),
    }


def latency(policy, texts: list[str]) -> dict:  # noqa: ANN001
    """Decision latency of the deployed TF-IDF policy, and of the MiniLM featurizer alone."""
    batches = [texts[i : i + 64] for i in range(0, 64 * 20, 64)]
    out = {
        "tfidf": _latency_row(_timed(lambda t: policy.route(Query.of(t)), texts[:300]), _timed(policy.scores, batches))
    }
    minilm = MiniLMFeaturizer()
    minilm.transform(["warm up"])
    out["minilm"] = _latency_row(
        _timed(lambda t: minilm.transform([t]), texts[:100]), _timed(minilm.transform, batches[:5])
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--splits", type=int, default=20)
    args = ap.parse_args()
    report = {}
    for bench in ("mmlu", "gsm8k"):
        res = methods(bench, args.data)
        test, needs = res.pop("_test"), res.pop("_needs")
        policy = res.pop("_policy")
        res["calibration"] = calibration_trials(test, needs[res["headline"]], args.splits)
        if bench == "mmlu":
            res["decision_latency"] = latency(policy, list(test.queries))
        report[bench] = res
        print(
            f"\n== {bench}: train {res['train']}, test {res['test']}, weak {res['weak_acc']:.3f}, "
            f"strong {res['strong_acc']:.3f}"
        )
        print(f"{'method':<24}{'APGR':>8}{'CPT50':>8}{'CPT80':>8}{'acc@30%':>9}")
        for row in res["table"]:
            print(
                f"{row['method']:<24}{row['apgr']:>8.3f}{row['cpt50']:>8.3f}{row['cpt80']:>8.3f}"
                f"{row['quality_at_30']:>9.3f}"
            )
        cal = res["calibration"]
        print(
            f"calibration ({res['headline']}, {cal['target']}): met in {cal['met']:.0%} of {cal['splits']} "
            f"re-splits, interval covers realized rate in {cal['interval_covers']:.0%}"
        )
        if "decision_latency" in res:
            for name, lat in res["decision_latency"].items():
                print(f"decision latency {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in lat.items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "routing.json").write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
