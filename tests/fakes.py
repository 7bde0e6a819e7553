"""Hand-written fakes of the kernel protocols, for tests of the pure layers."""

from __future__ import annotations

from ladder.types import Generation, Query, Route


def make_generation(tier: str, text: str = "ok", logprob: float = -0.1, n: int = 3) -> Generation:
    return Generation(tier, text, tuple(range(n)), (logprob,) * n, 5, "stop", 0.0, 0.0)


class ScriptedWorker:
    """Answers with a fixed text and confidence, or raises; records every call."""

    def __init__(self, tier: str, logprob: float = -0.1, fail: Exception | None = None) -> None:
        self.tier = tier
        self.logprob = logprob
        self.fail = fail
        self.calls: list[Query] = []

    async def generate(self, query: Query) -> Generation:
        self.calls.append(query)
        if self.fail is not None:
            raise self.fail
        return make_generation(self.tier, f"answer from {self.tier}", self.logprob)


class ScriptedPolicy:
    """Starts at ``start``; accepts answers whose mean logprob is at least ``min_logprob``."""

    def __init__(self, start: int = 0, min_logprob: float = -1.0, version: str = "test-1") -> None:
        self.start = start
        self.min_logprob = min_logprob
        self.version = version
        self.route_calls = 0

    def route(self, query: Query) -> Route:
        self.route_calls += 1
        return Route(self.start, self.version, scores=(0.5,), thresholds=(0.4,))

    def accept(self, answer: Generation, route: Route) -> bool:
        return sum(answer.logprobs) / len(answer.logprobs) >= self.min_logprob
