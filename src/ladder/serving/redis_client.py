"""What replicas share through Redis need on their side: an async client per event loop (an
asyncio connection cannot outlive the loop it was made on; a Serve replica has one loop, in-process
tests one per ``asyncio.run``), and a poll that re-reads shared state off the request's path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class LoopRedis:
    def __init__(self, url: str, timeout_s: float) -> None:
        self.url, self.timeout_s = url, timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = None

    def get(self):  # noqa: ANN201 (redis.asyncio.Redis)
        """This loop's client (made on first use in the loop)."""
        import redis.asyncio as aioredis

        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._client = aioredis.from_url(
                self.url, socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s
            )
        return self._client


class PollEvery:
    """Starts ``refresh()`` at most once per ``poll_s``, in a task of its own (never on the
    request's path), and never while the previous one still runs."""

    def __init__(self, poll_s: float) -> None:
        self.poll_s = poll_s
        self._checked = 0.0
        self._task: asyncio.Task | None = None

    def maybe(self, refresh: Callable[[], Awaitable[None]]) -> None:
        now = time.monotonic()
        if now - self._checked < self.poll_s or (self._task is not None and not self._task.done()):
            return
        self._checked = now
        self._task = asyncio.get_running_loop().create_task(refresh())
