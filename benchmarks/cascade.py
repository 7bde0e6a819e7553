"""The whole ladder on Ladder's own tiers, from committed collected outcomes (issue 7).

    .venv/bin/python benchmarks/cascade.py [--outcomes data/outcomes/mmlu-pro.jsonl ...]

Outcomes come from ``ladder collect`` (every rung answered every query; see data/outcomes/README.md
for the commands). Split by a stable hash of the id: test 20%; the rest is fit (80%) and
validation (20%). Policies are trained on fit, their thresholds chosen on validation, and every
method is then replayed on the held-out test part, side by side:

- always-small / always-medium / always-large; the oracle (cheapest correct rung);
- router only: Ladder's Hybrid-LLM routers (TF-IDF) pick the first rung, no escalation;
- IDK cascade: start at the cheapest rung, escalate when the answer's confidence is low;
- router + IDK: both, as ``ladder serve`` runs a learned policy;
- random at matched cost: a random mix of always-k runs with the cost of router + IDK;
- kNN: the k nearest training queries (TF-IDF cosine) predict each rung's quality; a query goes
  to the cheapest rung predicted good enough (threshold chosen like the others', no escalation);
- AutoMix (its PyPI release, ``automix-llm``, Threshold and POMDP methods) between medium and
  large, on the python_examples verifier's self-verification probability (share of the prompt's
  own ``>>>`` examples the medium answer passes; 0.5 when the code parses but the prompt has none,
  0 when it does not parse) — where every row has that signal (HumanEval);
- the served default policy (the bundled file, not retrained): its realised rung mix on the
  held-out part of the data it was calibrated on, against the interval it prints.

Operating point on validation: the cheapest thresholds whose validation accuracy reaches
always-large's validation accuracy. Cost: USD from the configured per-token prices (prompt
tokens × input price + output tokens × output price, summed over every rung a method calls), and
measured compute = the recorded wall time of every rung called (a cascade runs rungs one after
another, so that is also its latency; decision time, ~1 ms, is left out). Writes
benchmarks/results/cascade.json and cascade_<dataset>.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ladder.cluster.settings import LadderConfig
from ladder.offline.pipeline import rung_costs
from ladder.offline.plots import new_axes, save
from ladder.offline.training import TrainSpec, idk_scores, train_policy
from ladder.outcomes import Outcomes
from ladder.outcomes.io import read_jsonl
from ladder.policies.calibrate import Simulation, simulate, sweep
from ladder.policies.features import FeaturizerKind

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
OUT = ROOT / "data" / "outcomes"
# workload name -> the outcomes files it pools (in this order: the bundled policy's own recipe)
WORKLOADS = {"humaneval": [OUT / "humaneval.jsonl"], "humaneval+gsm8k": [OUT / "humaneval.jsonl", OUT / "gsm8k.jsonl"]}


def usd(part: Outcomes, config: LadderConfig) -> np.ndarray:
    """[n, R] USD per call from the configured prices: the one cost model (``rung_costs``)."""
    prices = {r: (config.tier(r).price.input_per_1m, config.tier(r).price.output_per_1m) for r in part.rungs}
    return np.nan_to_num(rung_costs(part, prices))


def seconds(part: Outcomes, key: str) -> np.ndarray:
    """[n, R] measured seconds per call: ``latency_s`` (the request's wall time) or ``compute_s``
    (its share of the rung's busy time; differs from latency under vLLM's batching). A call that
    failed recorded none: it counts as free."""
    names = [f"{r}/{key}" if f"{r}/{key}" in part.signals else f"{r}/latency_s" for r in part.rungs]
    return np.nan_to_num(np.stack([part.signals[n] for n in names], axis=1))


def interval(x: np.ndarray) -> tuple[float, float]:
    s = 1.96 * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else 0.0
    return float(x.mean() - s), float(x.mean() + s)


def describe(
    name: str, sim: Simulation, c_usd: np.ndarray, c_s: tuple[np.ndarray, np.ndarray], thresholds=None
) -> dict:  # noqa: ANN001
    """``c_s`` = (latency, compute) seconds per call; a cascade's rungs run one after another, so
    its latency is the sum over the rungs it called."""
    spent_s = (c_s[0] * sim.reached).sum(axis=1)
    compute_s = (c_s[1] * sim.reached).sum(axis=1)
    r = sim.reached.shape[1]
    return {
        "method": name,
        "quality": float(sim.quality.mean()),
        "quality_ci95": interval(sim.quality),
        "usd_per_1k": float(sim.cost.mean() * 1000),
        "compute_s": float(compute_s.mean()),
        "mix": (np.bincount(sim.answered_by, minlength=r) / len(sim.answered_by)).tolist(),
        "reach": sim.reached.mean(axis=0).tolist(),
        "escalations": float((sim.reached.sum(axis=1) - 1).mean()),
        "p50_s": float(np.percentile(spent_s, 50)),
        "p95_s": float(np.percentile(spent_s, 95)),
        "thresholds": thresholds,
    }


def fixed(quality: np.ndarray, rung: int, c_usd: np.ndarray) -> Simulation:
    n, r = quality.shape
    reached = np.zeros((n, r), bool)
    reached[:, rung] = True
    return Simulation(np.full(n, rung), reached, quality[:, rung], c_usd[:, rung])


def oracle(quality: np.ndarray, c_usd: np.ndarray) -> Simulation:
    n, r = quality.shape
    best = np.where(quality.max(axis=1) > 0, np.argmax(quality > 0, axis=1), 0)
    reached = np.zeros((n, r), bool)
    reached[np.arange(n), best] = True
    return Simulation(best, reached, quality[np.arange(n), best], c_usd[np.arange(n), best])


def choose(val_points, floor: float):  # noqa: ANN001, ANN201
    """The cheapest validation point reaching the floor; the best-quality one if none does."""
    ok = [p for p, _ in val_points if p.quality >= floor - 1e-12]
    if ok:
        return min(ok, key=lambda p: (p.cost_per_1k, -p.quality))
    return max((p for p, _ in val_points), key=lambda p: (p.quality, -p.cost_per_1k))


FAMILIES = {
    "router": lambda s, a: (s, None),
    # No router: constant scores, so the tuned thresholds start every query at the same rung.
    "IDK cascade": lambda s, a: (np.ones_like(s), a),
    "router + IDK": lambda s, a: (s, a),
}
# Targets for the quality–cost curves: fractions of always-large's validation accuracy; 1.0 is
# the operating point the table reports.
LEVELS = (0.5, 0.7, 0.8, 0.9, 1.0, 1.1)


def concat(sims: list[Simulation]) -> Simulation:
    return Simulation(
        *(np.concatenate([getattr(x, f) for x in sims]) for f in ("answered_by", "reached", "quality", "cost"))
    )


def run(name: str, paths: list[Path], config: LadderConfig, folds: int, results: Path) -> dict:
    """Cross-validated: each of ``folds`` stable hash folds is held out once; policies train on the
    rest and their thresholds are chosen on the rest's out-of-fold scores; results are pooled over
    all held-out rows, so every collected query is a test query exactly once."""
    o = read_paths(paths)
    r = len(o.rungs)
    fold = np.array([_fold(i, folds) for i in o.ids])
    pooled: dict[tuple[str, float], list[Simulation]] = {}
    parts_t, chosen = [], {}
    for k in range(folds):
        rest, test = o.take(fold != k), o.take(fold == k)
        # Thresholds are chosen on out-of-fold scores of the whole training part (inner folds),
        # not on a 20% validation slice: with ~150 training rows a slice of 30 is too noisy.
        s_v, a_v = _out_of_fold(rest, folds - 1)
        u_v, q_v = usd(rest, config), rest.quality
        policy = train_policy(rest, TrainSpec(FeaturizerKind.TFIDF, idk=True))
        s_t = policy.scores(list(test.queries))
        a_t, u_t, q_t = idk_scores(policy, test, s_t), usd(test, config), test.quality
        parts_t.append(test)
        floor = float(q_v[:, -1].mean())
        pooled.setdefault(("kNN", 1.0), []).append(knn_method(rest, test, u_v, usd(test, config), floor, folds - 1))
        if verifier_column(rest) is not None and verifier_column(test) is not None:
            for method_name, method in automix_methods().items():
                pooled.setdefault((method_name, 1.0), []).append(
                    automix_sim(rest, test, u_v, usd(test, config), method)
                )
        for family_name, family in FAMILIES.items():
            points = sweep(*_args(family, s_v, a_v, q_v, u_v))
            for level in LEVELS:
                point = choose(points, floor * level)
                rs_t, acc_t = family(s_t, a_t)
                sim = simulate(rs_t, point.thresholds, q_t, u_t, acc_t, point.accept_thresholds)
                pooled.setdefault((family_name, level), []).append(sim)
                if level == 1.0:
                    chosen.setdefault(family_name, []).append(
                        {"router": point.thresholds, "idk": point.accept_thresholds}
                    )
    test = _merge(parts_t)
    u, t, q = usd(test, config), (seconds(test, "latency_s"), seconds(test, "compute_s")), test.quality
    rows = [describe(f"always-{rung}", fixed(q, j, u), u, t) for j, rung in enumerate(o.rungs)]
    curves = {}
    for family in FAMILIES:
        rows.append(describe(family, concat(pooled[(family, 1.0)]), u, t, chosen[family]))
        pts = [concat(pooled[(family, lv)]) for lv in LEVELS]
        curves[family] = (np.array([x.cost.mean() * 1000 for x in pts]), np.array([x.quality.mean() for x in pts]))
    # Random at matched cost: mix always-k runs to spend what router + IDK spends.
    target_cost = next(x for x in rows if x["method"] == "router + IDK")["usd_per_1k"]
    always_cost = np.array([x["usd_per_1k"] for x in rows[:r]])
    always_q = np.array([x["quality"] for x in rows[:r]])
    rows.append(
        {
            "method": "random at matched cost",
            "quality": float(np.interp(target_cost, always_cost, always_q)),
            "usd_per_1k": target_cost,
            "note": "expected accuracy of a random mix of adjacent always-k runs",
        }
    )
    rows.append(describe("kNN", concat(pooled[("kNN", 1.0)]), u, t))
    for method_name in automix_methods():
        if (method_name, 1.0) in pooled:
            rows.append(describe(method_name, concat(pooled[(method_name, 1.0)]), u, t))
    rows.append(describe("oracle", oracle(q, u), u, t))
    large = rows[r - 1]
    for x in rows:
        x["usd_vs_large"] = x["usd_per_1k"] / large["usd_per_1k"]
        if "compute_s" in x:
            x["compute_vs_large"] = x["compute_s"] / large["compute_s"]
    best = next(x for x in rows if x["method"] == "router + IDK")
    target = {
        "large_quality_ci95": large["quality_ci95"],
        "router_idk_quality": best["quality"],
        "router_idk_usd_vs_large": best["usd_vs_large"],
        "met": bool(best["quality"] >= large["quality_ci95"][0] and best["usd_vs_large"] <= 0.5),
    }
    lo = large["quality_ci95"][0]
    match = {"usd": best["usd_vs_large"], "compute": best.get("compute_vs_large")} if best["quality"] >= lo else None
    plot(name, rows, curves, large["usd_per_1k"], r, len(test), results)
    return {
        "workload": name,
        "outcomes": [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in paths],
        "rungs": list(o.rungs),
        "rows": len(test),
        "folds": folds,
        "levels": list(LEVELS),
        "methods": rows,
        # router + IDK at the operating point chosen on training folds only (level 1.0: always-large's
        # training quality); None when its cross-validated quality is outside large's 95% interval
        "cost_to_match_large": match,
        "curves": {
            k: {"usd_vs_large": (c / large["usd_per_1k"]).tolist(), "quality": qs.tolist()}
            for k, (c, qs) in curves.items()
        },
        "target": target,
    }


def read_paths(paths: list[Path]) -> Outcomes:
    import tempfile

    if len(paths) == 1:
        return read_jsonl(paths[0])
    pooled = Path(tempfile.mkdtemp(prefix="ladder-cascade-")) / "pooled.jsonl"
    pooled.write_text("".join(p.read_text() for p in paths))
    return read_jsonl(pooled)


def knn_method(
    rest: Outcomes, test: Outcomes, u_rest: np.ndarray, u_test: np.ndarray, floor: float, inner_folds: int
) -> Simulation:
    """kNN quality predictions per rung; the cheapest rung predicted at least ``tau`` answers.
    ``k`` (from ``offline.evaluation.KNN_KS``) and ``tau`` are chosen together on out-of-fold
    predictions of the training part (the cheapest reaching the floor), as the other methods'
    thresholds are: a tuned kNN, not one fixed k."""
    from ladder.offline.evaluation import KNN_KS, knn_scores
    from ladder.policies.features import make_featurizer

    def predict(train: Outcomes, other: Outcomes, k: int) -> np.ndarray:
        f = make_featurizer(FeaturizerKind.TFIDF)
        f.fit(list(train.queries))
        x, y = f.transform(list(train.queries)), f.transform(list(other.queries))
        kk = min(k, len(train))
        return np.stack([knn_scores(x, train.quality[:, j], y, kk) for j in range(len(train.rungs))], axis=1)

    inner = np.array([_fold(i, inner_folds, "cascade-inner") for i in rest.ids])
    start_of = (
        lambda pred, tau: np.where(  # noqa: E731
            (pred[:, :-1] >= tau).any(axis=1),
            np.argmax(pred[:, :-1] >= tau, axis=1),
            pred.shape[1] - 1,
        )
    )
    best_k, best_tau, best = KNN_KS[0], 2.0, None
    for k in KNN_KS:
        pred_rest = np.zeros(rest.quality.shape)
        for j in range(inner_folds):
            held = inner == j
            if held.any():
                pred_rest[held] = predict(rest.take(~held), rest.take(held), k)
        for tau in np.linspace(0, 1, 41):
            sim = fixed_start(rest.quality, start_of(pred_rest, tau), u_rest)
            key = (
                sim.quality.mean() >= floor - 1e-12,
                -sim.cost.mean() if sim.quality.mean() >= floor - 1e-12 else sim.quality.mean(),
            )
            if best is None or key > best:
                best_k, best_tau, best = k, tau, key
    return fixed_start(test.quality, start_of(predict(rest, test, best_k), best_tau), u_test)


def fixed_start(quality: np.ndarray, start: np.ndarray, c_usd: np.ndarray) -> Simulation:
    n, r = quality.shape
    reached = np.zeros((n, r), bool)
    reached[np.arange(n), start] = True
    return Simulation(start, reached, quality[np.arange(n), start], c_usd[np.arange(n), start])


def verifier_column(part: Outcomes) -> np.ndarray | None:
    """The medium answer's self-verification probability from the python_examples verifier."""
    keys = [f"{part.rungs[1]}/{k}" for k in ("examples", "examples_passed", "code_parses")]
    if not all(k in part.signals for k in keys):
        return None
    examples, passed, parses = (part.signals[k] for k in keys)
    if np.isnan(parses).any():
        return None
    return np.where(np.nan_to_num(examples) > 0, np.nan_to_num(passed), 0.5 * parses)


def automix_methods() -> dict:
    from automix import POMDPSimple, Threshold

    return {"AutoMix (threshold)": lambda: Threshold(num_bins=20), "AutoMix (POMDP)": lambda: POMDPSimple(num_bins=10)}


def automix_sim(rest: Outcomes, test: Outcomes, u_rest: np.ndarray, u_test: np.ndarray, method) -> Simulation:  # noqa: ANN001
    """AutoMix as released (two models: medium -> large), trained on the training part with its
    own objective (incremental benefit per cost), then run on the held-out part."""
    import pandas as pd
    from automix import Automix

    def frame(part: Outcomes) -> pd.DataFrame:
        slm, llm = part.quality[:, 1], part.quality[:, 2]
        category = np.where(slm >= 0.5, "GOOD", np.where(llm >= 0.5, "NEEDY", "HOPELESS"))
        return pd.DataFrame({"slm": slm, "llm": llm, "p_ver": verifier_column(part), "category": category})

    am = Automix(
        method(),
        slm_column="slm",
        llm_column="llm",
        verifier_column="p_ver",
        costs=[float(u_rest[:, 1].mean()), float(u_rest[:, 2].mean())],
        verifier_cost=0,
    )
    am.train(frame(rest))
    retry = np.asarray(am.evaluate(frame(test), return_dict=True, return_decisions=True)["route_to_llm"], bool)
    n, r = test.quality.shape
    reached = np.zeros((n, r), bool)
    reached[:, 1], reached[:, 2] = True, retry
    answered = np.where(retry, 2, 1)
    return Simulation(answered, reached, test.quality[np.arange(n), answered], u_test[:, 1] + retry * u_test[:, 2])


def served_policy_check() -> dict:
    """The bundled policy on the held-out 20% of the file it was calibrated from (HumanEval +
    GSM8K): per rung the realised share of queries reaching it, against the printed interval."""
    from ladder.cluster.settings import BUNDLED_POLICY
    from ladder.offline.held_out import held_out_check
    from ladder.policies.store import load_policy

    return held_out_check(load_policy(BUNDLED_POLICY), read_paths(WORKLOADS["humaneval+gsm8k"]))


def _fold(i: str, folds: int, salt: str = "cascade-fold") -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(f"{salt}:{i}".encode(), digest_size=4).digest(), "big") % folds


