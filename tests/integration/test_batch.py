"""`ladder score` on Ray Data with the small tier: answers, error rows, resume."""

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.model, pytest.mark.slow]


def test_score_answers_every_row_keeps_bad_rows_and_resumes(tmp_path):
    rows = [{"id": f"r{i}", "prompt": f"What is {i} plus {i}?", "max_tokens": 4} for i in range(6)]
    rows += [{"id": "empty", "prompt": "  "}, {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 3}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "ladder.cli", "score", str(src), "--out", str(out), "--tiers", "small"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(rows) and len({r["id"] for r in records}) == len(rows)
    by_id = {r["id"]: r for r in records}
    assert "prompt is empty" in by_id["empty"]["error"]
    assert all(r["tier"] == "small" and 0 < r["completion_tokens"] <= 4 for r in records if "error" not in r)
    # Drop two answers as if the job had been interrupted; the rerun does exactly those.
    out.write_text("".join(json.dumps(r) + "\n" for r in records[:-2]))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in records)
    assert "│ 2    │ 6" in proc.stdout  # 2 rows scored, 6 skipped as done
