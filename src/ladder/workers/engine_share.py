"""Engines on the same cores take turns, one engine step at a time (``vllm.sharing: turns``).

Why: vLLM's CPU engine runs each step's kernels on an OpenMP team bound to its cores. Two such
engines on the same cores interleave their threads: a team's barrier waits for a thread the
kernel has given to the other engine, so both crawl. With turns, an engine holds an exclusive
file lock per core it runs on (``LADDER_ENGINE_LOCK``) for the length of one engine step — a
forward pass over its batch — and engines on those cores wait between their own steps; idle
engines block on their input queues and hold nothing. Measured (``benchmarks/engine_sharing.py``,
docs/STATUS.md): turns keeps each engine at full speed when it runs alone, but when two are busy
at once disjoint cores (``vllm.cores``) do more work, because a memory-bound decode step costs
nearly as much at 4 sequences as at 16 and the other engine waits for all of it. So the default
config gives the two engines that routed load keeps busy together their own cores, and turns
only orders engines that do share a core. (A GPU has the same problem with other numbers: see
docs/ARCHITECTURE.md.)

``install`` is a vLLM general plugin (entry point ``vllm.general_plugins``): vLLM calls it in
every process it starts, including the engine-core process whose step it wraps. It does nothing
unless ``LADDER_ENGINE_LOCK`` is set, which ``VLLMWorker`` does for ``sharing: turns``.
"""

from __future__ import annotations

import fcntl
import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOCK_ENV = "LADDER_ENGINE_LOCK"
_installed = False


def turns_lock_paths(cores: list[int]) -> list[str]:
    """One lock per core (per machine and user): an engine takes the locks of the cores it runs
    on, so engines on the same cores take turns and engines on disjoint cores never wait."""
    folder = Path(tempfile.gettempdir())
    return [str(folder / f"ladder-engine-turns-{os.getuid()}-cpu{c}.lock") for c in sorted(cores)]


def taking_turns(step: Callable[..., Any], paths: list[str]) -> Callable[..., Any]:
    """``step`` run under exclusive locks on ``paths`` (opened once per process; always taken in
    sorted order, so engines with overlapping core sets cannot deadlock)."""
    fds = [os.open(p, os.O_RDWR | os.O_CREAT, 0o600) for p in sorted(paths)]

    @functools.wraps(step)
    def turn(*args: Any, **kwargs: Any) -> Any:
        for fd in fds:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            return step(*args, **kwargs)
        finally:
            for fd in reversed(fds):
                fcntl.flock(fd, fcntl.LOCK_UN)

    return turn


def install() -> None:
    """Wrap vLLM's engine step in its cores' turn locks (only where ``LADDER_ENGINE_LOCK`` is set:
    the lock files, separated by ``os.pathsep``)."""
    global _installed
    paths = [p for p in os.environ.get(LOCK_ENV, "").split(os.pathsep) if p]
    if not paths or _installed:
        return
    from vllm.v1.engine.core import EngineCore

    EngineCore.step = taking_turns(EngineCore.step, paths)
    EngineCore.step_with_batch_queue = taking_turns(EngineCore.step_with_batch_queue, paths)
    _installed = True
