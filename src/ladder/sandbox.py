"""Run untrusted Python (a model's generated code) in a sandbox, never inside a server process.

``run_python(code, limits)`` starts a separate process and gives the code:
- **limits**: CPU seconds, address space per process, size of any file it writes, open files and
  processes (``setrlimit``), so memory per run is bounded by ``processes × memory_mb``; a
  wall-clock timeout after which the whole PID namespace dies;
- **no network**: a fresh network namespace (only a downed loopback);
- **nothing to write outside its directory**: a fresh mount namespace in which every mount is
  read-only, with empty private tmpfs over ``/tmp``, ``/var/tmp`` and ``/dev/shm`` (its working
  directory lives there and vanishes with it);
- **no secrets**: empty tmpfs over the home directory, ``/root`` and Ladder's cache directory
  (admin key, Ray's token, weights), an empty environment;
- **nothing else to see or signal**: a fresh PID namespace with its own ``/proc`` (no other
  process's command line or environment), a fresh IPC namespace; the program is PID 1 of its
  namespace, so killing it at the timeout kills everything it forked, ``setsid`` or not;
- **no privilege**: as root it runs as ``nobody``; as any other user it runs as that user inside a
  new *user* namespace, with every capability dropped at ``exec`` and ``no_new_privs`` set.

Isolation works as root and as a normal user wherever the kernel allows user namespaces. Where it
cannot be had, ``run_python`` raises ``SandboxUnavailable`` naming the cause instead of running
the code unisolated; ``LADDER_SANDBOX=unisolated`` is the explicit, logged opt-out (rlimits, a
private directory and a new session only).

Stdlib only: the offline collection job and the online verifier both call it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ladder.errors import LadderError

log = logging.getLogger(__name__)
NOBODY = 65534
TIMED_OUT = 124  # the launcher's exit status when it killed the program at the deadline
UNAVAILABLE = 97  # ... when the namespaces could not be set up


class SandboxUnavailable(LadderError):
    """Isolation cannot be had here (and ``LADDER_SANDBOX=unisolated`` was not chosen)."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock, start-up included
    cpu_s: int = 5
    memory_mb: int = 512  # address space, per process
    file_mb: int = 4  # any single file the code writes (stdout and stderr included)
    processes: int = 16  # processes of the sandbox user (counted inside its user namespace)
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


# The launcher (trusted, stdlib only) runs in a new session: it unshares the namespaces (a user
# namespace too when not root), forks the program as PID 1 of a new PID namespace and waits for it
# until the deadline, then kills it (and with it the namespace). The child makes every mount
# read-only, mounts its own /proc and the private tmpfs, drops to the runner, sets the limits and
# no_new_privs and execs the interpreter with an empty environment.
_LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys, time
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
NEWNS, NEWNET, NEWPID, NEWIPC, NEWUSER = 0x20000, 0x40000000, 0x20000000, 0x8000000, 0x10000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 1 << 18

def fail(what):
    sys.stderr.write("sandbox: %s: %s\n" % (what, os.strerror(ctypes.get_errno()) or "failed"))
    sys.stderr.flush()
    os._exit(97)

class MountAttr(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns_fd")]

isolate = cfg["isolate"]
root = os.geteuid() == 0
uid, gid = os.getuid(), os.getgid()
if isolate:
    if libc.unshare(NEWNS | NEWNET | NEWPID | NEWIPC | (0 if root else NEWUSER)) != 0:
        fail("unshare" + ("" if root else " (user namespaces)"))
    if not root:  # the same uid inside: the capabilities this process holds in the namespace die at exec
        for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (uid, uid)), ("gid_map", "%d %d 1" % (gid, gid))):
            with open("/proc/self/" + name, "w") as f:
                f.write(text)
