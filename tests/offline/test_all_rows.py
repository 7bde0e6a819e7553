"""`ladder train --all-rows` / `calibrate --all-rows` on Ladder's own committed outcomes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # CLI subprocesses with fits: not in make test-fast


def ladder(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ladder.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_train_on_every_row_and_calibrate_on_another_file(tmp_path):
    """--all-rows: fit on all of one file, calibrate on all of another; calibrating in-sample is refused."""
    rows = [json.loads(line) for line in (ROOT / "data" / "outcomes" / "humaneval.jsonl").read_text().splitlines()]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:110]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[110:]))
    proc = ladder("train", "a.jsonl", "-o", "p.json", "--all-rows", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["fit_rows"] == 110
    prices = ["--price", "small=0.02:0.04", "--price", "medium=0.08:0.16", "--price", "large=0.24:0.48"]
    proc = ladder("calibrate", "p.json", "a.jsonl", "-t", "large<=0.5", *prices, cwd=tmp_path)
    assert proc.returncode == 2 and "fitted on rows of a.jsonl" in proc.stderr
    proc = ladder(
        "calibrate", "p.json", "b.jsonl", "-t", "large<=0.6", *prices, "--all-rows", "-o", "c.json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["meta"]["calibrated_on_rows"] == 54 and doc["meta"]["target"] == "large<=0.6"


def test_tune_writes_the_report_a_person_reads(tmp_path):
    rows = (ROOT / "data" / "outcomes" / "humaneval.jsonl").read_text() + (
        ROOT / "data" / "outcomes" / "gsm8k.jsonl"
    ).read_text()
    (tmp_path / "cm.jsonl").write_text(rows)
    assert ladder("train", "cm.jsonl", "-o", "p.json", cwd=tmp_path).returncode == 0
    prices = ["--price", "small=0.02:0.04", "--price", "medium=0.08:0.16", "--price", "large=0.24:0.48"]
    proc = ladder("tune", "cm.jsonl", "p.json", "-t", "large<=0.5", *prices, "--out-dir", "report", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "report" / "tune.md").read_text()
    assert "| quality |" in md and "| reaches large |" in md and "| gsm8k |" in md and "| humaneval |" in md
    assert (tmp_path / "report" / "tune.png").stat().st_size > 10_000
    policy = json.loads((tmp_path / "report" / "policy.json").read_text())
    assert policy["meta"]["target"] == "large<=0.5" and "| humaneval |" in proc.stdout


def test_eval_out_of_domain_on_every_row_with_the_knn_baseline_from_the_training_data(tmp_path):
    def two_rungs(row: dict) -> dict:  # medium -> large: the eval curves are two-rung
        keep = ("medium", "large")
        return {
            k: ({r: v[r] for r in keep if r in v} if isinstance(v, dict) and set(keep) <= set(v) else v)
            for k, v in row.items()
        }

    rows = [
        two_rungs(json.loads(line))
        for line in (ROOT / "data" / "outcomes" / "humaneval.jsonl").read_text().splitlines()
    ]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:110]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[110:]))
    assert ladder("train", "a.jsonl", "-o", "p.json", "--all-rows", cwd=tmp_path).returncode == 0
    proc = ladder("eval", "p.json", "a.jsonl", "--all-rows", "--out-dir", "ev", cwd=tmp_path)
    assert proc.returncode == 2 and "trained on" in proc.stderr  # in-sample: refused
    proc = ladder("eval", "p.json", "b.jsonl", "--all-rows", "--out-dir", "ev", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "(test rows: 54)" in proc.stdout and "knn-tfidf" in proc.stdout
    doc = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert doc["evaluated"] == "all rows" and {"router", "router+idk"} <= {r["method"] for r in doc["rows"]}
