"""benchmarks/cascade.py runs from the committed collected outcomes in minutes and reports sanely."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUTCOMES = ROOT / "data" / "outcomes" / "gsm8k.jsonl"


@pytest.mark.slow
def test_cascade_benchmark_on_committed_outcomes(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "cascade.py"),
            "--outcomes",
            str(OUTCOMES),
            "--results",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rep,) = json.loads((tmp_path / "cascade.json").read_text())
    assert (tmp_path / "cascade_gsm8k.png").stat().st_size > 10_000
    rows = {m["method"]: m for m in rep["methods"]}
    n = rep["rows"]
    assert n == sum(1 for line in OUTCOMES.read_text().splitlines() if line.strip())  # every row held out once
    large, oracle = rows["always-large"], rows["oracle"]
    assert rows["always-small"]["usd_per_1k"] < rows["always-medium"]["usd_per_1k"] < large["usd_per_1k"]
    assert oracle["quality"] >= max(rows[f"always-{r}"]["quality"] for r in ("small", "medium", "large"))
    for name in ("router", "IDK cascade", "router + IDK"):
        m = rows[name]
        assert abs(sum(m["mix"]) - 1) < 1e-9 and 0 <= m["escalations"] <= 2
        assert m["p95_s"] >= m["p50_s"] > 0
    assert "router + IDK" in proc.stdout and "target" in proc.stdout
