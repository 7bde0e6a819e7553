"""Three-rung routing on public multi-model outcomes, against kNN, random and the oracle.

    .venv/bin/python benchmarks/ladders.py --data ../shared/data [--cost params|params_x_tokens]

Ladders: ZeroEval GSM8K gemma-2 2B → 9B → 27B; MMLU-Pro Llama-2 7B → 13B → 70B. Split by a
stable hash of the question id: test 20%; the rest is fit (80%) and validation (20%) — every
choice (kNN's k, calibrated thresholds) is made on fit/validation only. Cost per query ∝ the
parameter count of every rung a method calls (a cascade pays for each rung it tries);
``params_x_tokens`` multiplies by the recorded output length. The datasets carry no
log-probabilities, so the cascade's escalation signal is the answer's length and the router's
prior. Writes benchmarks/results/ladders.json and ladders_<name>.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from harness.frontier import aiq, cell_ceiling, cost_to_reach, frontier

from ladder.offline.evaluation import knn_scores
from ladder.offline.featcache import featurize
from ladder.offline.pipeline import three_way
from ladder.offline.plots import new_axes, save
from ladder.offline.training import TrainSpec, train_policy
from ladder.outcomes.io import load_model_ladder
from ladder.policies.calibrate import Target, calibrate, simulate, sweep
from ladder.policies.features import FeaturizerKind, MiniLMFeaturizer
from ladder.policies.labels import LabelScheme, boundary_labels
from ladder.policies.linear import fit_logistic

RESULTS = Path(__file__).parent / "results"
LADDERS = {  # name: (file, models cheapest first, parameters in billions)
    "gemma2-gsm8k": (
        "zeroeval_gsm/outcomes.parquet",
        ["gemma-2-2b-it", "gemma-2-9b-it", "gemma-2-27b-it@together"],
        [2.6, 9.2, 27.2],
    ),
    "llama2-mmlupro": (
        "mmlu_pro/outcomes.parquet",
        ["Llama-2-7b-hf", "Llama-2-13b-hf", "Llama-2-70b-hf"],
        [7.0, 13.0, 70.0],
    ),
}
KS = (5, 10, 25, 50, 100)


def labels(quality: np.ndarray) -> np.ndarray:
    return np.stack([boundary_labels(quality, b, LabelScheme.DETERMINISTIC) for b in range(quality.shape[1] - 1)], 1)


def cloud(route, quality, costs, accept=None):  # noqa: ANN001, ANN201
    pts = [p for p, _ in sweep(route, quality, costs, accept, per_dim=41 if accept is None else 15)]
    return np.array([p.cost_per_1k / 1000 for p in pts]), np.array([p.quality for p in pts])


def cascade_features(tokens_b: np.ndarray, prior: np.ndarray) -> np.ndarray:
    p = np.clip(prior, 1e-4, 1 - 1e-4)
    return np.stack([np.log1p(tokens_b), p, np.log(p / (1 - p))], axis=1)


def cross_fitted(x, y: np.ndarray, folds: int = 5) -> np.ndarray:  # noqa: ANN001
    out, fold = np.zeros(len(y)), np.arange(len(y)) % folds
    for k in range(folds):
        out[fold == k] = fit_logistic(x[fold != k], y[fold != k]).proba(x[fold == k])
    return out


def run_ladder(name: str, data: Path, cost_model: str) -> dict:
    file, models, params = LADDERS[name]
    o = load_model_ladder(data / file, models, ["small", "medium", "large"])
    parts = three_way(o, np.zeros(len(o), bool))
    fit, val, test = parts.fit, parts.validation, parts.test

    def costs(part) -> np.ndarray:  # noqa: ANN001
        c = np.tile(np.array(params), (len(part), 1))
        return c * part.tokens if cost_model == "params_x_tokens" else c

    c_test = costs(test)
    q = test.quality
    large_cost = c_test[:, 2].mean()
    methods: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    always = [(c_test[:, j].mean(), q[:, j].mean()) for j in range(3)]
    methods["random (mix of always-k)"] = (np.array([a[0] for a in always]), np.array([a[1] for a in always]))
    for feat in (FeaturizerKind.TFIDF, FeaturizerKind.MINILM):
        f = MiniLMFeaturizer() if feat is FeaturizerKind.MINILM else None
        policy = train_policy(fit, TrainSpec(feat, idk=False), f, featurize(f, list(fit.queries)) if f else None)
        x = lambda part: featurize(policy.featurizer, list(part.queries))  # noqa: E731
        x_fit, x_val, x_test = x(fit), x(val), x(test)
        s_test = np.stack([b.proba(x_test) for b in policy.boundaries], 1)
        methods[f"router-{feat.value}"] = cloud(s_test, q, c_test)
        # kNN in the same feature space, k chosen on validation by AIQ.
        y_fit = labels(fit.quality)
        best = max(
            KS,
            key=lambda k: aiq(
                *frontier(
                    *cloud(
                        np.stack([knn_scores(x_fit, y_fit[:, b], x_val, k) for b in range(2)], 1),
                        val.quality,
                        costs(val),
                    )
                ),
                costs(val)[:, 0].mean(),
                costs(val)[:, 2].mean(),
            ),
        )
        methods[f"knn-{feat.value} (k={best})"] = cloud(
            np.stack([knn_scores(x_fit, y_fit[:, b], x_test, best) for b in range(2)], 1), q, c_test
        )
        # Cascade: per non-top rung, P(accept) from the answer's length and the router's prior.
        s_fit = np.stack([cross_fitted(x_fit, y_fit[:, b]) for b in range(2)], 1)
        idk = [
            fit_logistic(cascade_features(fit.tokens[:, b], s_fit[:, b]), y_fit[:, b], 1.0, standardize=True)
            for b in range(2)
        ]
        accept = lambda part, s: np.stack(
            [
                idk[b].proba(cascade_features(part.tokens[:, b], s[:, b]))  # noqa: E731
                for b in range(2)
            ],
            1,
        )
        methods[f"router+cascade-{feat.value}"] = cloud(s_test, q, c_test, accept(test, s_test))
        if feat is FeaturizerKind.TFIDF:
            s_val = np.stack([b.proba(x_val) for b in policy.boundaries], 1)
            # Calibration to a rung mix, chosen on validation, checked on test.
            point, _ = calibrate(Target({2: 0.2}), s_val, val.quality, costs(val), n_future=len(test))
            realized = simulate(s_test, point.thresholds, q, c_test)
            calibration = {
                "target": "<= 20% of queries reach the largest rung",
                "predicted_reach": point.reach[2],
                "interval": point.reach_ci[2],
                "realized_reach": float(realized.reached[:, 2].mean()),
                "met": bool(realized.reached[:, 2].mean() <= 0.2),
                "test_quality": float(realized.quality.mean()),
                "test_cost_vs_large": float(realized.cost.mean() / large_cost),
            }
    oracle_rung = np.where(q.any(axis=1), np.argmax(q > 0, axis=1), 0)
    oracle = (np.array([c_test[np.arange(len(q)), oracle_rung].mean()]), np.array([q.max(axis=1).mean()]))
    methods["oracle"] = oracle
    methods.update(ceilings(test, c_test))
    lo, hi = always[0][0], always[2][0]
    rows = []
    for m, (cs, qs) in methods.items():
        xs, ys = frontier(cs, qs)
        if m.startswith(("random", "ceiling")):  # straight lines between points (mixing)
            area = float(
                np.trapezoid(np.interp(np.linspace(lo, hi, 1001), xs, ys), np.linspace(lo, hi, 1001)) / (hi - lo)
            )
        else:
            area = aiq(xs, ys, lo, hi)
        if m.startswith("random"):
            reach = hi
        elif m.startswith("ceiling"):  # mixing within a cell: linear between hull points
            reach = float(np.interp(always[2][1], ys, xs)) if ys.max() >= always[2][1] - 1e-9 else None
        else:
            reach = cost_to_reach(xs, ys, always[2][1])
        rows.append(
            {
                "method": m,
                "aiq": area,
                "best_quality": float(ys.max()),
                "cost_to_match_large": None if reach is None else reach / large_cost,
                "_xs": xs,
                "_ys": ys,
            }
        )
    plot(name, rows, always, large_cost)
    return {
        "ladder": name,
        "models": models,
        "params_b": params,
        "cost_model": cost_model,
        "rows_fit": len(fit),
        "rows_validation": len(val),
        "rows_test": len(test),
        "always": [{"rung": r, "quality": a[1], "cost_vs_large": a[0] / large_cost} for r, a in zip(models, always)],
        "methods": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
        "calibration": calibration,
    }


def ceilings(test, c_test: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:  # noqa: ANN001
    """Upper bounds for any policy limited to what it can observe, tuned on the TEST outcomes
    themselves (optimistic by construction; not methods, so not in the targets). ``category``: a
    pre-generation router that knows each query's subject and the true accuracy of every rung per
    subject. ``answers``: a cascade that runs the two cheaper rungs, sees whether each one's answer
    parsed and whether they agree, and per cell accepts one of them or pays for the largest."""
    q, out = test.quality, {}
    cats = np.array(test.groups) if test.groups is not None else np.zeros(len(test), int).astype(str)
    out["ceiling: subject-aware router"] = cell_ceiling(cats, q, c_test)
    small, medium = test.rungs[0], test.rungs[1]
    if small in test.responses and medium in test.responses:
        a, b = np.array(test.response(small)), np.array(test.response(medium))
        cells = np.char.add(
            np.char.add(cats, "|"),
            ((a != "").astype(int) * 4 + (b != "").astype(int) * 2 + (a == b).astype(int)).astype(str),
        )
        base = c_test[:, 0] + c_test[:, 1]
        out["ceiling: subject + both cheaper answers"] = cell_ceiling(
            cells, q, np.stack([base, base, base + c_test[:, 2]], 1)
        )
    return out


def plot(name: str, rows: list[dict], always, large_cost: float) -> None:  # noqa: ANN001
    fig, ax = new_axes()
    for r in rows:
        style = ":" if r["method"].startswith("random") else "--" if r["method"].startswith("ceiling") else "-"
        marker = "*" if r["method"] == "oracle" else None
        ax.plot(
            r["_xs"] / large_cost,
            r["_ys"],
            style,
            marker=marker,
            ms=12,
            drawstyle="steps-post" if style == "-" else None,
            label=f"{r['method']} (AIQ {r['aiq']:.3f})",
        )
    for label, (c, qq) in zip(("small", "medium", "large"), always):
        ax.scatter([c / large_cost], [qq], color="k", zorder=5)
        ax.annotate(f"always-{label}", (c / large_cost, qq), textcoords="offset points", xytext=(4, -12), fontsize=8)
    save(fig, ax, "cost per query relative to always-large", name, RESULTS / f"ladders_{name}.png", legend_size=7)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--cost", choices=["params", "params_x_tokens"], default="params")
    args = ap.parse_args()
    report = [run_ladder(name, args.data, args.cost) for name in LADDERS]
    for r in report:
        print(f"\n== {r['ladder']} ({' > '.join(r['models'])}), test n={r['rows_test']}, cost = {r['cost_model']}")
        for a in r["always"]:
            print(f"  always {a['rung']:<26} acc {a['quality']:.3f}  cost {a['cost_vs_large']:.3f}")
        print(f"  {'method':<28}{'AIQ':>7}{'best acc':>10}{'cost to match large':>22}")
        for m in r["methods"]:
            c = m["cost_to_match_large"]
            print(
                f"  {m['method']:<28}{m['aiq']:>7.3f}{m['best_quality']:>10.3f}{('never' if c is None else f'{c:.1%}'):>22}"
            )
        cal = r["calibration"]
        print(
            f"  calibration {cal['target']}: predicted {cal['predicted_reach']:.3f} {tuple(round(x, 3) for x in cal['interval'])}, "
            f"realized {cal['realized_reach']:.3f} -> {'met' if cal['met'] else 'MISSED'}; test acc {cal['test_quality']:.3f} "
            f"at {cal['test_cost_vs_large']:.1%} of always-large cost"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ladders.json").write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
