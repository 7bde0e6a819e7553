"""Attacks from code the verifier runs (a prompt's ``>>>`` lines, a model's program) that must fail,
as root and as a normal user (nobody): escaping the timeout with setsid, reading other processes
through /proc, ptrace, signals, the network, a fork bomb, secrets on disk, writes outside."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("sandbox_runner.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # nobody cannot run Ladder's own interpreter under /root
USERS = ["root", "nobody"]


@pytest.fixture
def outside():
    """A world-readable, world-writable folder outside /tmp (which the sandbox replaces), holding
    a world-readable secret file; it stands for Ladder's cache directory."""
    d = ROOT / "build" / f"sandbox-outside-{secrets.token_hex(4)}"
    d.mkdir(parents=True)
    os.chmod(d, 0o777)
    (d / "admin.key").write_text("the-admin-key")
    os.chmod(d / "admin.key", 0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def sandboxed(code: str, user: str, cache_dir: Path | None = None, timeout_s: float = 4, **env: str) -> dict:
    environment = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), **env}
    if cache_dir is not None:
        environment["LADDER_CACHE_DIR"] = str(cache_dir)
    if user == "root":
        cmd = [sys.executable, str(RUNNER), str(timeout_s)]
        environment["HOME"] = os.environ.get("HOME", "/root")
    else:
        assert shutil.which("setpriv") and os.access(SYSTEM_PYTHON, os.X_OK), "needs setpriv and a system Python"
        cmd = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            SYSTEM_PYTHON,
            str(RUNNER),
            str(timeout_s),
        ]
        environment["HOME"] = "/nonexistent"
    p = subprocess.run(cmd, input=code, capture_output=True, text=True, env=environment, timeout=60)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["isolated"], result  # never silently unisolated
    return result


def leftovers() -> list[str]:
    """Processes outside that run sandboxed code (its script is always /tmp/work/main.py)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"/tmp/work/main.py" in (proc / "cmdline").read_bytes():
                found.append(proc.name)
        except OSError:
            pass
    return found


@pytest.mark.parametrize("user", USERS)
def test_setsid_does_not_escape_the_timeout(user):
    code = "import os, time\nos.setsid()\nif os.fork() == 0:\n    os.setsid()\ntime.sleep(60)\n"
    t0 = time.perf_counter()
    r = sandboxed(code, user, timeout_s=2)
    assert r["status"] == "timeout" and time.perf_counter() - t0 < 10
    time.sleep(0.3)
    assert leftovers() == []


@pytest.mark.parametrize("user", USERS)
def test_proc_shows_no_other_process_and_no_environment(user):
    secret = secrets.token_hex(8)
    code = f"""
import os
pids = sorted(p for p in os.listdir('/proc') if p.isdigit())
seen = False
for p in pids + [str(n) for n in range(1, 5000)]:
    try:
        seen = seen or {secret!r}.encode() in open('/proc/%s/environ' % p, 'rb').read()
    except OSError:
        pass
print(pids, seen, repr(open('/proc/1/cmdline', 'rb').read()))
"""
    r = sandboxed(code, user, LADDER_TEST_SECRET=secret)
    assert r["status"] == "passed", r
    assert r["stdout"].startswith("['1'] False") and "main.py" in r["stdout"]  # PID 1 is the program itself


@pytest.mark.parametrize("user", USERS)
def test_ptrace_and_signals_reach_nothing_outside(user):
    me = os.getpid()
    code = f"""
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
# PTRACE_ATTACH: the test, and its own PID 1. Flushed: as a non-root user, kill(0) below (its
# parent pid reads 0) reaches its own launcher, whose death ends the run before exit could flush.
print(libc.ptrace(16, {me}, 0, 0), libc.ptrace(16, 1, 0, 0), flush=True)
for pid in ({me}, os.getppid(), -1):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
"""
    r = sandboxed(code, user)
    assert r["stdout"].split()[:1] == ["-1"]  # the test's pid does not exist in there
    assert os.getpid() == me  # and we are still here to say so


@pytest.mark.parametrize("user", USERS)
def test_no_network_not_even_loopback(user):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
        r = sandboxed(code, user)
        assert r["status"] == "failed" and "connected" not in r["stdout"]
        with pytest.raises(TimeoutError):
            server.accept()


@pytest.mark.parametrize("user", USERS)
def test_a_fork_bomb_fails_and_leaves_nothing(user):
    r = sandboxed("import os, time\nfor _ in range(500):\n    os.fork()\ntime.sleep(60)", user, timeout_s=3)
    assert r["status"] in ("failed", "timeout")
    time.sleep(0.3)
    assert leftovers() == []


@pytest.mark.parametrize("user", USERS)
def test_secrets_on_disk_are_hidden_and_nothing_outside_is_written(user, outside):
    code = f"""
import os
found = []
for path in [{str(outside / "admin.key")!r}, os.path.expanduser('~root/.ray/auth_token'), '/root/.cache/ladder']:
    try:
        found.append(open(path).read() if os.path.isfile(path) else os.listdir(path))
    except OSError:
        pass
for path in [{str(outside / "written")!r}, {str(ROOT / "written-by-sandbox")!r}, '/etc/written']:
    try:
        open(path, 'w').write('x')
    except OSError:
        pass
print(found)
"""
    r = sandboxed(code, user, cache_dir=outside)
    assert r["status"] == "passed", r
    assert "the-admin-key" not in r["stdout"] and r["stdout"].strip() in ("[]", "[[]]")
    assert not (outside / "written").exists() and not (ROOT / "written-by-sandbox").exists()
    assert not Path("/etc/written").exists()


@pytest.mark.parametrize("user", USERS)
def test_memory_is_bounded(user):
    r = sandboxed("x = bytearray(10 * 1024**3)\nprint(len(x))", user)
    assert r["status"] == "failed" and "MemoryError" in r["stderr"]


def test_without_user_namespaces_a_normal_user_is_refused_in_one_line():
    """Where the kernel gives a normal user no namespaces, the sandbox refuses to run code at all
    (the served verifier then refuses to start) instead of running it unisolated."""
    if os.geteuid() != 0:
        pytest.fail("run as root: the test builds a user namespace in which namespaces are used up")
    p = subprocess.run(
        [SYSTEM_PYTHON, str(Path(__file__).with_name("no_userns.py"))],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), "HOME": "/nonexistent"},
        timeout=60,
    )
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode != 0 and last.startswith("ladder.sandbox.SandboxUnavailable: the code sandbox cannot isolate")
    assert "user namespaces" in last
