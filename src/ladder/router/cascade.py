"""The cascade loop: one short function that is the same in the server, in batch jobs and offline.

It knows the protocols only: the policy decides where to start and whether to accept, workers
generate, the cache remembers decisions. A failing worker is an escalation, not a crash; only when
every rung from the start has failed does it raise ``NoRungAvailable``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from ladder.errors import InvalidRequest, NoRungAvailable, TierOverloaded, TierStarting, TierUnavailable
from ladder.nonanswer import non_answer
from ladder.protocols import Policy, RouteCache, Worker
from ladder.router.keys import route_key
from ladder.types import Attempt, CascadeResult, Generation, Query, Route

CostFn = Callable[[Generation], float]


def _free(_: Generation) -> float:
    return 0.0


def adopt(cached: Route, policy: Policy, rungs: int) -> Route | None:
    """What a decision read back from the cache may do, for the buffered and the streamed cascade
    alike: another policy's decision is ignored, a pinned one refused (only a client pins, and never
    through the cache), the start clamped to the rungs there are. None: decide afresh."""
    if cached.pinned or cached.policy_version != policy.version:
        return None
    return replace(cached, start=min(max(cached.start, 0), rungs - 1))


async def decide(query: Query, policy: Policy, cache: RouteCache | None, rungs: int) -> tuple[Route, bool]:
    """The routing decision, from the cache when it has one (a cache outage reads as a miss)."""
    key = route_key(query, policy.version)
    cached = await cache.get(key) if cache is not None else None
    if cached is not None and (route := adopt(cached, policy, rungs)) is not None:
        return route, True
    route = policy.route(query)
    if cache is not None:
        await cache.put(key, route)
    return route, False


async def routed(
    query: Query, policy: Policy, cache: RouteCache | None, route: Route | None, rungs: int
) -> tuple[Route, bool, str, float]:
    """(route, cache hit, source, seconds spent deciding); a given ``route`` is pinned by the client."""
    t0 = time.perf_counter()
    if route is not None:
        return route, False, "forced", 0.0
    route, hit = await decide(query, policy, cache, rungs)
    return route, hit, "cache" if hit else "router", time.perf_counter() - t0


def asked(query: Query) -> str:
    """What the answer must answer: the last user message (the whole conversation when none)."""
    users = [m.content for m in query.messages if m.role == "user"]
    return users[-1] if users else query.text


def failed(rung: int, tier: str, exc: Exception) -> Attempt:
    """The attempt of a rung that raised (a tier still starting, lost, or one the live policy was
    not fitted on, is marked unavailable)."""
    return Attempt(
        rung,
        tier,
        None,
        False,
        f"{type(exc).__name__}: {exc}",
        unavailable=isinstance(exc, TierUnavailable),
        starting=isinstance(exc, TierStarting),
    )


def no_rung_error(attempts: list[Attempt], client_errors: list[InvalidRequest], overloads: int) -> Exception:
    """Why nothing answered: the request's own fault (4xx) when every rung refused it, else a 503."""
    if client_errors and len(client_errors) == len(attempts):
        return client_errors[-1]
    errors = "; ".join(f"{a.tier}: {a.error}" for a in attempts)
    return NoRungAvailable(
        f"every rung failed ({errors})",
        overloaded=overloads == len(attempts),
        # every rung still loading its engine: worth a longer Retry-After than a lost or refused tier
        starting=bool(attempts) and all(a.starting for a in attempts),
    )


async def run_cascade(
    query: Query,
    policy: Policy,
    workers: Sequence[Worker],
    cache: RouteCache | None = None,
    cost: CostFn = _free,
    route: Route | None = None,
) -> CascadeResult:
    """Answer ``query`` from the cheapest acceptable rung, climbing only upward.

    ``route`` pins a decision (a client naming a tier); otherwise the policy/cache decides.
    """
    route, hit, source, decision_s = await routed(query, policy, cache, route, len(workers))
    last = len(workers) - 1 if not route.pinned else route.start
    attempts: list[Attempt] = []
    client_errors: list[InvalidRequest] = []
    overloads = 0
    for rung in range(min(route.start, len(workers) - 1), last + 1):
        worker = workers[rung]
        try:
            answer = await worker.generate(query)
        except Exception as exc:  # a failing tier degrades service: try the next rung
            if isinstance(exc, InvalidRequest):  # e.g. too long for this rung; a larger may fit
                client_errors.append(exc)
            overloads += isinstance(exc, TierOverloaded)
            attempts.append(failed(rung, worker.tier, exc))
            continue
        # a non-answer is never accepted from a rung that may escalate (ladder.nonanswer)
        kind = None if rung == last else non_answer(asked(query), answer.text)
        accepted = rung == last or (kind is None and policy.accept(answer, route))
        attempts.append(Attempt(rung, worker.tier, answer, accepted, cost_usd=cost(answer), non_answer=kind))
        if accepted:
            return CascadeResult(answer, route, tuple(attempts), hit, source, decision_s)
    answered = [a for a in attempts if a.generation is not None]
    if answered:  # the top rung failed after a lower one answered: its answer beats none
        best = answered[-1]
        return CascadeResult(best.generation, route, tuple(attempts), hit, source, decision_s)  # type: ignore[arg-type]
    raise no_rung_error(attempts, client_errors, overloads)
