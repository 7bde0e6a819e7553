"""The OpenAI chat-completions surface: request parsing, response and error bodies.

Pydantic models at the HTTP boundary; they turn into the kernel's ``Query``. Parameters Ladder
cannot honour (tools, JSON schemas, n > 1) are refused with a 400 before any routing, and the
error body has OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    model_validator,
)

from ladder.errors import InvalidRequest
from ladder.types import CascadeResult, Generation, Message, Query, Route, Sampling

if TYPE_CHECKING:
    from ladder.serving.quotas import Ticket

DEFAULT_MAX_TOKENS = 256
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout",
}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class DepthRequest(BaseModel):
    """Ladder extension: the depth budget for recurrent-depth rungs (others ignore it)."""

    model_config = ConfigDict(extra="forbid")

    max_iterations: StrictInt | None = Field(default=None, ge=1)
    exit_threshold: float | None = Field(default=None, gt=0)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: StrictInt | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # int64, as OpenAI
    n: StrictInt = 1
    logprobs: StrictBool = False
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
    depth: DepthRequest | None = None

    @model_validator(mode="after")
    def _supported(self) -> ChatRequest:
        if self.n != 1:
            raise ValueError("n: only n=1 is supported")
        if self.tools:
            raise ValueError("tools: tool calls are not supported by Ladder's tiers")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise ValueError("response_format: only type 'text' is supported")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop: up to 4 non-empty strings")
        return self

    def to_query(self) -> Query:
        messages = tuple(Message("system" if m.role == "developer" else m.role, m.text()) for m in self.messages)
        if not any(m.content.strip() for m in messages if m.role == "user"):
            raise InvalidRequest("messages: at least one non-empty user message is required", "messages")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        sampling = Sampling(
            max_tokens=self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=tuple(stops),
            max_iterations=self.depth.max_iterations if self.depth else None,
            exit_threshold=self.depth.exit_threshold if self.depth else None,
        )
        return Query(messages, sampling)


def _inline_refs(schema: dict) -> dict:
    """The JSON schema with its ``$defs`` inlined, so it stands alone inside an OpenAPI document."""
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


# The endpoint parses the raw body itself (auth first); this tells OpenAPI clients and fuzzers
# what it accepts.
CHAT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _inline_refs(ChatRequest.model_json_schema())}},
    }
}


def error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "api_error"), "param": param, "code": code}}


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id(given: str | None) -> str:
    """The client's ``x-request-id`` when it is a sane token (it reaches logs), else a new one."""
    return given if given and _REQUEST_ID.fullmatch(given) else f"req-{uuid.uuid4().hex[:20]}"


def usage(gen: Generation) -> dict:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


def _cache_label(result: CascadeResult, cache_enabled: bool) -> str:
    return cache_label(result.route_source, result.cache_hit, cache_enabled)


def cache_label(route_source: str, cache_hit: bool, cache_enabled: bool) -> str:
    if route_source == "forced":
        return "bypass"
    if not cache_enabled:
        return "off"
    return "hit" if cache_hit else "miss"


def stream_headers(tier: str, route: Route, route_source: str, cache_hit: bool, cache_enabled: bool) -> dict[str, str]:
    """What a stream knows when its first token is ready (the rest is in its last chunk's ``ladder``)."""
    headers = {
        "x-ladder-tier": tier,
        "x-ladder-route": route_source,
        "x-ladder-policy-version": route.policy_version,
        "x-ladder-cache": cache_label(route_source, cache_hit, cache_enabled),
    }
    if route.scores:
        headers["x-ladder-score"] = ",".join(f"{s:.4f}" for s in route.scores)
        headers["x-ladder-threshold"] = ",".join(f"{t:.4f}" for t in route.thresholds)
    return headers


