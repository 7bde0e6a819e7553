"""Kernel protocols: the three seams of the cascade.

A Policy decides (pure: no I/O), a Worker generates, a RouteCache remembers decisions. The router
receives concrete implementations as arguments and never imports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ladder.types import Generation, Query, Route


@runtime_checkable
class Policy(Protocol):
    version: str

    def route(self, query: Query) -> Route: ...  # pure in the query, so cacheable

    def accept(self, answer: Generation, route: Route) -> bool: ...  # False => escalate


@runtime_checkable
class Worker(Protocol):
    tier: str

    async def generate(self, query: Query) -> Generation: ...


@runtime_checkable
class RouteCache(Protocol):
    async def get(self, key: str) -> Route | None: ...  # an outage is a miss, never an error

    async def put(self, key: str, route: Route) -> None: ...
