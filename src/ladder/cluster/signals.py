"""Stopping on a signal: SIGTERM (systemd, Docker, Kubernetes) and SIGINT (Ctrl-C) alike.

Ray's core worker installs a SIGTERM handler that aborts the process, leaving the embedded Redis
and Ray's agents running; ``Runtime`` installs this one after ``ray.init`` instead. The first
signal raises ``KeyboardInterrupt`` in the main thread: the command stops taking work and lets
what is in flight finish (``ladder serve`` drains for ``server.drain_s``), then leaves its
``with Runtime`` block, which stops Serve, Ray and Redis. A second signal raises again, cutting the
drain short. Once the teardown has begun (``tearing_down``) signals are ignored, so stopping Ray
and Redis always runs to its end and leaves no process behind.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignals:
    def __init__(self) -> None:
        self.received = 0
        self.tearing_down = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers (and Python delivers signals only there)
        for sig in SIGNALS:
            previous = signal.signal(sig, self._on_signal)
            self._previous.setdefault(sig, previous)

    def restore(self) -> None:
        """The handlers from before the first ``install`` (a test process gets its own back)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.received += 1
        name = signal.Signals(signum).name
        if self.tearing_down:  # stopping Ray and Redis is never interrupted halfway
            print(f"{name}: already stopping", file=sys.stderr, flush=True)
            return
        first = self.received == 1
        print(
            f"{name}: stopping{' (a second signal stops at once)' if first else ' at once'} ...",
            file=sys.stderr,
            flush=True,
        )
        raise KeyboardInterrupt
