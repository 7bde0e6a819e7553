"""Cost-weighted routing (``ladder.policies.answer_cost``): the start rule weighs each query's
router odds by what stopping cheap would save it, on Ladder's own collected outcomes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ladder.cli import app
from ladder.offline.pipeline import load_outcomes, split
from ladder.offline.training import TrainSpec, train_policy
from ladder.policies.answer_cost import AnswerCost, fit_answer_tokens
from ladder.policies.calibrate import start_rungs
from ladder.policies.features import FeaturizerKind
from ladder.policies.linear import LinearScorer
from ladder.policies.store import load_policy
from ladder.types import Query

ROOT = Path(__file__).resolve().parents[2]
OUTCOMES = ROOT / "data" / "outcomes"
PRICES = {"small": (0.474, 1.2091), "medium": (0.5955, 2.6155), "large": (0.8543, 7.7701)}
PRICE_FLAGS = [f for r, (i, o) in PRICES.items() for f in ("--price", f"{r}={i}:{o}")]


def test_the_weighting_keeps_an_average_query_and_scales_the_odds_by_the_saving():
    model = AnswerCost((LinearScorer(np.zeros(1), 0.0),) * 2, ((1.0, 1.0), (2.0, 2.0)), (0.5,))
    p = np.array([[0.2], [0.2], [0.2], [0.9]])
    saved = np.array([[0.5], [1.0], [0.05], [0.05]])
    w = model.weigh(p, saved)
    odds = lambda q: q / (1 - q)  # noqa: E731
    assert w[0, 0] == pytest.approx(0.2)  # the reference saving: routed as before
    assert odds(w[1, 0]) == pytest.approx(2 * odds(0.2))  # twice the saving: twice the odds
    assert odds(w[2, 0]) == pytest.approx(odds(0.2) / 10)  # a tenth: a tenth of the odds
    assert w[3, 0] < 0.9 and np.all((w > 0) & (w < 1))  # stays a probability, order kept per saving


def test_predicted_answer_lengths_tell_a_letter_from_a_program(tmp_path):
    both = tmp_path / "both.jsonl"
    both.write_text((OUTCOMES / "humaneval.jsonl").read_text() + (OUTCOMES / "mmlu-pro.jsonl").read_text())
    parts = split(*load_outcomes(str(both)))
    policy = train_policy(parts.train, TrainSpec(featurizer=FeaturizerKind.TFIDF, idk=False, prefix_tokens=()))
    assert policy.cost is not None and not policy.cost.active  # fitted, no prices yet: routes as before
    test = parts.test
    x = policy.featurizer.transform(list(test.queries))
    tokens = policy.cost.predicted_tokens(x)
    mc = np.array([i.startswith("mmlu") for i in test.ids])
    assert mc.any() and (~mc).any()
    # held-out questions: a multiple-choice answer is a letter or two, a program is long, at every rung
    assert np.median(tokens[mc], axis=0).max() < 8 and np.median(tokens[~mc], axis=0).min() > 60
    priced = policy.cost.calibrated([PRICES[r] for r in policy.rungs], np.ones((1, 2)))
    saved = priced.savings(x, list(test.queries))
    assert np.median(saved[mc, 1]) * 5 < np.median(saved[~mc, 1])  # medium vs large: code saves far more


def test_fit_answer_tokens_skips_unrecorded_lengths_and_refuses_a_rung_without_any():
    x = np.eye(4)
    tokens = np.array([[3.0, np.nan], [100.0, np.nan], [3.0, np.nan], [100.0, 5.0]])
    with pytest.raises(ValueError, match="rung 1"):
        fit_answer_tokens(x, tokens)
    tokens[0, 1] = 5.0
    models = fit_answer_tokens(x, tokens, alpha=1e-6)
    assert [round(float(v)) for v in np.expm1(models[0].logits(x))] == [3, 100, 3, 100]


@pytest.mark.slow  # CLI fits with 3 folds (~40 s)
def test_calibrate_cost_weighted_serves_what_it_certified_and_a_plain_recalibration_drops_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    merged = "".join((OUTCOMES / f"{n}.jsonl").read_text() for n in ("humaneval", "gsm8k", "mmlu-pro"))
    Path("all.jsonl").write_text(merged)
    runner = CliRunner()
    out = runner.invoke(app, ["train", "all.jsonl", "-o", "p.json", "--featurizer", "tfidf"])
    assert out.exit_code == 0, out.output
    args = ["calibrate", "p.json", "all.jsonl", "-t", "cost<=1.03", *PRICE_FLAGS, "--cross-fit", "3"]
    out = runner.invoke(app, [*args, "--cost-weighted", "-o", "w.json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(Path("w.json").read_text())
    assert doc["meta"]["cost_weighted"] is True and doc["cost"]["prices"] == [list(PRICES[r]) for r in doc["rungs"]]
    policy = load_policy(Path("w.json"))  # the version hashes the cost model and still checks out
    assert policy.cost is not None and policy.cost.active
    # served decisions are the replay's: route() per query == the start rule on the weighted scores
    rows = split(*load_outcomes("all.jsonl")).test
    queries = list(rows.queries)
    raw, weighted = policy.route_scores(queries)
    offline = start_rungs(weighted, policy.thresholds)
    served = np.array([policy.route(Query.of(q)).start for q in queries])
    np.testing.assert_array_equal(served, offline)
    assert not np.array_equal(offline, start_rungs(raw, policy.thresholds))  # the weighting decided some
    mc = np.array([i.startswith("mmlu") for i in rows.ids])
    assert offline[mc].mean() > offline[~mc].mean()  # short answers climb: large is cheap for them
    assert policy.route(Query.of(queries[0])).scores == tuple(float(s) for s in raw[0])  # the header: raw
    # recalibrated without the flag, the thresholds are for plain scores, and it routes by them
    out = runner.invoke(app, [*args, "-o", "plain.json"])
    assert out.exit_code == 0, out.output
    plain = load_policy(Path("plain.json"))
    assert (
        plain.cost is not None
        and not plain.cost.active
        and json.loads(Path("plain.json").read_text())["cost"]["prices"] == []
    )
    r, s = plain.route_scores(queries)
    np.testing.assert_array_equal(r, s)


def test_cost_weighted_without_recorded_lengths_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = []
    for line in (OUTCOMES / "humaneval.jsonl").read_text().splitlines():
        row = json.loads(line)
        row.pop("tokens")
        lines.append(json.dumps(row))
    Path("nolen.jsonl").write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    out = runner.invoke(app, ["train", "nolen.jsonl", "-o", "p.json", "--featurizer", "tfidf", "--no-idk"])
    assert out.exit_code == 0, out.output
    args = ["calibrate", "p.json", "nolen.jsonl", "-t", "cost<=1", *PRICE_FLAGS, "--cost-weighted", "-o", "c.json"]
    p = subprocess.run([sys.executable, "-m", "ladder.cli", *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.startswith("error: --cost-weighted needs answer lengths"), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not Path("c.json").exists()


def test_ladder_route_shows_the_weighted_scores_the_bundled_policys_thresholds_apply_to(tmp_path):
    bundled = ROOT / "src" / "ladder" / "data" / "policy" / "default.json"
    rows = [
        {"id": "mc", "prompt": "Which is a prime number? Answer with the letter only.\nA) 4\nB) 6\nC) 7\nD) 9"},
        {"id": "code", "prompt": "Write a Python function that returns the n-th Fibonacci number."},
    ]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = subprocess.run(
        [sys.executable, "-m", "ladder.cli", "route", str(bundled), str(tmp_path / "p.jsonl")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    routed = {r["id"]: r for r in map(json.loads, p.stdout.splitlines())}
    rungs = ["small", "medium", "large"]
    for r in routed.values():
        first = next((b for b in (0, 1) if r["weighted_scores"][rungs[b]] >= r["thresholds"][rungs[b]]), 2)
        assert r["start"] == rungs[first]  # the start follows the weighted scores, not the plain ones
    # a letter saves little at medium: its odds shrink more than a program's
    ratio = {k: r["weighted_scores"]["medium"] / r["scores"]["medium"] for k, r in routed.items()}
    assert ratio["mc"] < ratio["code"]
