"""The simplest policy: start at a fixed rung; optionally escalate on low mean log-probability.

It is the fallback when no learned policy file is configured. Pure: no I/O.
"""

from __future__ import annotations

from ladder.types import Generation, PrefixVerdict, Query, Route


class FixedPolicy:
    def __init__(self, start: int = 0, min_mean_logprob: float | None = None) -> None:
        self.start = start
        self.min_mean_logprob = min_mean_logprob
        threshold = "none" if min_mean_logprob is None else f"{min_mean_logprob:g}"
        self.version = f"fixed-s{start}-t{threshold}"

    def route(self, query: Query) -> Route:
        return Route(start=self.start, policy_version=self.version)

    def accept(self, answer: Generation, route: Route) -> bool:
        if self.min_mean_logprob is None or not answer.logprobs:
            return True
        return sum(answer.logprobs) / len(answer.logprobs) >= self.min_mean_logprob

    def prefix_tokens(self, rung: int) -> int:
        return 0  # judged on whole answers only

    def judge_prefix(self, partial: Generation, route: Route) -> PrefixVerdict:
        return PrefixVerdict.WAIT
