"""Run untrusted Python (a model's generated code) in a sandbox, never inside a server process.

``run_python(code, limits)`` starts a separate process and gives the code:
- **limits**: CPU seconds, address space, size of any file it writes, open files, and number of
  processes (``setrlimit``), plus a wall-clock timeout after which the whole process tree dies;
- **no network**: a fresh network namespace (only a downed loopback);
- **nothing outside its directory**: a fresh mount namespace with empty private tmpfs over
  ``/tmp``, ``/var/tmp`` and ``/dev/shm`` (its working directory lives there and vanishes with
  it), and the code runs as ``nobody``, which may write nowhere else and may not signal Ladder;
- **no stragglers**: a fresh PID namespace, so when the program ends (or is killed) every process
  it forked is killed by the kernel.
Namespaces and the change of user need root (the CI and server machines run Ladder as root). Run
as another user, Ladder falls back to the rlimits, a private temporary directory (removed
afterwards), an empty environment and a new session, and says so (``SandboxResult.isolated`` is
False); the limits still stop loops, forks and allocations, but not a network connection.

Stdlib only: the offline collection job and the online verifier both call it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock, start-up included
    cpu_s: int = 5
    memory_mb: int = 512  # address space
    file_mb: int = 4  # any single file the code writes (stdout and stderr included)
    processes: int = 16  # processes of the sandbox user
    open_files: int = 64


@dataclass(frozen=True)
class SandboxResult:
    status: str  # "passed" (exit 0) | "failed" (non-zero exit) | "timeout" | "error" (could not run)
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    isolated: bool  # namespaces + unprivileged user in force

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# Runs as root (when it can) in a new session: unshare the namespaces, fork the program as PID 1 of
# a new PID namespace, mount private tmpfs, drop to nobody, set the limits, exec the interpreter.
_LAUNCHER = r"""
import ctypes, json, os, resource, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID = 0x00020000, 0x40000000, 0x20000000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
isolated = cfg["isolate"] and os.geteuid() == 0 and libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID) == 0
code = sys.stdin.buffer.read()
pid = os.fork()
if pid:
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) % 256 if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
if isolated:
    ok = libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0
    for d in (b"/tmp", b"/var/tmp", b"/dev/shm"):
        if os.path.isdir(d):
            ok = ok and libc.mount(b"tmpfs", d, b"tmpfs", 0, b"size=64m,mode=1777") == 0
    if not ok:
        sys.stderr.write("sandbox: private tmpfs could not be mounted\n")
        os._exit(97)
    work = "/tmp/work"
    os.mkdir(work, 0o700)
    os.chown(work, cfg["uid"], cfg["uid"])
else:
    work = cfg["work"]
path = os.path.join(work, "main.py")
with open(path, "wb") as f:
    f.write(code)
if isolated:
    os.chown(path, cfg["uid"], cfg["uid"])
lim = cfg["limits"]
for name, value in (("RLIMIT_CPU", lim["cpu_s"]), ("RLIMIT_AS", lim["memory_mb"] << 20),
                    ("RLIMIT_FSIZE", lim["file_mb"] << 20), ("RLIMIT_NPROC", lim["processes"]),
                    ("RLIMIT_NOFILE", lim["open_files"]), ("RLIMIT_CORE", 0)):
    resource.setrlimit(getattr(resource, name), (value, value))
if isolated:
    os.setgroups([])
    os.setgid(cfg["uid"])
    os.setuid(cfg["uid"])
os.chdir(work)
env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
os.execve(cfg["python"], [cfg["python"], "-I", "-B", path], env)
"""


def _interpreter(isolated: bool) -> str:
    """The Python the code runs in: it must be executable by ``nobody`` when isolated (a system
    Python; Ladder's own may sit under a private home directory)."""
    if isolated:
        for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
            if os.path.exists(candidate) and os.stat(candidate).st_mode & 0o001:
                return candidate
    return sys.executable


def can_isolate() -> bool:
    return sys.platform == "linux" and os.geteuid() == 0 and _interpreter(True) != sys.executable


def run_python(code: str, limits: SandboxLimits = SandboxLimits(), isolate: bool = True) -> SandboxResult:
    """Run ``code`` as a script in the sandbox; its exit status decides pass or fail."""
    isolated = isolate and can_isolate()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ladder-sandbox-") as tmp:
        work = Path(tmp, "work")
        work.mkdir()
        cfg = {
            "isolate": isolated,
            "uid": NOBODY,
            "work": str(work),
            "python": _interpreter(isolated),
            "limits": limits.__dict__,
        }
        out_path, err_path = Path(tmp, "stdout"), Path(tmp, "stderr")
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(cfg)],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            timed_out = False
            try:
                proc.communicate(code.encode("utf-8", "surrogatepass"), timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc.pid)
                proc.wait()
            _kill_group(proc.pid)  # anything the code left behind in its session
        stdout = out_path.read_bytes()[:64_000].decode("utf-8", "replace")
        stderr = err_path.read_bytes()[:64_000].decode("utf-8", "replace")
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t0
    rc = proc.returncode
    if timed_out:
        status = "timeout"
    elif rc == 97 or (rc == 1 and stderr.startswith("sandbox:")):
        status = "error"
    else:
        status = "passed" if rc == 0 else "failed"
    return SandboxResult(status, rc, stdout, stderr, seconds, isolated)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
