"""The simplest policy: start at a fixed rung; optionally escalate on low mean log-probability.

It is the fallback when no learned policy file is configured. With ``prefix_tokens`` (and a
threshold) a streamed cascade applies the same rule to the first k tokens, so a routed stream
is accepted or escalated early. Pure: no I/O.
"""

from __future__ import annotations

from ladder.types import Generation, PrefixVerdict, Query, Route


class FixedPolicy:
    def __init__(self, start: int = 0, min_mean_logprob: float | None = None, prefix_tokens: int = 0) -> None:
        self.start = start
        self.min_mean_logprob = min_mean_logprob
        self.prefix_k = prefix_tokens if min_mean_logprob is not None else 0
        threshold = "none" if min_mean_logprob is None else f"{min_mean_logprob:g}"
        self.version = f"fixed-s{start}-t{threshold}" + (f"-k{self.prefix_k}" if self.prefix_k else "")

    def route(self, query: Query) -> Route:
        return Route(start=self.start, policy_version=self.version)

    def accept(self, answer: Generation, route: Route) -> bool:
        if self.min_mean_logprob is None or not answer.logprobs:
            return True
        return sum(answer.logprobs) / len(answer.logprobs) >= self.min_mean_logprob

    def prefix_tokens(self, rung: int) -> int:
        return self.prefix_k

    def judge_prefix(self, partial: Generation, route: Route) -> PrefixVerdict:
        if not self.prefix_k:
            return PrefixVerdict.WAIT
        return PrefixVerdict.ACCEPT if self.accept(partial, route) else PrefixVerdict.ESCALATE
