"""An in-process route cache: for offline evaluation, batch jobs and tests (no Redis needed).

Bounded LRU; knows nothing about TTLs across processes. The Redis adapter lives in ``cluster``.
"""

from __future__ import annotations

from collections import OrderedDict

from ladder.types import Route


class InMemoryRouteCache:
    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Route] = OrderedDict()
        self.hits = 0
        self.misses = 0

    async def get(self, key: str) -> Route | None:
        route = self._items.get(key)
        if route is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return route

    async def put(self, key: str, route: Route) -> None:
        self._items[key] = route
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
