"""The async side of a worker whose model answers in one piece (recurrent-depth rungs, Huginn):
``generate`` runs ``generate_sync`` off the event loop, ``stream`` sends the whole text as one
``Delta`` and then the ``Generation`` — the stream contract every backend keeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ladder.types import Delta, Generation, Query


class WholeAnswer:
    def generate_sync(self, query: Query) -> Generation:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    async def generate(self, query: Query) -> Generation:
        return await asyncio.to_thread(self.generate_sync, query)

    async def stream(self, query: Query) -> AsyncIterator[Delta | Generation]:
        gen = await self.generate(query)
        yield Delta(gen.text, gen.token_ids, gen.logprobs, gen.prompt_tokens)
        yield gen