def ladder_extension(result: CascadeResult, cache_enabled: bool = True) -> dict:
    """The route taken, for clients and dashboards (mirrors the x-ladder-* headers)."""
    return {
        "tier": result.answer.tier,
        "route": result.route_source,
        "policy_version": result.route.policy_version,
        "start_rung": result.route.start,
        "scores": list(result.route.scores),
        "thresholds": list(result.route.thresholds),
        "rungs_tried": [
            {
                "tier": a.tier,
                "accepted": a.accepted,
                "error": a.error,
                "decided_at": a.decided_at,
                "non_answer": a.non_answer,  # escalated as a refusal, question back, … (ladder.nonanswer)
                "unavailable": a.unavailable,  # skipped: its tier was starting, lost or unvalidated (not an escalation)
                "completion_tokens": a.generation.completion_tokens if a.generation else 0,
                "mean_logprob": _mean(a.generation.logprobs) if a.generation else None,
                "depths": list(a.generation.depths) if a.generation else [],
                "signals": dict(a.generation.signals) if a.generation else {},  # the rung's verifier
                "cost_usd": a.cost_usd,
            }
            for a in result.attempts
        ],
        "escalations": result.escalations,
        # tokens of the answering rung seen when it was accepted (null: the whole answer) and
        # whether they reached the client as they were generated
        "decided_at": result.attempts[-1].decided_at if result.attempts else None,
        "streamed": result.streamed,
        "hedged": False,  # hedged escalation (a second rung started in parallel) is not implemented
        "cache": _cache_label(result, cache_enabled),
        "cost_usd": result.cost_usd,
        "decision_ms": result.decision_s * 1000,
    }


def ratelimit_headers(ticket: Ticket | None) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for a key with limits (after this request's debit), and
    what is left of its budget this period (settled spend and reservations in flight)."""
    if ticket is None:
        return {}
    lim, h = ticket.limits, {}
    if lim.requests_per_min:
        h["x-ratelimit-limit-requests"] = str(lim.requests_per_min)
        h["x-ratelimit-remaining-requests"] = str(max(0, ticket.requests_left))
        h["x-ratelimit-reset-requests"] = f"{ticket.requests_reset_ms / 1000:g}s"
    if lim.tokens_per_min:
        h["x-ratelimit-limit-tokens"] = str(lim.tokens_per_min)
        h["x-ratelimit-remaining-tokens"] = str(max(0, ticket.tokens_left))
        h["x-ratelimit-reset-tokens"] = f"{ticket.tokens_reset_ms / 1000:g}s"
    if lim.budget_usd:
        left = lim.budget_usd - ticket.spent_usd - ticket.reserved_usd
        h["x-ladder-budget-remaining-usd"] = f"{max(0.0, left):.6f}"
    return h


def ladder_headers(result: CascadeResult, cache_enabled: bool = True) -> dict[str, str]:
    """A whole answer's headers: a stream's, plus what is known only at the end."""
    headers = stream_headers(result.answer.tier, result.route, result.route_source, result.cache_hit, cache_enabled)
    headers["x-ladder-escalations"] = str(result.escalations)
    headers["x-ladder-cost-usd"] = f"{result.cost_usd:.8f}"
    return headers


def completion_body(result: CascadeResult, completion_id: str, want_logprobs: bool, cache_enabled: bool = True) -> dict:
    gen = result.answer
    logprobs = None
    if want_logprobs:
        logprobs = {
            "content": [
                {"token": str(t), "logprob": lp, "bytes": None, "top_logprobs": []}
                for t, lp in zip(gen.token_ids, gen.logprobs)
            ]
        }
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": gen.tier,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": gen.text},
                "finish_reason": gen.finish_reason,
                "logprobs": logprobs,
            }
        ],
        "usage": usage(gen),
        "ladder": ladder_extension(result, cache_enabled),
    }


def chunk(completion_id: str, created: int, model: str, delta: dict, finish: str | None = None) -> dict:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _mean(values: tuple[float, ...]) -> float | None:
    return sum(values) / len(values) if values else None


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """One line naming the first offending parameter, and the parameter."""
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return "the request body is not valid JSON", None
    param = ".".join(str(p) for p in first["loc"]) or None
    msg = str(first["msg"]).removeprefix("Value error, ")
    return (f"{param}: {msg}" if param and not msg.startswith(param) else msg), param