def _out_of_fold(part: Outcomes, folds: int) -> tuple[np.ndarray, np.ndarray]:
    """Router and IDK scores of every row of ``part`` from policies trained without it."""
    inner = np.array([_fold(i, folds, "cascade-inner") for i in part.ids])
    r = len(part.rungs)
    s, a = np.zeros((len(part), r - 1)), np.ones((len(part), r - 1))
    for j in range(folds):
        held = inner == j
        if not held.any():
            continue
        policy = train_policy(part.take(~held), TrainSpec(FeaturizerKind.TFIDF, idk=True))
        piece = part.take(held)
        s[held] = policy.scores(list(piece.queries))
        a[held] = idk_scores(policy, piece, s[held])
    return s, a


def _args(family, s, a, q, u):  # noqa: ANN001, ANN202
    rs, acc = family(s, a)
    return rs, q, u, acc


def _merge(parts: list[Outcomes]) -> Outcomes:
    from dataclasses import replace

    first = parts[0]
    cat = lambda f: tuple(x for p in parts for x in getattr(p, f))  # noqa: E731
    return replace(
        first,
        ids=cat("ids"),
        queries=cat("queries"),
        quality=np.concatenate([p.quality for p in parts]),
        tokens=np.concatenate([p.tokens for p in parts]),
        responses={k: tuple(x for p in parts for x in p.responses[k]) for k in first.responses},
        signals={k: np.concatenate([p.signals[k] for p in parts]) for k in first.signals},
        groups=cat("groups"),
        logprobs={k: tuple(x for p in parts for x in p.logprobs[k]) for k in first.logprobs},
    )


