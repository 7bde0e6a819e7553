"""`ladder collect` on Ray Data with the small tier on real GSM8K items: rows, resume, failures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ladder.offline.datasets import load_dataset, score_gsm8k
from tests.shared_data import DATA

pytestmark = [pytest.mark.ray, pytest.mark.model, pytest.mark.slow]
# GSM8K comes from the shared data folder beside the checkout (or $LADDER_DATA); a checkout elsewhere
# says so instead of failing on a missing file.
needs_gsm8k = pytest.mark.skipif(not (DATA / "routellm" / "gsm8k").is_dir(), reason=f"GSM8K not found under {DATA}")


def collect(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "ladder.cli",
        "collect",
        "gsm8k",
        "--data",
        str(DATA),
        "-o",
        str(out),
        "--tiers",
        "small",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@needs_gsm8k
def test_collect_writes_scored_outcomes_and_resumes(tmp_path):
    out = tmp_path / "gsm8k.jsonl"
    proc = collect(out, "--limit", "3", "--max-tokens", "6", "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = {it.id: it for it in load_dataset("gsm8k", DATA, limit=3).items}
    assert {r["id"] for r in rows} == set(expected)
    for r in rows:
        assert r["gold"] == expected[r["id"]].gold and r["query"] == expected[r["id"]].prompt
        assert r["quality"]["small"] == score_gsm8k(r["response"]["small"], r["gold"])
        assert 0 < r["tokens"]["small"] <= 6 and len(r["logprobs"]["small"]) == r["tokens"]["small"]
        assert all(lp <= 0 for lp in r["logprobs"]["small"])
        s = r["signals"]["small"]
        assert s["latency_s"] > 0 and s["compute_s"] > 0 and s["prompt_tokens"] > 20
    # Interrupted after the first row: the rerun collects exactly the other two.
    out.write_text(json.dumps(rows[0]) + "\n")
    proc = collect(out, "--limit", "3", "--max-tokens", "6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 queries collected, 1 already in" in proc.stdout
    assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == sorted(expected)


@needs_gsm8k
def test_a_rung_that_cannot_answer_is_recorded_not_fatal(tmp_path):
    out = tmp_path / "too-long.jsonl"
    proc = collect(out, "--limit", "1", "--max-tokens", "100000")  # beyond the small tier's context
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["quality"]["small"] == 0.0 and "exceeds" in row["errors"]["small"]


def test_collect_on_ones_own_prompts_grades_what_it_can_and_skips_bad_rows(tmp_path):
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text(
        "\n".join(
            [
                json.dumps({"id": "ref", "prompt": "What is 2 + 2? Reply with the number only.", "reference": 4}),
                json.dumps(
                    {
                        "id": "chat",
                        "messages": [
                            {"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Say hello."},
                        ],
                    }
                ),
                "{broken",
                json.dumps(
                    {"id": "code", "prompt": "Write a Python function add(a, b).", "tests": "assert add(1, 2) == 3"}
                ),
            ]
        )
        + "\n"
    )
    out = tmp_path / "mine-outcomes.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "ladder.cli",
        "collect",
        str(prompts),
        "-o",
        str(out),
        "--tiers",
        "small",
        "--max-tokens",
        "48",
        "--batch-size",
        "3",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mine.jsonl:3: skipped" in proc.stderr and "ladder judge" in proc.stderr
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"ref", "chat", "code"}
    assert rows["ref"]["quality"]["small"] in (0.0, 1.0) and rows["code"]["quality"]["small"] in (0.0, 1.0)
    assert rows["chat"]["quality"]["small"] is None and rows["chat"]["response"]["small"]  # left for the judge
    assert rows["chat"]["signals"]["small"]["prompt_tokens"] > 10  # the system message went in too


@needs_gsm8k
def test_collect_stopped_by_sigterm_leaves_nothing_running_and_the_rerun_completes_it(tmp_path):
    """Issue 30's stop test for ``ladder collect`` (``ladder score`` has its own): SIGTERM after the
    first batch is written: exit 130, no process it started survives, and the rerun collects the
    rest — every item exactly once."""
    import signal
    import time

    from benchmarks.harness.processes import descendants, survivors

    out = tmp_path / "gsm8k.jsonl"
    cmd = [sys.executable, "-m", "ladder.cli", "collect", "gsm8k", "--data", str(DATA), "-o", str(out)]
    cmd += ["--tiers", "small", "--limit", "24", "--batch-size", "4", "--max-tokens", "8"]
    log = tmp_path / "stderr"
    with log.open("w") as err:
        job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 400
    while time.time() < deadline and job.poll() is None:
        if out.is_file() and out.read_text().count("\n") >= 4:
            break
        time.sleep(0.2)
    assert job.poll() is None, "the job finished before it could be stopped"
    started = descendants(job.pid) - {job.pid}
    assert len(started) > 3  # Ray's daemons, the actor, the engine
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=120) == 130, log.read_text()[-3000:]
    assert survivors(started, wait_s=30) == {}
    assert 4 <= out.read_text().count("\n") < 24
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(it.id for it in load_dataset("gsm8k", DATA, 24).items) and len(set(ids)) == 24
