"""The code sandbox and the python_examples verifier: hostile generated code fails, and nothing
outside the sandbox changes (real processes, real namespaces; CI runs as root)."""

import os
import socket
import time
from pathlib import Path

import pytest

from ladder.sandbox import SandboxLimits, isolation_problem, run_python
from ladder.verify import complete_program, docstring_examples, extract_code, python_examples

QUICK = SandboxLimits(timeout_s=4, cpu_s=2)


def test_ci_runs_the_isolated_sandbox():
    # the guarantees below (no network, nothing written outside) need namespaces; CI has them
    assert isolation_problem() is None


def test_passing_and_failing_programs():
    assert run_python("assert sum(range(4)) == 6\nprint('ok')", QUICK).status == "passed"
    r = run_python("assert 1 == 2", QUICK)
    assert r.status == "failed" and "AssertionError" in r.stderr


def test_an_endless_loop_is_killed_on_time():
    t0 = time.perf_counter()
    r = run_python("while True:\n    pass", QUICK)
    assert r.status in ("timeout", "failed") and not r.passed
    assert time.perf_counter() - t0 < QUICK.timeout_s + 2


def test_a_fork_bomb_fails_and_leaves_no_process_behind():
    r = run_python("import os, time\nfor _ in range(200):\n    os.fork()\ntime.sleep(60)", QUICK)
    assert not r.passed
    time.sleep(0.5)
    stray = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _uid(p) == 65534]
    assert stray == []


def _uid(proc: Path) -> int | None:
    try:
        for line in (proc / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def test_a_10_gb_allocation_fails():
    r = run_python("x = bytearray(10 * 1024**3)\nprint(len(x))", QUICK)
    assert r.status == "failed" and "MemoryError" in r.stderr


def test_writes_outside_its_directory_change_nothing(tmp_path):
    target = tmp_path / "escaped.txt"
    os.chmod(tmp_path, 0o777)  # even a world-writable folder outside the sandbox stays untouched
    code = f"""
import os
for path in [{str(target)!r}, "/tmp/ladder-escape", os.path.expanduser("~root/escape"), "/etc/escape"]:
    try:
        open(path, "w").write("x")
    except OSError:
        pass
"""
    run_python(code, QUICK)
    assert not target.exists() and not Path("/tmp/ladder-escape").exists() and not Path("/etc/escape").exists()


def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        r = run_python(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')", QUICK
        )
        assert r.status == "failed" and "connected" not in r.stdout
    finally:
        server.close()


def test_signalling_the_parent_does_nothing_to_it():
    r = run_python(
        "import os, signal\nfor pid in (os.getppid(), 1, -1):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError:\n        pass",
        QUICK,
    )
    assert r.status in ("passed", "failed")  # whatever it did to itself, we are still here


def test_code_extraction_and_programs():
    answer = "Sure!\n```python\ndef add(a, b):\n    return a + b\n```\nThis adds."
    assert extract_code(answer) == "def add(a, b):\n    return a + b\n"
    prompt = 'def add(a, b):\n    """Add.\n    >>> add(2, 3)\n    5\n    """\n'
    assert docstring_examples(prompt) == [("add(2, 3)\n", "5\n")]
    program = complete_program(prompt, answer, "add")
    assert run_python(program + "\nassert add(2, 3) == 5\n", QUICK).passed
    body_only = complete_program(prompt, "    return a + b\n", "add")
    assert run_python(body_only + "\nassert add(1, 1) == 2\n", QUICK).passed


@pytest.mark.parametrize(
    "answer, parses, passed",
    [
        ("```python\ndef add(a, b):\n    return a + b\n```", 1.0, 1.0),
        ("```python\ndef add(a, b):\n    return a - b\n```", 1.0, 0.0),
        ("```python\ndef add(a, b:\n    return\n```", 0.0, 0.0),
        ("```python\ndef add(a, b):\n    while True: pass\n```", 1.0, 0.0),
        ("The answer is 5.", 0.0, 0.0),
    ],
)
def test_verifier_signals(answer, parses, passed):
    prompt = 'Complete:\n```python\ndef add(a, b):\n    """Add.\n    >>> add(2, 3)\n    5\n    >>> add(-1, 1)\n    0\n    """\n```'
    s = python_examples(prompt, answer)
    assert (s.code_parses, s.examples, s.examples_passed) == (parses, 2.0, passed)


@pytest.mark.parametrize(
    "answer, passed",
    [
        ("```python\ndef square(x):\n    return x * x\n```", 1.0),
        ("```python\ndef square(x):\n    return x + x\n```", 0.5),  # right for 2 only
        ("```python\ndef square(x):\n    raise ValueError\n```", 0.0),
    ],
)
def test_assert_lines_of_a_prompt_are_examples_too(answer, passed):
    # issue 28: a chat prompt shows its tests as assert lines (MBPP style), not >>> examples
    prompt = "Write a function square(x).\nYour code should pass these tests:\nassert square(2) == 4\nassert square(3) == 9\n"
    s = python_examples(prompt, answer)
    assert (s.code_parses, s.examples, s.examples_passed) == (1.0, 2.0, passed)


def test_a_verified_tier_streams_its_answer_and_the_closing_generation_carries_the_signals():
    """Streams go through the verifier too: the streamed cascade's whole-answer judgement reads
    the same signals as the unstreamed one."""
    import asyncio

    from ladder.cluster.compose import VerifyingWorker
    from ladder.types import Delta, Generation, Query

    answer = "```python\ndef add(a, b):\n    return a + b\n```"

    class CodeWorker:
        tier = "small"

        async def stream(self, query):
            for piece in answer.split("\n"):
                yield Delta(piece + "\n", (1,), (-0.1,))
            yield Generation("small", answer, (1,), (-0.1,), 5, "stop", 0.0, 0.0)

    prompt = 'Complete:\n```python\ndef add(a, b):\n    """Add.\n    >>> add(2, 3)\n    5\n    """\n```'

    async def go():
        return [item async for item in VerifyingWorker(CodeWorker(), "python_examples").stream(Query.of(prompt))]

    items = asyncio.run(go())
    assert all(isinstance(i, Delta) for i in items[:-1]) and len(items) == 5
    assert dict(items[-1].signals) | {"verify_s": 0} == {
        "code_parses": 1.0,
        "examples": 1.0,
        "examples_passed": 1.0,
        "verify_s": 0,
    }
