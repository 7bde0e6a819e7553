"""Typed errors of the whole package (kernel: imports nothing).

They are raised where the problem is found and mapped to HTTP codes, CLI exit codes and metric
labels only at the edges (``ladder.cluster`` and ``ladder.cli``).
"""


class LadderError(Exception):
    """Base class: a problem Ladder can explain in one line."""


class ConfigError(LadderError):
    """The configuration is invalid; the message names the field."""


class InvalidRequest(LadderError):
    """The request cannot be served as asked (empty prompt, bad parameter, too long)."""

    code: str | None = None  # OpenAI's error code for it, when it has one

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


class ContextOverflow(InvalidRequest):
    """Prompt + max_tokens do not fit a tier's context (a larger rung's may still fit)."""

    code = "context_length_exceeded"

    @classmethod
    def check(cls, tier: str, prompt_tokens: int, max_tokens: int, context: int) -> None:
        """The one rule every backend applies before generating."""
        if prompt_tokens + max_tokens > context:
            raise cls(
                f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds tier {tier}'s context "
                f"of {context} tokens",
                "messages",
            )


class UnknownTier(InvalidRequest):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown tier {name!r}; known tiers: {', '.join(known)}", "model", 404)


class WeightsUnavailable(LadderError):
    """A tier's weights are missing (package not installed, path absent, offline hub)."""


class ChecksumMismatch(WeightsUnavailable):
    """Assembled weights do not match the SHA-256 recorded in the registry."""


class EngineStartFailed(LadderError):
    """A tier's engine could not start (bad settings, no memory, no device); names tier and cause."""


class WorkerFailed(LadderError):
    """A tier raised or died while generating."""


class WorkerTimeout(WorkerFailed):
    """A tier did not answer within its budget."""


class TierOverloaded(WorkerFailed):
    """A tier's queue is full: it shed the request at once rather than let it wait unbounded."""


class TierUnavailable(WorkerFailed):
    """A rung the cascade skips at once, as unavailable rather than as an escalation."""


class TierStarting(TierUnavailable):
    """A tier with no replica up yet (still loading its engine): skipped instead of waiting out
    the tier's timeout."""


class TierLost(TierUnavailable):
    """A tier that was up and has no running replica now (its node lost, and no other node offers
    its placement): skipped until Serve runs one again."""


class TierUnvalidated(TierUnavailable):
    """A tier whose weights are not the ones the live policy was fitted on: the policy's judgement
    of it means nothing, so routed requests skip it until a policy fitted on its weights is pushed."""


class NoRungAvailable(LadderError):
    """Every rung the cascade tried failed; ``overloaded`` when every one of them shed load,
    ``starting`` when every one of them is still starting."""

    def __init__(self, message: str, overloaded: bool = False, starting: bool = False) -> None:
        super().__init__(message)
        self.overloaded = overloaded
        self.starting = starting


class TierUpdateRefused(LadderError):
    """A tier update refused before anything started (the running tier is untouched): a 4xx."""

    def __init__(self, message: str, status: int, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param


class PolicyFileError(LadderError):
    """A policy file is corrupt, from a newer format, or fails its checksum."""


class OutcomesError(LadderError):
    """An outcomes file is malformed (missing columns, bad labels, empty split)."""


class TargetUnreachable(LadderError):
    """A calibration target cannot be met on the validation data."""
