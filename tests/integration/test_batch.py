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


def test_the_pools_layout_answers_every_row_from_the_tiers_own_actors(tmp_path):
    """``--layout pools``: the small tier's engine runs in an actor of its own, called by a light
    cascade actor; every row answered once, a bad row still an error row (the tier actor's
    ContextOverflow comes back as the client error it is, not a tier failure), the same greedy
    answers as the whole layout gives."""
    rows = [{"id": f"p{i}", "prompt": f"What is {i} times {i}?", "max_tokens": 6} for i in range(5)]
    rows += [{"id": "long", "prompt": "word " * 3000, "max_tokens": 4}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    answers = {}
    for layout in ("pools", "whole"):
        out = tmp_path / f"{layout}.jsonl"
        cmd = [sys.executable, "-m", "ladder.cli", "score", str(src), "--out", str(out), "--tiers", "small"]
        proc = subprocess.run([*cmd, "--layout", layout], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("tier small: starting 1 actor(s)" in proc.stderr) == (layout == "pools")
        records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
        assert sorted(records) == sorted(r["id"] for r in rows)
        assert records["long"]["error"].startswith("ContextOverflow:") and "2048" in records["long"]["error"]
        answers[layout] = {k: r.get("text") for k, r in records.items()}
    assert answers["pools"] == answers["whole"]


def test_a_job_stopped_mid_batch_leaves_nothing_running_and_the_rerun_writes_every_row_once(tmp_path):
    """SIGTERM (what systemd, Docker and Kubernetes send) to `ladder score` mid-job: it stops Ray and
    every process it started, exits 130 (not done: rerun), and loses at most the unfinished
    batches, which the rerun does — no row twice, none lost, no torn line (one is planted, as a
    hard kill in the middle of a write would leave it)."""
    import signal
    import time

    from benchmarks.harness.processes import descendants, survivors

    rows = [{"id": f"k{i}", "prompt": f"Count from {i} to {i + 3}.", "max_tokens": 6} for i in range(48)]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [
        sys.executable,
        "-m",
        "ladder.cli",
        "score",
        str(src),
        "--out",
        str(out),
        "--tiers",
        "small",
        "--batch-size",
        "8",
    ]
    log = tmp_path / "stderr"
    with log.open("w") as err:
        job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 400
    while time.time() < deadline and job.poll() is None:
        if out.is_file() and out.read_text().count("\n") >= 8:  # at least one batch written
            break
        time.sleep(0.2)
    assert job.poll() is None, "the job finished before it could be stopped"
    started = descendants(job.pid) - {job.pid}
    assert len(started) > 3  # Ray's daemons and the actor
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=120) == 130, log.read_text()[-3000:]
    assert survivors(started, wait_s=30) == {}
    with out.open("a") as f:
        f.write('{"id": "k4')
    written_before = out.read_text().count("\n")
    assert 8 <= written_before < len(rows)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]  # every line parses
    ids = [r["id"] for r in records]
    assert sorted(ids) == sorted(r["id"] for r in rows) and len(ids) == len(set(ids))
    assert all("error" not in r and r["completion_tokens"] > 0 for r in records)
