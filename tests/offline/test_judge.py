"""`ladder collect PROMPTS.jsonl` grading rules and `ladder judge` against an OpenAI-compatible
endpoint. The endpoint here is a small local HTTP server that answers as a judge would — and as
a broken one would (no rating, too slow) — spoken to through the real ``openai`` client."""

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ladder.offline.datasets import load_prompts, score_own, score_reference
from ladder.offline.judge import parse_rating
from ladder.outcomes.io import read_jsonl


class JudgeHandler(BaseHTTPRequestHandler):
    """Rates "good" answers 9 and others 2; says nothing useful about "garbled"; stalls on "slow"."""

    calls: list[str] = []

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        prompt = body["messages"][0]["content"]
        answer = prompt.split("[Answer]", 1)[1]
        JudgeHandler.calls.append(answer)
        if "slow" in answer:
            time.sleep(3)
        reply = (
            "I think it is fine." if "garbled" in answer else ("Rating: 9" if "good" in answer else "**Rating:** 2/10")
        )
        payload = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 4, "total_tokens": 104},
        }
        data = json.dumps(payload).encode()
        try:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
            pass


@pytest.fixture(scope="module")
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), JudgeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_prompt_rows_grading_rules_and_bad_rows(tmp_path):
    rows = [
        '{"id": "a", "prompt": "What is 6*7?", "reference": 42}',
        "not json",
        '{"id": "b", "messages": [{"role": "user", "content": "Capital of France?"}], "reference": "Paris"}',
        '{"id": "c", "prompt": "Write add(a, b).", "tests": "assert add(2, 3) == 5"}',
        '{"id": "d", "prompt": "  "}',
        '{"id": "e", "prompt": "Tell me a joke."}',
        '{"id": "a", "prompt": "again"}',
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(rows) + "\n")
    ds = load_prompts(path)
    assert sorted(it.id for it in ds.items) == ["a", "b", "c", "e"]
    assert [line for line, _ in ds.rejected] == [2, 5, 7] and "duplicate" in ds.rejected[-1][1]
    gold = {it.id: it.gold for it in ds.items}
    assert score_own("So 6*7 = 42.", gold["a"]) == 1.0 and score_own("It is 48.", gold["a"]) == 0.0
    assert score_own("The capital is Paris.", gold["b"]) == 1.0 and score_own("Lyon", gold["b"]) == 0.0
    assert score_own("```python\ndef add(a, b):\n    return a + b\n```", gold["c"]) == 1.0
    assert score_own("```python\ndef add(a, b):\n    return a * b\n```", gold["c"]) == 0.0
    assert score_own("Why did the chicken…", gold["e"]) is None  # for the judge
    assert score_reference("1,234 apples", "1234") == 1.0 and score_reference("parisian", "Paris") == 0.0


def test_ratings_are_parsed_or_refused():
    assert parse_rating("Rating: 7", 10) == 7 and parse_rating("**Rating:** 10/10", 10) == 10
    assert parse_rating("8", 10) == 8 and parse_rating("Rating: 11", 10) is None and parse_rating("fine", 10) is None


@pytest.mark.slow  # a subprocess or a training run: not in make test-fast
def test_judge_grades_unlabelled_answers_caches_them_and_survives_a_broken_judge(tmp_path, judge_url):
    def row(i, answers, gold=None):
        return {
            "id": f"r{i}",
            "query": f"question {i}",
            "quality": {"small": gold, "large": gold},
            "response": dict(zip(("small", "large"), answers)),
            "tokens": {"small": 5.0, "large": 9.0},
        }

    rows = [
        row(0, ["a good answer", "a good answer too"]),
        row(1, ["bad", "good"]),
        row(2, ["garbled", "slow and good"]),
        row(3, ["good", "bad"], gold=1.0),
    ]
    src, out = tmp_path / "collected.jsonl", tmp_path / "judged.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    exe = Path(sys.executable).parent / "ladder"
    cmd = [
        str(exe),
        "judge",
        str(src),
        "-o",
        str(out),
        "--judge-url",
        judge_url,
        "--judge-model",
        "stub",
        "--timeout",
        "1",
        "--retries",
        "1",
        "--also-labelled",
        "--judge-price",
        "1:2",
    ]
    JudgeHandler.calls.clear()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["graded"] == 4 and summary["failed"] == 2  # garbled (no rating) and slow (timeouts)
    assert summary["agreement_n"] == 2 and summary["agreement"] == 0.5  # gold 1.0 for both; judge says good/bad
    assert summary["usd"] > 0 and summary["prompt_tokens"] >= 600
    judged = [json.loads(line) for line in out.read_text().splitlines()]
    assert judged[0]["quality"] == {"small": pytest.approx(8 / 9), "large": pytest.approx(8 / 9)}  # (9 - 1) / 9
    assert judged[1]["quality"]["small"] == pytest.approx(1 / 9) and judged[0]["signals"]["small"]["judge_grade"] == 9
    assert judged[2]["quality"] == {"small": None, "large": None} and set(judged[2]["judge_errors"]) == {
        "small",
        "large",
    }
    assert judged[3]["quality"] == {"small": 1.0, "large": 1.0}  # gold grades stay
    assert judged[0]["judge"]["prompt_version"] == "single-v1"
    # training reads the graded rows and leaves the ungraded one out
    assert len(read_jsonl(out)) == 3
    # a second run asks the judge only what it could not answer before
    JudgeHandler.calls.clear()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    again = json.loads(proc.stdout)
    assert (
        again["cached"] == 6 and again["asked"] == 2 and all("garbled" in c or "slow" in c for c in JudgeHandler.calls)
    )
