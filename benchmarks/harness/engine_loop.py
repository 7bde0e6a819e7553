"""Closed loops of greedy requests straight at a tier's worker (no Serve, no HTTP): what the
engine benchmarks drive."""

from __future__ import annotations

import asyncio

from ladder.types import Query

PROMPTS = (
    "Explain how a refrigerator keeps food cold.",
    "Write a short story about a lighthouse keeper.",
    "What are the main causes of inflation?",
    "Describe the water cycle in detail.",
    "Give me tips for learning a new language.",
    "Explain the difference between TCP and UDP.",
    "Why is the sky blue? Explain in detail.",
    "Summarise the plot of Romeo and Juliet.",
)


async def closed_loop(worker, clients: int, duration: float, max_tokens: int = 64) -> None:  # noqa: ANN001
    """``clients`` loops, each sending its next request when the last one ends, for ``duration``
    s; requests still running then are cancelled (vLLM aborts them). Each prompt carries a
    counter so no two requests share a prefix-cache entry."""

    async def client(c: int) -> None:
        i = c
        while True:
            q = Query.of(PROMPTS[i % len(PROMPTS)] + f" (#{i})", max_tokens=max_tokens, temperature=0.0)
            await worker.generate(q)
            i += clients

    tasks = [asyncio.ensure_future(client(c)) for c in range(clients)]
    await asyncio.sleep(duration)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
