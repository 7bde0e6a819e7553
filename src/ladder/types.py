"""Kernel value types shared by every layer.

Frozen dataclasses only: what a query is, what a routing decision is, what a tier answered and what
the cascade did. This module knows nothing about models, Ray, Redis or HTTP and imports nothing
from the package, so every layer (and every Ray worker process) can depend on it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of one request. temperature == 0 means greedy."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Depth budget for workers whose compute per token can vary (recurrent-depth rungs); None =
    # the rung's own budget. Workers of fixed depth ignore them.
    max_iterations: int | None = None
    exit_threshold: float | None = None

    @property
    def greedy(self) -> bool:
        """Below 1e-4 the tempered distribution is a point mass, and dividing logits by such a
        temperature overflows to inf/NaN (found by fuzzing): decode greedily instead."""
        return self.temperature < 1e-4


@dataclass(frozen=True)
class Query:
    messages: tuple[Message, ...]
    sampling: Sampling = field(default_factory=Sampling)

    @staticmethod
    def of(prompt: str, **sampling: object) -> Query:
        return Query((Message("user", prompt),), Sampling(**sampling))  # type: ignore[arg-type]

    @property
    def text(self) -> str:
        """The conversation as plain text, the input of routing featurizers."""
        return "\n".join(m.content for m in self.messages)


@dataclass(frozen=True)
class Route:
    """A routing decision: the rung to start from, and the scores that led to it."""

    start: int
    policy_version: str
    scores: tuple[float, ...] = ()  # per rung boundary: P(cheaper rung is good enough)
    thresholds: tuple[float, ...] = ()
    pinned: bool = False  # the client asked for this tier by name; never escalate


@dataclass(frozen=True)
class Generation:
    """What one tier produced for one query."""

    tier: str
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # log p of each generated token under the sampling distribution
    prompt_tokens: int
    finish_reason: str  # "stop" | "length"
    prefill_s: float
    decode_s: float
    depths: tuple[int, ...] = ()  # layers (or iterations) each generated token used; empty = full
    # Confidence signals computed next to the answer by the rung's verifier (``verifier:`` in the
    # tier's config, e.g. code_parses / examples / examples_passed); empty when it has none.
    signals: tuple[tuple[str, float], ...] = ()

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class Delta:
    """One piece of a streamed answer: the text it adds (possibly empty while text is held back,
    e.g. a possible stop sequence) and the tokens generated since the previous delta, with their
    log-probabilities. A stream of deltas ends with the complete ``Generation``."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()
    prompt_tokens: int = 0  # set on the first delta, so a stream cut short can still be costed


class PrefixVerdict(str, Enum):
    """What a policy makes of the first tokens of a rung's answer (a streamed cascade asks)."""

    ACCEPT = "accept"  # good enough: stream the rest of this rung's answer live
    ESCALATE = "escalate"  # not good enough: stop this rung, start the next
    WAIT = "wait"  # undecided: judge the whole answer (the client waits for it)


@dataclass(frozen=True)
class Attempt:
    """One rung tried by the cascade: its answer, or why it produced none."""

    rung: int
    tier: str
    generation: Generation | None
    accepted: bool
    error: str | None = None
    cost_usd: float = 0.0
    # Tokens of this rung's answer the policy had seen when it decided; None = the whole answer.
    # A prefix decision that escalated leaves a ``generation`` holding only that prefix.
    decided_at: int | None = None
    non_answer: str | None = None  # why it was escalated without asking the policy (ladder.nonanswer)
    unavailable: bool = False  # skipped: the tier was starting, lost or unvalidated (not an escalation)
    starting: bool = False  # skipped because the tier was still starting (a longer Retry-After)


@dataclass(frozen=True)
class CascadeResult:
    answer: Generation
    route: Route
    attempts: tuple[Attempt, ...]
    cache_hit: bool
    route_source: str  # "router" | "cache" | "forced"
    decision_s: float
    streamed: bool = False  # the accepted rung's tokens reached the client as they were generated

    @property
    def escalations(self) -> int:
        """Rungs climbed past; a rung skipped because it was still starting is not one."""
        return sum(not a.unavailable for a in self.attempts) - 1

    @property
    def cost_usd(self) -> float:
        return sum(a.cost_usd for a in self.attempts)
