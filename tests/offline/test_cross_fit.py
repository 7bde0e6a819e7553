"""`ladder calibrate --cross-fit K`: thresholds from out-of-fold scores of the fit + validation parts."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ladder.cli import app
from ladder.cluster.settings import LadderConfig
from ladder.errors import LadderError
from ladder.offline.commands import _fold_of, _out_of_fold
from ladder.offline.pipeline import load_outcomes, split, three_way
from ladder.offline.training import TrainSpec, train_policy
from ladder.policies.features import FeaturizerKind

ROOT = Path(__file__).resolve().parents[2]
HUMANEVAL = ROOT / "data" / "outcomes" / "humaneval.jsonl"
PRICES = ["--price", "small=0.02:0.04", "--price", "medium=0.08:0.16", "--price", "large=0.24:0.48"]


def test_each_row_is_scored_by_a_policy_that_never_saw_it():
    rows = split(*load_outcomes(str(HUMANEVAL))).train
    spec = TrainSpec(featurizer=FeaturizerKind.TFIDF, prefix_tokens=(8,))
    prices = {"small": (0.02, 0.04), "medium": (0.08, 0.16), "large": (0.24, 0.48)}
    route, accept, gates, savings = _out_of_fold(rows, spec, 3, prices)
    fold = _fold_of(rows.ids, 3)
    held = fold == 1
    alone = train_policy(rows.take(~held), spec)
    np.testing.assert_allclose(route[held], alone.scores(list(rows.take(held).queries)))
    inside = train_policy(rows, spec).scores(list(rows.take(held).queries))
    assert not np.allclose(route[held], inside)  # in-sample scores differ: the fold was really out
    assert accept is not None and accept.shape == route.shape and set(gates) == {8}
    assert not np.isnan(gates[8][:, :2]).any()
    # the answer-length model is out of fold too: its savings are the held-out fold's policy's
    expected = alone.cost.calibrated([prices[r] for r in rows.rungs], savings[held])
    x = alone.featurizer.transform(list(rows.take(held).queries))
    np.testing.assert_allclose(savings[held], expected.savings(x, list(rows.take(held).queries)))


@pytest.mark.slow  # CLI fits (~20 s)
def test_calibrate_cross_fit_refits_on_fit_and_validation_and_keeps_test_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "he.jsonl").write_text(HUMANEVAL.read_text())
    runner = CliRunner()
    out = runner.invoke(app, ["train", "he.jsonl", "-o", "p.json"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(
        app, ["calibrate", "p.json", "he.jsonl", "-t", "large<=0.5", *PRICES, "--cross-fit", "3", "-o", "c.json"]
    )
    assert out.exit_code == 0, out.output
    doc = json.loads(Path("c.json").read_text())
    parts = three_way(*load_outcomes("he.jsonl"))
    fitval = len(parts.fit) + len(parts.validation)
    assert doc["meta"]["cross_fit"] == 3 and doc["meta"]["calibrated_on_rows"] == fitval
    assert doc["meta"]["train_rows"] == fitval and fitval + len(parts.test) == 164
    assert doc["meta"]["operating_point"]["reach"][2] <= 0.5
    assert TrainSpec.from_dict(doc["meta"]["spec"]) == TrainSpec(featurizer=FeaturizerKind.TFIDF)
    assert doc["version"] != json.loads(Path("p.json").read_text())["version"]
    # it records the weights it was fitted on: the tiers of the config the outcomes came from
    assert doc["meta"]["tier_weights"] == {t.name: f"sha256:{t.source.sha256}" for t in LadderConfig().tiers}
    two = LadderConfig().model_dump(mode="json")
    two["tiers"] = two["tiers"][:2]
    (tmp_path / "two.yaml").write_text(json.dumps(two))  # JSON is YAML
    bad = runner.invoke(app, ["calibrate", "p.json", "he.jsonl", "-t", "large<=0.5", "--config", "two.yaml"])
    assert bad.exit_code == 2 and "no tier 'large'" in bad.output

    # refused (one line, exit 2 from main()): one fold, a policy fitted on every row, a policy file
    # that records no recipe (written before meta.spec)
    def refusal(policy: str, folds: str) -> str:
        bad = runner.invoke(app, ["calibrate", policy, "he.jsonl", "-t", "large<=0.5", "--cross-fit", folds])
        assert isinstance(bad.exception, LadderError), bad.output
        return str(bad.exception)

    assert "at least 2 folds" in refusal("p.json", "1")
    assert runner.invoke(app, ["train", "he.jsonl", "-o", "all.json", "--all-rows"]).exit_code == 0
    assert "fitted on rows of he.jsonl" in refusal("all.json", "3")
    old = json.loads(Path("p.json").read_text())
    del old["meta"]["spec"]
    Path("old.json").write_text(json.dumps(old))
    assert "no training recipe" in refusal("old.json", "3")


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
