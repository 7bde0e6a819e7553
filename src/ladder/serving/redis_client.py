"""An async Redis client per event loop: an asyncio connection cannot outlive the loop it was made
on. A Serve replica has one loop; in-process tests run one per ``asyncio.run``."""

from __future__ import annotations

import asyncio


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