code = sys.stdin.buffer.read()
pid = os.fork()
if pid:
    deadline = time.monotonic() + cfg["timeout_s"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            os._exit(os.waitstatus_to_exitcode(status) % 256 if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)  # PID 1 of the namespace: the kernel kills all it forked
            os.waitpid(pid, 0)
            os._exit(124)
        time.sleep(0.01)
runner = cfg["uid"] if root else uid
if isolate:
    ro = MountAttr(1, 0, MS_PRIVATE, 0)  # MOUNT_ATTR_RDONLY on every mount, recursively
    if libc.syscall(442, -100, b"/", 0x8000, ctypes.byref(ro), ctypes.sizeof(ro)) != 0:
        fail("read-only mounts (mount_setattr)")
    if libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
        fail("a private /proc")
    for d in cfg["private"]:
        if os.path.isdir(d) and libc.mount(b"tmpfs", d.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=64m,mode=1777") != 0:
            fail("tmpfs over " + d)
    for d in cfg["hide"]:
        if os.path.isdir(d) and libc.mount(b"tmpfs", d.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=1m,mode=755") != 0:
            fail("hiding " + d)
    work = "/tmp/work"
    os.mkdir(work, 0o700)
    os.chown(work, runner, runner if root else gid)
else:
    work = cfg["work"]
path = os.path.join(work, "main.py")
with open(path, "wb") as f:
    f.write(code)
if isolate:
    os.chown(path, runner, runner if root else gid)
lim = cfg["limits"]
for name, value in (("RLIMIT_CPU", lim["cpu_s"]), ("RLIMIT_AS", lim["memory_mb"] << 20),
                    ("RLIMIT_FSIZE", lim["file_mb"] << 20), ("RLIMIT_NPROC", lim["processes"]),
                    ("RLIMIT_NOFILE", lim["open_files"]), ("RLIMIT_CORE", 0)):
    resource.setrlimit(getattr(resource, name), (value, value))
if isolate and root:
    os.setgroups([])
    os.setgid(runner)
    os.setuid(runner)
libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no setuid binary gives anything back
libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: dies with the launcher
os.chdir(work)
env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
os.execve(cfg["python"], [cfg["python"], "-I", "-B", path], env)
"""


def _system_python(root: bool) -> str | None:
    """A system Python for the code: outside the directories it hides, and executable by ``nobody``
    when Ladder runs as root (Ladder's own may sit under a private home directory)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and (
            os.stat(candidate).st_mode & 0o001 if root else os.access(candidate, os.X_OK)
        ):
            return candidate
    return None


def _hidden(python: str) -> list[str]:
    """Where secrets live: home, /root, Ladder's cache (admin key), Ray's token; parents first, and
    never a directory that holds the interpreter itself."""
    home = Path.home()
    cache = Path(os.path.expanduser(os.environ.get("LADDER_CACHE_DIR", "~/.cache/ladder")))
    exe = Path(python).resolve()
    hidden = []
    for d in (home, Path("/root"), Path("/home"), cache, home / ".ray", home / ".ssh"):
        d = d.resolve() if d.exists() else d
        if str(d) != "/" and d != exe and d not in exe.parents and str(d) not in hidden:
            hidden.append(str(d))
    return sorted(hidden, key=lambda p: p.count("/"))


def _mode() -> str:
    mode = os.environ.get("LADDER_SANDBOX", "isolated")
    if mode not in ("isolated", "unisolated"):
        raise SandboxUnavailable(f"LADDER_SANDBOX must be 'isolated' or 'unisolated', not {mode!r}")
    return mode


@functools.cache
def isolation_problem() -> str | None:
    """None when the sandbox isolates on this machine as this user; else the cause, in one line.
    Probed once per process by running a program in the sandbox that checks what it sees."""
    if sys.platform != "linux":
        return "the sandbox needs Linux namespaces"
    if os.geteuid() == 0 and _system_python(True) is None:
        return "no Python that user nobody may run (/usr/bin/python3)"
    probe = "import os\nassert [p for p in os.listdir('/proc') if p.isdigit()] == ['1'], 'the host /proc is visible'"
    r = _run(probe, SandboxLimits(timeout_s=15), True)
    if r.passed:
        return None
    lines = (r.stderr or "").strip().splitlines()
    return (lines[-1] if lines else f"the isolation probe exited {r.returncode}").removeprefix("sandbox: ")


def require_isolation() -> bool:
    """Whether code will run isolated; raises ``SandboxUnavailable`` (one line, the cause) when it
    cannot and ``LADDER_SANDBOX=unisolated`` was not chosen."""
    if _mode() == "unisolated":
        _warn_unisolated()
        return False
    if problem := isolation_problem():
        raise SandboxUnavailable(
            f"the code sandbox cannot isolate here ({problem}); allow user namespaces "
            "(sysctl user.max_user_namespaces) or set LADDER_SANDBOX=unisolated to accept the risk"
        )
    return True


@functools.cache
def _warn_unisolated() -> None:
    log.warning("LADDER_SANDBOX=unisolated: generated code runs with rlimits only (no namespaces)")


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run ``code`` as a script in the sandbox; its exit status decides pass or fail."""
    return _run(code, limits, require_isolation())


def _run(code: str, limits: SandboxLimits, isolated: bool) -> SandboxResult:
    root = os.geteuid() == 0
    python = (_system_python(root) if isolated else None) or sys.executable
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ladder-sandbox-") as tmp:
        work = Path(tmp, "work")
        work.mkdir()
        cfg = {
            "isolate": isolated,
            "uid": NOBODY,
            "work": str(work),
            "python": python,
            "timeout_s": limits.timeout_s,
            "private": ["/tmp", "/var/tmp", "/dev/shm"],
            "hide": _hidden(python),
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
            try:  # the launcher keeps the deadline; this is the backstop should it not
                proc.communicate(code.encode("utf-8", "surrogatepass"), timeout=limits.timeout_s + 5)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait()
            _kill_group(proc.pid)  # unisolated: anything the code left behind in its session
        stdout = out_path.read_bytes()[:64_000].decode("utf-8", "replace")
        stderr = err_path.read_bytes()[:64_000].decode("utf-8", "replace")
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t0
    rc = proc.returncode
    if rc == TIMED_OUT or rc == -signal.SIGKILL:
        status = "timeout"
    elif rc == UNAVAILABLE and stderr.startswith("sandbox:"):
        status = "error"
    else:
        status = "passed" if rc == 0 else "failed"
    return SandboxResult(status, rc, stdout, stderr, seconds, isolated)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
