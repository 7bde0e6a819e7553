"""Engines that share one machine's cores take turns, one engine step at a time.

Why: vLLM's CPU engine runs each step's kernels on an OpenMP team bound to its cores. Two such
engines on the same cores (the medium tier answering while the large one takes an escalation)
interleave their threads: a team's barrier waits for a thread the kernel has given to the other
engine, so both crawl (measured by ``benchmarks/engine_sharing.py``; the reason routed serving
delivered 0.81× of always-large). Splitting the cores instead halves the speed of each engine
when it runs alone. Taking turns keeps every engine on every core and makes the sum of their
work the only cost: an engine holds an exclusive file lock (``LADDER_ENGINE_LOCK``, one path per
machine) for the length of one engine step — a forward pass over its batch — and the other
engines wait for it between their own steps. Idle engines block on their input queues and hold
nothing. (A GPU has the same problem with other numbers: see docs/ARCHITECTURE.md.)

``install`` is a vLLM general plugin (entry point ``vllm.general_plugins``): vLLM calls it in
every process it starts, including the engine-core process whose step it wraps. It does nothing
unless ``LADDER_ENGINE_LOCK`` is set, which ``VLLMWorker`` does for ``engine_sharing: turns``.
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


def turns_lock_path() -> str:
    """One lock per machine and user: every engine this user starts here takes turns with the rest."""
    return str(Path(tempfile.gettempdir()) / f"ladder-engine-turns-{os.getuid()}.lock")


def taking_turns(step: Callable[..., Any], path: str) -> Callable[..., Any]:
    """``step`` run under an exclusive lock on ``path`` (opened once per process)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    @functools.wraps(step)
    def turn(*args: Any, **kwargs: Any) -> Any:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            return step(*args, **kwargs)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    return turn


def install() -> None:
    """Wrap vLLM's engine step in the machine's turn lock (only where ``LADDER_ENGINE_LOCK`` is set)."""
    global _installed
    path = os.environ.get(LOCK_ENV)
    if not path or _installed:
        return
    from vllm.v1.engine.core import EngineCore

    EngineCore.step = taking_turns(EngineCore.step, path)
    EngineCore.step_with_batch_queue = taking_turns(EngineCore.step_with_batch_queue, path)
    _installed = True
