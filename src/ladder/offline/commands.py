"""The bodies of ``ladder train``, ``ladder calibrate`` and ``ladder eval``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ladder.errors import OutcomesError
from ladder.offline.evaluation import compare, plot, table, tuned_knn
from ladder.offline.featcache import featurize
from ladder.offline.pipeline import (
    answer_tokens,
    load_outcomes,
    parse_prices,
    parse_target,
    rung_costs,
    split,
    three_way,
)
from ladder.offline.training import TrainSpec, gate_scores, idk_scores, train_policy
from ladder.outcomes.schema import stable_hash
from ladder.policies.answer_cost import AnswerCost
from ladder.policies.calibrate import calibrate
from ladder.policies.features import FeaturizerKind, MiniLMFeaturizer, make_featurizer
from ladder.policies.hybrid import HybridRouterPolicy
from ladder.policies.prefix import calibrate_prefix
from ladder.policies.store import load_policy, save_policy


def _scores(policy: HybridRouterPolicy, outcomes) -> tuple[np.ndarray, np.ndarray | None]:  # noqa: ANN001
    x = featurize(policy.featurizer, list(outcomes.queries))
    route = np.stack([s.proba(x) for s in policy.boundaries], axis=1)
    return route, idk_scores(policy, outcomes, route)


def _savings(policy: HybridRouterPolicy, outcomes, prices: dict) -> np.ndarray | None:  # noqa: ANN001
    """[n, R-1] each row's predicted saving at ``prices`` (None: the policy has no length model)."""
    if policy.cost is None:
        return None
    priced = AnswerCost(policy.cost.tokens, tuple(prices[r] for r in policy.rungs))
    return priced.savings(featurize(policy.featurizer, list(outcomes.queries)), list(outcomes.queries))


def train(source: str, data: Path | None, spec: TrainSpec, out: Path, all_rows: bool = False) -> dict:
    """Fit on the fit part (64%: validation and test parts held back), or on every row."""
    outcomes, contaminated = load_outcomes(source, data)
    if all_rows:
        fit, held = outcomes, {"validation_rows": 0, "test_rows": 0}
    else:
        parts = three_way(outcomes, contaminated)
        fit, held = parts.fit, {"validation_rows": len(parts.validation), "test_rows": len(parts.test)}
    policy = train_policy(fit, spec)
    policy.meta["source"] = source
    policy.meta["all_rows"] = all_rows
    save_policy(policy, out)
    return {
        "policy": str(out),
        "version": policy.version,
        "fit_rows": len(fit),
        **held,
        "rungs": list(policy.rungs),
        "idk_rungs": sorted(policy.idk),
        "prefix_rungs": sorted(policy.prefix),
    }


def _fold_of(ids: tuple[str, ...], folds: int) -> np.ndarray:
    """[n] each row's fold, by a stable hash of its id (salted apart from the split hashes)."""
    return stable_hash(ids, "ladder-fold") % folds


def _out_of_fold(rows, spec: TrainSpec, folds: int, prices: dict):  # noqa: ANN001, ANN202
    """Route, IDK and prefix-gate scores and predicted savings (None without a length model) of
    every row from a policy fitted (same recipe) on the other folds only: scores as noisy as the
    served policy's on queries it never saw."""
    fold = _fold_of(rows.ids, folds)
    if len(set(fold.tolist())) < folds:
        raise OutcomesError(f"--cross-fit {folds}: {len(rows)} rows leave a fold empty; use fewer folds")
    route = np.zeros((len(rows), len(rows.rungs) - 1))
    accept: np.ndarray | None = None
    gates: dict[int, np.ndarray] = {}
    savings: np.ndarray | None = np.zeros_like(route)
    for k in tqdm(range(folds), desc="cross-fit", unit="fold", leave=False):
        held = fold == k
        part = rows.take(held)
        fitted = train_policy(rows.take(~held), spec)
        r, a = _scores(fitted, part)
        route[held] = r
        saved = _savings(fitted, part, prices)
        if saved is None or savings is None:
            savings = None
        else:
            savings[held] = saved
        if a is not None:
            accept = np.ones_like(route) if accept is None else accept
            accept[held] = a
        for tokens, g in gate_scores(fitted, part, r).items():
            gates.setdefault(tokens, np.full_like(route, np.nan))[held] = g
    return route, accept, gates, savings


