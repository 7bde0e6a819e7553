"""An asyncio load generator for Ladder's chat endpoint, and the summary of what it saw.

Closed loop (N clients, each sending its next request when the last one ends) finds capacity;
open loop (a fixed arrival rate) is the soak, because a closed loop slows down with the server and
hides overload. Every request ends in exactly one ``Outcome``: an HTTP status (with whether an
error body had OpenAI's shape and whether a Retry-After came) or a client-side failure (connect,
timeout, protocol) — so "no request lost without an error response" is countable. Loopback only;
every loop is bounded by a duration. Knows HTTP only: no Ray, no models.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import httpx

QUESTIONS = (
    "What is the capital of France?",
    "Name a primary color.",
    "What is 2 + 2?",
    "Say hello.",
    "What is the opposite of hot?",
    "Name a fruit.",
    "How many legs does a cat have?",
    "What color is the sky?",
    "Name a planet.",
    "What is 10 minus 3?",
)


def short_chat(i: int, model: str = "ladder", max_tokens: int = 8) -> dict:
    """The i-th request of a run: a short question, greedy, a few tokens (the load test's unit)."""
    return {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 0,
        "messages": [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})"}],
    }


@dataclass(frozen=True)
class Outcome:
    started: float  # seconds since the run began
    latency_s: float
    status: int | None  # None: no HTTP response at all (see ``failure``)
    failure: str | None = None  # "connect" | "timeout" | "protocol" for client-side failures
    code: str | None = None  # the OpenAI error body's code, when there was one
    retry_after: bool = False
    retry_after_s: float = 0.0
    well_formed: bool = True  # a non-200 came with {"error": {message, type, param, code}}


async def send(client: httpx.AsyncClient, url: str, body: dict, t0: float) -> Outcome:
    start = time.perf_counter()
    try:
        r = await client.post(url, json=body)
    except httpx.TimeoutException:
        return Outcome(start - t0, time.perf_counter() - start, None, "timeout")
    except httpx.ConnectError:
        return Outcome(start - t0, time.perf_counter() - start, None, "connect")
    except httpx.HTTPError:  # reset mid-response, malformed response
        return Outcome(start - t0, time.perf_counter() - start, None, "protocol")
    latency = time.perf_counter() - start
    if r.status_code == 200:
        return Outcome(start - t0, latency, 200)
    code, well_formed = None, False
    try:
        err = r.json()["error"]
        code, well_formed = err.get("code"), {"message", "type", "param", "code"} <= set(err)
    except (ValueError, KeyError, TypeError):
        pass
    try:
        wait = float(r.headers.get("retry-after", 0))
    except ValueError:
        wait = 1.0
    return Outcome(start - t0, latency, r.status_code, None, code, "retry-after" in r.headers, wait, well_formed)


def _client(api_key: str | None, timeout_s: float, connections: int) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(headers=headers, timeout=timeout_s, limits=limits)


async def closed_loop(
    base_url: str,
    api_key: str | None,
    concurrency: int,
    duration_s: float,
    make_body: Callable[[int], dict] = short_chat,
    timeout_s: float = 120,
    honour_retry_after: bool = True,
) -> list[Outcome]:
    """``concurrency`` clients back to back for ``duration_s`` (requests in flight then finish).
    A shed request's client waits its Retry-After before the next one, as OpenAI's clients do;
    a request with no response at all is followed by a 0.5 s pause."""
    url, outcomes, counter = base_url + "/v1/chat/completions", [], iter(range(10**9))
    t0 = time.perf_counter()
    async with _client(api_key, timeout_s, concurrency) as client:

        async def user() -> None:
            while time.perf_counter() - t0 < duration_s:
                outcome = await send(client, url, make_body(next(counter)), t0)
                outcomes.append(outcome)
                # Back off as real clients do: Retry-After when given, half a second when the
                # server did not answer at all (else a dead proxy turns into a hot connect loop).
                wait = outcome.retry_after_s if honour_retry_after and outcome.retry_after else 0.0
                wait = 0.5 if outcome.status is None else wait
                if wait:
                    await asyncio.sleep(min(wait, max(0.0, duration_s - (time.perf_counter() - t0))))

        await asyncio.gather(*(user() for _ in range(concurrency)))
    return outcomes


async def open_loop(
    base_url: str,
    api_key: str | None,
    rate: float,
    duration_s: float,
    make_body: Callable[[int], dict] = short_chat,
    timeout_s: float = 120,
    on_tick: Callable[[float], None] | None = None,
) -> list[Outcome]:
    """Requests arrive at ``rate`` per second for ``duration_s`` whatever the server does."""
    url, tasks = base_url + "/v1/chat/completions", []
    t0 = time.perf_counter()
    async with _client(api_key, timeout_s, 256) as client:
        i = 0
        while (due := t0 + i / rate) < t0 + duration_s:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(send(client, url, make_body(i), t0)))
            if on_tick is not None:
                on_tick(time.perf_counter() - t0)
            i += 1
        return list(await asyncio.gather(*tasks))


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarize(outcomes: list[Outcome], duration_s: float) -> dict:
    ok = [o.latency_s for o in outcomes if o.status == 200]
    shed = [o for o in outcomes if o.status in (429, 503) and o.retry_after]
    other = [o for o in outcomes if o.status not in (200, None) and o not in shed]
    lost = [o for o in outcomes if o.status is None]
    return {
        "requests": len(outcomes),
        "ok": len(ok),
        "shed_with_retry_after": len(shed),
        "other_errors": len(other),
        "no_response": len(lost),
        "malformed_error_bodies": sum(1 for o in outcomes if o.status not in (200, None) and not o.well_formed),
        "codes": sorted({f"{o.status}:{o.code}" for o in outcomes if o.status not in (200, None)}),
        "throughput_rps": len(ok) / duration_s if duration_s else 0.0,
        "error_rate": (len(outcomes) - len(ok)) / len(outcomes) if outcomes else 0.0,
        "p50_s": _quantile(ok, 0.50),
        "p95_s": _quantile(ok, 0.95),
        "p99_s": _quantile(ok, 0.99),
        "max_s": max((o.latency_s for o in outcomes), default=None),
    }


def as_rows(outcomes: list[Outcome]) -> list[dict]:
    return [asdict(o) for o in outcomes]
