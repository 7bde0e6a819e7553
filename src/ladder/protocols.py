"""Kernel protocols: the three seams of the cascade.

A Policy decides (pure: no I/O), a Worker generates, a RouteCache remembers decisions. The router
receives concrete implementations as arguments and never imports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ladder.types import Delta, Generation, PrefixVerdict, Query, Route


@runtime_checkable
class Policy(Protocol):
    version: str

    def route(self, query: Query) -> Route: ...  # pure in the query, so cacheable

    def accept(self, answer: Generation, route: Route) -> bool: ...  # False => escalate

    # A streamed cascade reads the first prefix_tokens(rung) tokens of a rung's answer (0: none)
    # and asks judge_prefix (``partial`` holds those tokens); WAIT defers to ``accept``.
    def prefix_tokens(self, rung: int) -> int: ...

    def judge_prefix(self, partial: Generation, route: Route) -> PrefixVerdict: ...


@runtime_checkable
class Worker(Protocol):
    tier: str

    async def generate(self, query: Query) -> Generation: ...


@runtime_checkable
class StreamWorker(Protocol):
    """What a streamed cascade needs of a rung: its deltas as generated, then the Generation.
    Closing the iterator early (``aclose``) must stop the generation (a rung that lost, a client
    that left)."""

    tier: str

    def stream(self, query: Query) -> AsyncIterator[Delta | Generation]: ...


@runtime_checkable
class TierWorker(Worker, Protocol):
    """The whole contract of a tier's worker, met by every backend (transformers, vllm, recurrent,
    huginn): what the Serve app (load, generate, stream, the health check's ``model``), the batch
    jobs (load, generate) and the CLI (load, generate_sync) call. ``compose.build_worker`` returns
    one; a backend's own prompt checks (empty prompt, context length) raise ``InvalidRequest``."""

    tier: str

    def load(self) -> TierWorker: ...  # loads weights / starts the engine; returns self

    def generate_sync(self, query: Query) -> Generation: ...  # one answer from synchronous code

    def stream(self, query: Query) -> AsyncIterator[Delta | Generation]: ...  # deltas, then the Generation

    @property
    def model(self) -> object | None: ...  # None until loaded (Serve's health check reads it)


@runtime_checkable
class RouteCache(Protocol):
    async def get(self, key: str) -> Route | None: ...  # an outage is a miss, never an error

    async def put(self, key: str, route: Route) -> None: ...
