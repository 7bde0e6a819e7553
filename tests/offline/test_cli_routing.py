"""`ladder train → calibrate → eval` on the real RouteLLM GSM8K outcomes, as a user runs them."""

import json
import subprocess
import sys

import pytest

from tests.shared_data import DATA, needs_data

pytestmark = [needs_data, pytest.mark.slow]


def ladder(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "ladder.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=900
    )


def test_train_calibrate_eval_end_to_end(tmp_path):
    data = ["--data", str(DATA)]
    proc = ladder("train", "routellm:gsm8k", "-o", "p.json", *data, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["idk_rungs"] == [0]
    proc = ladder("calibrate", "p.json", "routellm:gsm8k", "-t", "strong<=0.3", "-o", "c.json", *data, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    point = json.loads(proc.stdout)
    assert point["reach"][1] <= 0.3 and point["quality"] > 0.6
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["meta"]["target"] == "strong<=0.3" and doc["meta"]["pareto"]  # rung names, not indices
    assert "tier_weights" not in doc["meta"]  # RouteLLM's models are no Ladder tiers: nothing to bind
    rows = [
        {"id": "easy", "prompt": "What is 2 + 3?"},
        {"id": "bad"},
        {
            "id": "hard",
            "prompt": "A train leaves at 3 pm at 60 mph and another at 4 pm at 80 mph; after how many "
            "hours does the second overtake the first, and how far have both travelled?",
        },
    ]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = ladder("route", "c.json", "prompts.jsonl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    routed = {r["id"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert "neither" in routed["bad"]["error"]
    assert routed["easy"]["start"] in ("weak", "strong") and 0 <= routed["easy"]["scores"]["weak"] <= 1
    assert routed["easy"]["start"] == (
        "weak" if routed["easy"]["scores"]["weak"] >= routed["easy"]["thresholds"]["weak"] else "strong"
    )
    assert "start rungs:" in proc.stderr
    proc = ladder("eval", "c.json", "routellm:gsm8k", *data, "--out-dir", "ev", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {r["method"]: r for r in json.loads((tmp_path / "ev" / "eval.json").read_text())["rows"]}
    assert rows["router+idk"]["apgr"] > rows["random"]["apgr"] + 0.1
    assert (tmp_path / "ev" / "eval.png").stat().st_size > 10_000


def test_unreachable_target_and_bad_sources_exit_2(tmp_path):
    data = ["--data", str(DATA)]
    assert ladder("train", "routellm:gsm8k", "-o", "p.json", "--no-idk", *data, cwd=tmp_path).returncode == 0
    proc = ladder("calibrate", "p.json", "routellm:gsm8k", "-t", "strong<=0,quality>=0.95", *data, cwd=tmp_path)
    assert proc.returncode == 2 and "no thresholds meet" in proc.stderr and "Traceback" not in proc.stderr
    proc = ladder("train", "missing.jsonl", cwd=tmp_path)
    assert proc.returncode == 2 and "not found" in proc.stderr
    proc = ladder("train", "routellm:gsm8k", "--featurizer", "bert", *data, cwd=tmp_path)
    assert proc.returncode == 2 and "bert" in proc.stderr