def calibrate_policy(
    policy_path: Path,
    source: str,
    data: Path | None,
    target_text: str,
    prices: list[str] | None,
    out: Path,
    n_future: int | None = None,
    all_rows: bool = False,
    report_dir: Path | None = None,
    cross_fit: int = 0,
    tier_weights: dict[str, str] | None = None,
    cost_weighted: bool = False,
) -> dict:
    """Thresholds for a target, chosen on the validation part (or on every row of another file,
    ``all_rows``). ``cross_fit`` K: on the fit and validation parts together, from out-of-fold
    scores of the policy's recipe refitted K times; the saved policy is that recipe fitted on all of
    those rows (the test part stays out of both). ``cost_weighted``: the start rule weighs each
    query's router odds by its predicted saving (``ladder.policies.answer_cost``) at ``prices``."""
    policy = load_policy(policy_path)
    outcomes, contaminated = load_outcomes(source, data)
    if tuple(outcomes.rungs) != policy.rungs:
        raise OutcomesError(f"outcomes have rungs {list(outcomes.rungs)}, the policy {list(policy.rungs)}")
    if policy.meta.get("source") == source and (all_rows or policy.meta.get("all_rows")):
        # the rows it would calibrate on include rows it was fitted on: thresholds chosen in-sample
        raise OutcomesError(
            f"the policy was fitted on rows of {source} that this calibration would use: calibrate "
            "on another file with --all-rows, or on this one's validation part without it"
        )
    target = parse_target(target_text, policy.rungs)
    gates = savings = None
    if cross_fit:
        if all_rows or policy.meta.get("source") != source:
            raise OutcomesError(
                "--cross-fit refits the policy's recipe on the fit and validation parts of the file it "
                f"was trained on ({policy.meta.get('source')}), without --all-rows"
            )
        if "spec" not in policy.meta:
            raise OutcomesError("the policy records no training recipe (meta.spec): train it again to cross-fit")
        if cross_fit < 2:
            raise OutcomesError(f"--cross-fit needs at least 2 folds, got {cross_fit}")
        spec = TrainSpec.from_dict(policy.meta["spec"])
        price_table = parse_prices(prices, policy.rungs)
        val = split(outcomes, contaminated).train  # fit + validation: everything but the test part
        route, accept, gates, savings = _out_of_fold(val, spec, cross_fit, price_table)
        policy = train_policy(val, spec)
        policy.meta |= {"source": source, "all_rows": False, "cross_fit": cross_fit}
    else:
        val = outcomes if all_rows else three_way(outcomes, contaminated).validation
        route, accept = _scores(policy, val)
        price_table = parse_prices(prices, policy.rungs)
        savings = _savings(policy, val, price_table)
    start = route  # what the start rule compares with the thresholds, as served
    if cost_weighted:
        if policy.cost is None or savings is None:
            raise OutcomesError(
                "--cost-weighted needs answer lengths: the outcomes record no token counts, so the "
                "policy has no model of them (collect with `ladder collect`, then train again)"
            )
        policy = replace(policy, cost=policy.cost.calibrated([price_table[r] for r in policy.rungs], savings))
        start = policy.cost.weigh(route, savings)
    elif policy.cost is not None:  # recalibrated without: the thresholds are for plain scores
        policy = replace(policy, cost=replace(policy.cost, prices=(), reference=()))
    costs = rung_costs(val, price_table)
    point, frontier = calibrate(target, start, val.quality, costs, accept, n_future)
    calibrated = replace(
        policy,
        thresholds=point.thresholds,
        idk_thresholds=({b: point.accept_thresholds[b] for b in policy.idk} if point.accept_thresholds else {}),
        meta={
            **policy.meta,
            "target": target.describe(),
            "calibrated_on_rows": len(val),
            "operating_point": point.as_dict(),
            "cost_weighted": cost_weighted,
            "pareto": [p.as_dict() for p in frontier],
            **({"tier_weights": tier_weights} if tier_weights else {}),
        },
    )
    prefix_info = {}
    if policy.prefix and accept is not None and point.accept_thresholds is not None:
        calibrated, prefix_info = _calibrate_gates(
            calibrated,
            val,
            target,
            start,
            accept,
            costs,
            price_table,
            n_future,
            gate_scores(calibrated, val, route) if gates is None else gates,
        )
    save_policy(calibrated, out)
    report = {}
    if report_dir is not None:
        from ladder.offline.tune_report import write_report

        png, md = write_report(
            report_dir,
            f"{Path(source).name}: {calibrated.version}",
            policy.rungs,
            val,
            start,
            accept,
            costs,
            point,
            frontier,
            target.describe(),
        )
        report = {"report": str(md), "plot": str(png)}
    return {
        "policy": str(out),
        "version": calibrated.version,
        "target": target.describe(),
        **point.as_dict(),
        **({"prefix": prefix_info} if prefix_info else {}),
        **({"tier_weights": tier_weights} if tier_weights else {}),
        **report,
    }


