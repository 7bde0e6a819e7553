"""Engines on the same cores take turns, one engine step at a time (``vllm.sharing: turns``).

Why: vLLM's CPU engine runs each step's kernels on an OpenMP team bound to its cores. Two such
engines on the same cores interleave their threads: a team's barrier waits for a thread the
kernel has given to the other engine, so both crawl. With turns, an engine holds an exclusive
file lock per core it runs on (``LADDER_ENGINE_LOCK``) for the length of one engine step — a
forward pass over its batch — and engines on those cores wait between their own steps; idle
engines block on their input queues and hold nothing. Measured (``benchmarks/engine_sharing.py``,
docs/STATUS.md): turns keeps each engine at full speed when it runs alone, but when two are busy
at once disjoint cores (``vllm.cores``) do more work, because a memory-bound decode step costs
nearly as much at 4 sequences as at 16 and the other engine waits for all of it — while when the
large tier carries the load, turns does far more (a full-batch step has both cores; a split leaves
it one). The default config puts every engine on every core, taking turns (session 17's
measurements). (A GPU has the same problem with other numbers: see docs/ARCHITECTURE.md.)

With lending (``vllm.sharing: lend``) an engine owns its cores (``vllm.cores``) and runs its
steps there; when the engines that own another core have been idle for ``IDLE_S``, it borrows
that core for the step too (its threads are pinned to the cores it holds: ``Lender``). Disjoint cores
while both engines are busy, every core for whichever engine is busy alone: the routed ladder's
load moves between tiers by the second (a burst of escalations keeps the large tier busy while
the medium one idles), which a fixed split cannot follow. A core's owners touch its activity file
after each step; a borrower takes the core's lock only when that file is older than ``IDLE_S``
and nobody holds the lock, so an owner that wakes up waits for one borrowed step at most.

``install`` is a vLLM general plugin (entry point ``vllm.general_plugins``): vLLM calls it in
every process it starts, including the engine-core process whose step it wraps (turns) and the
worker process whose forward pass it wraps (lend). It does nothing unless ``LADDER_ENGINE_LOCK``
or ``LADDER_ENGINE_LEND`` is set, which ``VLLMWorker`` does for ``sharing: turns`` / ``lend``.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOCK_ENV = "LADDER_ENGINE_LOCK"
LEND_ENV = "LADDER_ENGINE_LEND"
# An owner idle this long lends its core: longer than the gap between two steps of a busy engine
# (scheduling, detokenizing: milliseconds), short beside a burst of requests (seconds).
IDLE_S = 0.25
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


def lend_spec(home: list[int], every: list[int]) -> str:
    """``LADDER_ENGINE_LEND``'s value for an engine owning ``home`` among the cores ``every``:
    ``{"home": {core: lock file}, "others": {core: lock file}}``."""
    paths = dict(zip(sorted(every), turns_lock_paths(every), strict=True))
    return json.dumps(
        {
            "home": {str(c): paths[c] for c in sorted(home)},
            "others": {str(c): paths[c] for c in sorted(every) if c not in home},
        }
    )


def pin_process(cores: list[int]) -> None:
    """Every thread of this process (the OpenMP team, vLLM's polling threads) onto ``cores``, and
    the OpenMP team sized to them where a kernel asks for the default size (vLLM's CPU worker
    blocks ``torch.set_num_threads``; ``torch._C``'s is the same call)."""
    import torch

    torch._C.set_num_threads(len(cores))
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # a thread that ended meanwhile
            pass


class Lender:
    """The cores one engine step may use: its own (waiting for their locks) plus every other core
    whose owners are idle (never waiting), with the process's threads pinned to the cores held.

    The OpenMP team keeps one thread per core of the machine: vLLM's CPU kernels (oneDNN GEMMs)
    fix their thread count when they are built, so resizing the team per step does not reach
    them (measured: two engines each "at one thread" still ran two and collapsed like unshared
    engines). Pinning the whole process to the cores held works for any kernel."""

    def __init__(
        self,
        home: dict[int, str],
        others: dict[int, str],
        place: Callable[[list[int]], None],
        idle_s: float = IDLE_S,
    ):
        self.home = [(c, os.open(p, os.O_RDWR | os.O_CREAT, 0o600), p + ".active") for c, p in sorted(home.items())]
        self.others = [(c, os.open(p, os.O_RDWR | os.O_CREAT, 0o600), p + ".active") for c, p in sorted(others.items())]
        for _, _, active in self.home + self.others:
            if not os.path.exists(active):
                with open(active, "a"):
                    pass
        self.place = place
        self.idle_s = idle_s
        self.cores: list[int] = []
        self.borrowed_steps = 0  # steps that ran on more cores than the engine owns

    def _idle(self, active: str) -> bool:
        try:
            return time.time() - os.stat(active).st_mtime >= self.idle_s
        except OSError:
            return True

    def acquire(self) -> list[int]:
        """Take the locks of the cores this step runs on; returns the borrowed ones' descriptors."""
        for _, fd, _ in self.home:
            fcntl.flock(fd, fcntl.LOCK_EX)
        cores = [c for c, _, _ in self.home]
        borrowed = []
        for core, fd, active in self.others:
            if not self._idle(active):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its owner (or another borrower) is running a step
                continue
            borrowed.append(fd)
            cores.append(core)
        if cores != self.cores:
            self.place(sorted(cores))
            self.cores = cores
        self.borrowed_steps += bool(borrowed)
        return borrowed

    def release(self, borrowed: list[int]) -> None:
        for _, _, active in self.home:  # only the owned cores: a borrowed core stays idle to its owners
            os.utime(active)
        for fd in borrowed:
            fcntl.flock(fd, fcntl.LOCK_UN)
        for _, fd, _ in reversed(self.home):
            fcntl.flock(fd, fcntl.LOCK_UN)

    def wrap(self, step: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(step)
        def lent(*args: Any, **kwargs: Any) -> Any:
            borrowed = self.acquire()
            try:
                return step(*args, **kwargs)
            finally:
                self.release(borrowed)

        return lent


def install() -> None:
    """Wrap vLLM's engine step in its cores' turn locks (where ``LADDER_ENGINE_LOCK`` is set: the
    lock files, separated by ``os.pathsep``), or the worker's forward pass in a ``Lender`` (where
    ``LADDER_ENGINE_LEND`` is set: ``lend_spec``)."""
    global _installed
    if _installed:
        return
    paths = [p for p in os.environ.get(LOCK_ENV, "").split(os.pathsep) if p]
    lend = os.environ.get(LEND_ENV)
    if paths:
        from vllm.v1.engine.core import EngineCore

        EngineCore.step = taking_turns(EngineCore.step, paths)
        EngineCore.step_with_batch_queue = taking_turns(EngineCore.step_with_batch_queue, paths)
        _installed = True
    elif lend:
        from vllm.v1.worker.cpu_worker import CPUWorker

        spec = json.loads(lend)
        lender = Lender(
            {int(c): p for c, p in spec["home"].items()}, {int(c): p for c, p in spec["others"].items()}, pin_process
        )
        # the forward pass and the sampling of each step (the worker process runs both)
        CPUWorker.execute_model = lender.wrap(CPUWorker.execute_model)
        CPUWorker.sample_tokens = lender.wrap(CPUWorker.sample_tokens)
        _installed = True
