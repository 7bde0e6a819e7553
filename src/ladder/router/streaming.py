"""The cascade for streamed answers: the accepted rung's tokens reach the client as generated.

The client only ever sees the accepted rung's tokens (two rungs are never spliced), so a rung's
text is held back until the policy accepts it. Where the policy can judge a prefix
(``Policy.prefix_tokens``), it decides after the first k tokens: ACCEPT flushes them and streams
the rest live, ESCALATE closes the rung's stream at once (which stops its generation) and starts
the next rung, WAIT holds the whole answer for ``Policy.accept``. The last rung that may answer
streams live from its first token: nothing can escalate past it.

Events, in order: one ``StreamStart`` (which rung answers, when its first text is ready), text
pieces (``str``), and finally the ``CascadeResult`` (with ``streamed``). Failures before the
``StreamStart`` behave as in ``run_cascade`` (escalate; ``NoRungAvailable`` or the request's own
``InvalidRequest`` when none answered); a failure of the answering rung after it began streaming
raises ``WorkerFailed``: its tokens were already sent, so nothing may replace them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from ladder.errors import InvalidRequest, TierOverloaded, WorkerFailed
from ladder.nonanswer import non_answer, refuses
from ladder.protocols import Policy, RouteCache, StreamWorker
from ladder.router.cascade import CostFn, _free, asked, failed, no_rung_error, routed
from ladder.types import Attempt, CascadeResult, Delta, Generation, PrefixVerdict, Query, Route


@dataclass(frozen=True)
class StreamStart:
    tier: str
    route: Route
    cache_hit: bool
    route_source: str
    decided_at: int | None  # tokens of the answer seen when it was accepted; None = the whole answer


Event = StreamStart | str | CascadeResult


def _partial(tier: str, deltas: list[Delta], k: int) -> Generation:
    """The first k tokens of a rung's answer, as the policy's prefix judgement sees them."""
    ids = tuple(t for d in deltas for t in d.token_ids)[:k]
    lps = tuple(lp for d in deltas for lp in d.logprobs)[:k]
    prompt = next((d.prompt_tokens for d in deltas if d.prompt_tokens), 0)
    return Generation(tier, "".join(d.text for d in deltas), ids, lps, prompt, "length", 0.0, 0.0)


async def stream_cascade(
    query: Query,
    policy: Policy,
    workers: Sequence[StreamWorker],
    cache: RouteCache | None = None,
    cost: CostFn = _free,
    route: Route | None = None,
    buffered: bool = False,
) -> AsyncIterator[Event]:
    """``buffered``: the client reads the whole answer at once (a plain, non-streamed request).
    Prefix gates still stop a doomed rung after k tokens, but nothing is shown early, so an
    answer accepted on its prefix is still checked whole for non-answers before it is returned."""
    route, hit, source, decision_s = await routed(query, policy, cache, route, len(workers))
    question = asked(query)
    last = len(workers) - 1 if not route.pinned else route.start
    attempts: list[Attempt] = []
    client_errors: list[InvalidRequest] = []
    overloads = 0

    def start(tier: str, decided_at: int | None) -> StreamStart:
        return StreamStart(tier, route, hit, source, decided_at)

    def result(answer: Generation, streamed: bool) -> CascadeResult:
        return CascadeResult(answer, route, tuple(attempts), hit, source, decision_s, streamed)

    for rung in range(min(route.start, len(workers) - 1), last + 1):
        worker = workers[rung]
        live = rung == last
        k = 0 if live else policy.prefix_tokens(rung)
        verdict = PrefixVerdict.ACCEPT if live else PrefixVerdict.WAIT
        decided_at: int | None = 0 if live else None
        held: list[Delta] = []  # deltas not yet shown (and, for the judgement, their tokens)
        seen = 0
        shown = False
        final: Generation | None = None
        stream = worker.stream(query)
        try:
            async for item in stream:
                if isinstance(item, Generation):
                    final = item
                    continue
                held.append(item)
                if verdict is not PrefixVerdict.ACCEPT:
                    seen += len(item.token_ids)
                    if not (k and decided_at is None and seen >= k):
                        continue
                    decided_at = k
                    partial = _partial(worker.tier, held, k)
                    # a prefix that already declines is a non-answer whatever its log-probabilities
                    refused = refuses(partial.text)
                    verdict = PrefixVerdict.ESCALATE if refused else policy.judge_prefix(partial, route)
                    if verdict is PrefixVerdict.ESCALATE:
                        break  # leaving the loop closes the stream: the rung stops generating
                    if verdict is PrefixVerdict.WAIT:
                        continue
                if buffered:
                    continue  # nothing is shown before the whole answer is judged
                # accepted (now, or from the start): what was held goes out, then each delta as it comes
                if not shown:
                    shown = True
                    yield start(worker.tier, decided_at)
                if text := "".join(d.text for d in held):
                    yield text
                held.clear()
        except Exception as exc:  # a failing tier degrades service: try the next rung
            if shown:  # its tokens were sent: nothing else may answer now
                raise (
                    exc
                    if isinstance(exc, WorkerFailed)
                    else WorkerFailed(f"tier {worker.tier} failed while streaming: {type(exc).__name__}: {exc}")
                ) from exc
            if isinstance(exc, InvalidRequest):
                client_errors.append(exc)
            overloads += isinstance(exc, TierOverloaded)
            attempts.append(failed(rung, worker.tier, exc))
            continue
        finally:
            await stream.aclose()
        if verdict is PrefixVerdict.ESCALATE:
            attempts.append(
                Attempt(
                    rung,
                    worker.tier,
                    partial,
                    False,
                    cost_usd=cost(partial),
                    decided_at=k,
                    non_answer="refusal" if refused else None,
                )
            )
            continue
        if final is None:
            if shown:
                raise WorkerFailed(f"tier {worker.tier}: the stream ended without its answer")
            attempts.append(
                Attempt(rung, worker.tier, None, False, "WorkerFailed: the stream ended without its answer")
            )
            continue
        # Once shown, an answer stands; the top rung's answer stands (nothing is above it); any other
        # is checked whole for non-answers before the policy's own judgement.
        kind = None if shown or live else non_answer(question, final.text)
        accepted = shown or live or (kind is None and (verdict is PrefixVerdict.ACCEPT or policy.accept(final, route)))
        judged_at = decided_at if verdict is PrefixVerdict.ACCEPT else None
        attempts.append(
            Attempt(rung, worker.tier, final, accepted, cost_usd=cost(final), decided_at=judged_at, non_answer=kind)
        )
        if accepted:
            if not shown:
                yield start(worker.tier, None)
                if final.text:
                    yield final.text
            yield result(final, streamed=shown)
            return
    # Nothing accepted: the top rung failed after a lower one answered in full; its answer beats none.
    answered = [a for a in attempts if a.generation is not None and a.decided_at is None]
    if answered:
        best = answered[-1].generation
        assert best is not None
        yield start(best.tier, None)
        if best.text:
            yield best.text
        yield result(best, streamed=False)
        return
    raise no_rung_error(attempts, client_errors, overloads)