def _calibrate_gates(
    policy: HybridRouterPolicy,
    val,
    target,
    start: np.ndarray,  # the start rule's scores (cost-weighted when the policy is)
    accept: np.ndarray,  # noqa: ANN001
    costs: np.ndarray,
    prices: dict,
    n_future: int | None,
    gates: dict[int, np.ndarray],
) -> tuple[HybridRouterPolicy, dict]:
    """Prefix gates for the chosen operating point: k and thresholds (``calibrate_prefix``) from
    each candidate gate's scores ``gates`` (k -> [n, R-1])."""
    prefix_costs = {k: rung_costs(val, prices, output_cap=k) for k in gates}
    choice = calibrate_prefix(
        target,
        start,
        policy.thresholds,
        val.quality,
        costs,
        prefix_costs,
        accept,
        policy.accept_thresholds,
        gates,
        answer_tokens(val),
        n_future=n_future,
    )
    kept = {}
    if choice.tokens:
        for b, candidates in policy.prefix.items():
            g = next(g for g in candidates if g.tokens == choice.tokens)
            kept[b] = (replace(g, accept_at=choice.accept_at[b], escalate_below=choice.escalate_below[b]),)
    info = choice.as_dict()
    return replace(policy, prefix=kept, meta={**policy.meta, "prefix": info}), info


def evaluate(
    policy_path: Path,
    source: str,
    data: Path | None,
    out_dir: Path,
    all_rows: bool = False,
    train_source: str | None = None,
    knn: str = "tfidf",
) -> dict:
    """The policy on ``source``'s test part (or, with ``all_rows``, on every row: out of domain)
    beside the baselines; the kNN baseline always learns from training rows, never the evaluated."""
    policy = load_policy(policy_path)
    outcomes, contaminated = load_outcomes(source, data)
    if len(policy.rungs) != 2:
        raise OutcomesError("eval curves (PGR/APGR/CPT) are defined for two rungs")
    if all_rows:
        test = outcomes
        train_source = train_source or policy.meta.get("source")
        if knn != "none" and not train_source:
            raise OutcomesError("--all-rows: name the policy's training outcomes with --train (its file records none)")
        if train_source == source:
            raise OutcomesError(f"--all-rows evaluates on every row of {source}, which the policy was trained on")
        train_part = load_outcomes(train_source, data)[0] if knn != "none" else None
    else:
        parts = three_way(outcomes, contaminated)
        test, train_part = parts.test, parts.fit
    route, accept = _scores(policy, test)
    needs = {"router": 1 - route[:, 0]}
    if accept is not None:
        needs["router+idk"] = 1 - accept[:, 0]
    if knn != "none" and train_part is not None:
        featurizer = MiniLMFeaturizer() if knn == "minilm" else make_featurizer(FeaturizerKind.TFIDF)
        if knn == "tfidf":
            featurizer.fit(list(train_part.queries))
        scores, k = tuned_knn(
            featurize(featurizer, list(train_part.queries)),
            train_part.quality,
            featurize(featurizer, list(test.queries)),
        )
        needs[f"knn-{knn} (k={k})"] = scores
    curves = compare(test.quality, needs)
    out_dir.mkdir(parents=True, exist_ok=True)
    where = "all rows" if all_rows else "test"
    png = plot(curves, test.quality, f"{source}: {policy.version} ({where} n={len(test)})", out_dir / "eval.png")
    rows = table(curves, test.quality)
    (out_dir / "eval.json").write_text(
        json.dumps({"policy": policy.version, "rows": rows, "evaluated": where}, indent=1, default=float)
    )
    return {"rows": rows, "plot": str(png), "test_rows": len(test)}