def plot(name: str, rows: list[dict], curves: dict, large_usd: float, r: int, n: int, results: Path) -> None:
    fig, ax = new_axes()
    for method, (xs, ys) in curves.items():
        ax.plot(xs / large_usd, ys, "-", marker=".", label=f"{method} (targets {LEVELS[0]}–{LEVELS[-1]} × large)")
    for x in rows:
        style = {"oracle": "*", "random at matched cost": "x"}.get(x["method"], "o")
        ax.scatter([x["usd_vs_large"]], [x["quality"]], marker=style, s=60, zorder=5)
        ax.annotate(
            x["method"], (x["usd_vs_large"], x["quality"]), textcoords="offset points", xytext=(4, -10), fontsize=7
        )
    lo, hi = rows[r - 1]["quality_ci95"]
    ax.axhspan(lo, hi, color="grey", alpha=0.15, label="always-large 95% interval")
    save(
        fig,
        ax,
        "USD per query relative to always-large",
        f"cascade on Ladder's tiers: {name} (test n={n})",
        results / f"cascade_{name}.png",
        legend_size=7,
    )


def _num(x: dict, key: str, fmt: str) -> str:
    return format(x[key], fmt) if key in x else "-"


def _line(x: dict) -> str:
    ci = x.get("quality_ci95")
    ci_text = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-"
    mix = "/".join(f"{m:.0%}" for m in x["mix"]) if "mix" in x else "-"
    return (
        f"{x['method']:<24}{x['quality']:>7.3f}{ci_text:>16}{x['usd_per_1k']:>10.4f}{x['usd_vs_large']:>9.1%}"
        f"{_num(x, 'compute_s', '.2f'):>10}{mix:>16}{_num(x, 'escalations', '.2f'):>6}"
        f"{_num(x, 'p50_s', '.1f'):>7}{_num(x, 'p95_s', '.1f'):>7}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--outcomes",
        type=Path,
        action="append",
        help="collected outcomes JSONL, one workload each (repeatable; default: humaneval and humaneval+gsm8k)",
    )
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--results", type=Path, default=RESULTS, help="where to write cascade.json and the PNGs")
    args = ap.parse_args()
    config = LadderConfig()
    workloads = {Path(p).stem: [Path(p).resolve()] for p in args.outcomes} if args.outcomes else WORKLOADS
    report = [run(name, paths, config, args.folds, args.results) for name, paths in workloads.items()]
    for rep in report:
        print(
            f"\n== {rep['workload']}  rungs {' > '.join(rep['rungs'])}  {rep['rows']} held-out rows "
            f"({rep['folds']}-fold cross-validation)"
        )
        print(
            f"  {'method':<24}{'acc':>7}{'95% CI':>16}{'USD/1k':>10}{'vs large':>9}{'compute s':>10}"
            f"{'mix S/M/L':>16}{'esc':>6}{'p50 s':>7}{'p95 s':>7}"
        )
        for x in rep["methods"]:
            print("  " + _line(x))
        for method, c in rep["curves"].items():
            pts = ", ".join(f"{x:.0%}:{y:.3f}" for x, y in zip(c["usd_vs_large"], c["quality"]))
            print(f"  curve {method:<14} (cost vs large: accuracy) {pts}")
        t = rep["target"]
        print(
            f"  target (router + IDK within always-large's 95% interval at <= 50% of its cost): "
            f"{'MET' if t['met'] else 'missed'} — acc {t['router_idk_quality']:.3f} vs interval "
            f"[{t['large_quality_ci95'][0]:.3f}, {t['large_quality_ci95'][1]:.3f}], cost {t['router_idk_usd_vs_large']:.1%}"
        )
        m = rep["cost_to_match_large"]
        print(
            "  cost to match always-large (operating point chosen on training folds): "
            + (f"USD {m['usd']:.1%}, compute {m['compute']:.1%}" if m else "not matched (outside its 95% interval)")
        )
    if not args.outcomes:
        check = served_policy_check()
        report[-1]["served_policy_check"] = check
        print(
            f"\n  served default policy {check['policy']} ({check['target']}) on {check['held_out_rows']} held-out "
            f"rows: reach {', '.join(f'{k} {v:.2f} in [{lo:.2f}, {hi:.2f}]' for (k, v), (lo, hi) in zip(check['reach'].items(), check['reach_ci'].values()))}"
            f" -> {'inside' if check['all_inside'] else 'OUTSIDE'}"
        )
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "cascade.json").write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
