"""The processes a command started, read from /proc: what a clean stop must leave none of; and
how a test ends one it started."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def descendants(root: int) -> set[int]:
    """``root`` and every process below it (Ray's raylet, workers, the Redis server ...)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit():
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += children.get(pid, [])
    return seen


def _running(pid: int) -> bytes | None:
    """Its command line while ``pid`` runs (a zombie has ended); None once it is gone."""
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return None
        return Path(f"/proc/{pid}/cmdline").read_bytes()[:80]
    except OSError:
        return None


def survivors(pids: set[int], wait_s: float = 30.0) -> dict[int, bytes]:
    """Those of ``pids`` still running after up to ``wait_s`` seconds, with their command lines."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = {p: cmd for p in pids if (cmd := _running(p)) is not None}
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.5)


def end(proc: subprocess.Popen, sig: int, timeout_s: float) -> None:
    """Stop ``proc`` as an operator would (``sig``), killing it only if it has not exited within
    ``timeout_s``: what a test's teardown does with the ``ladder serve`` it started."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
