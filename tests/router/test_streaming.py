"""The streamed cascade: live tokens from the accepted rung only, decisions on prefixes, and
rungs that lose are stopped."""

import asyncio

import pytest

from ladder.errors import InvalidRequest, NoRungAvailable, WorkerFailed
from ladder.router import StreamStart, run_cascade, stream_cascade
from ladder.types import CascadeResult, Query, Route
from tests.fakes import ScriptedPolicy, ScriptedWorker


def ladder_of(*logprobs: float, words: int = 12, **kw) -> list[ScriptedWorker]:
    names = ["small", "medium", "large"]
    return [ScriptedWorker(names[i], lp, words=words, **kw.get(names[i], {})) for i, lp in enumerate(logprobs)]


def collect(policy, workers, route=None, cost=lambda g: 0.0):  # noqa: ANN001, ANN201
    """Every event, with the number of tokens each rung had produced when each event arrived."""

    async def go():  # noqa: ANN202
        events = []
        async for event in stream_cascade(Query.of("q"), policy, workers, None, cost, route):
            events.append((event, [w.produced for w in workers]))
        return events

    return asyncio.run(go())


def parts(events):  # noqa: ANN001, ANN201
    start = [e for e, _ in events if isinstance(e, StreamStart)]
    texts = [e for e, _ in events if isinstance(e, str)]
    result = [e for e, _ in events if isinstance(e, CascadeResult)]
    return start, texts, result


def test_accepted_prefix_streams_the_rest_live():
    workers = ladder_of(-0.1, -0.1, -0.1)
    policy = ScriptedPolicy(prefix_k=2)
    events = collect(policy, workers)
    (start,), texts, (result,) = parts(events)
    assert isinstance(events[0][0], StreamStart) and start.tier == "small" and start.decided_at == 2
    # the first text went out after 2 tokens, long before the 12-token answer was complete
    first_text_at = next(produced for e, produced in events if isinstance(e, str))
    assert first_text_at[0] == 2
    assert "".join(texts) == result.answer.text and len(texts) > 5
    assert result.streamed and result.attempts[0].decided_at == 2 and result.escalations == 0
    assert len(policy.prefix_calls) == 1 and len(policy.prefix_calls[0].logprobs) == 2


def test_rejected_prefix_stops_the_rung_and_the_client_sees_only_the_next_rung():
    workers = ladder_of(-3.0, -0.1, -0.1)
    events = collect(ScriptedPolicy(prefix_k=3), workers)
    (start,), texts, (result,) = parts(events)
    assert start.tier == "medium" and result.answer.tier == "medium"
    assert "".join(texts) == result.answer.text and "small" not in "".join(texts)  # never spliced
    assert workers[0].produced == 3 and workers[0].closed == 1  # stopped at the decision, not at 12
    small = result.attempts[0]
    assert (small.tier, small.accepted, small.decided_at, small.generation.completion_tokens) == ("small", False, 3, 3)


def test_a_rejected_prefix_costs_only_its_tokens():
    workers = ladder_of(-3.0, -0.1, -0.1)
    events = collect(ScriptedPolicy(prefix_k=3), workers, cost=lambda g: g.completion_tokens)
    (result,) = parts(events)[2]
    assert [a.cost_usd for a in result.attempts] == [3, 12]


def test_waiting_holds_the_answer_until_the_whole_of_it_is_judged():
    workers = ladder_of(-0.1, -0.1, -0.1)
    events = collect(ScriptedPolicy(prefix_k=2, prefix_wait=("small",)), workers)
    (start,), texts, (result,) = parts(events)
    first_text_at = next(produced for e, produced in events if isinstance(e, str))
    assert first_text_at[0] == 12  # the whole answer, then the text
    assert start.decided_at is None and not result.streamed and texts == [result.answer.text]


def test_whole_answer_rejection_escalates_and_the_top_rung_streams_live():
    workers = ladder_of(-3.0, -3.0, -0.1)
    events = collect(ScriptedPolicy(prefix_k=0), workers)  # no prefix decisions: whole answers only
    (start,), texts, (result,) = parts(events)
    assert [a.tier for a in result.attempts] == ["small", "medium", "large"]
    assert start.tier == "large" and start.decided_at == 0 and result.streamed
    first_text_at = next(produced for e, produced in events if isinstance(e, str))
    assert first_text_at == [12, 12, 1]  # the top rung's first token went out at once
    assert "".join(texts) == result.answer.text


def test_same_answer_and_attempts_as_the_unstreamed_cascade():
    for lps in [(-0.1, -0.1, -0.1), (-3.0, -0.1, -0.1), (-3.0, -3.0, -3.0)]:
        streamed = parts(collect(ScriptedPolicy(), ladder_of(*lps)))[2][0]
        plain = asyncio.run(run_cascade(Query.of("q"), ScriptedPolicy(), ladder_of(*lps)))
        assert streamed.answer.text == plain.answer.text
        assert [(a.tier, a.accepted) for a in streamed.attempts] == [(a.tier, a.accepted) for a in plain.attempts]


def test_pinned_route_streams_its_tier_live_and_never_escalates():
    workers = ladder_of(-9.0, -0.1, -0.1)
    policy = ScriptedPolicy(prefix_k=2)
    events = collect(policy, workers, route=Route(0, policy.version, pinned=True))
    (start,), _, (result,) = parts(events)
    assert start.tier == "small" and result.route_source == "forced" and result.streamed
    assert workers[1].produced == 0 and policy.prefix_calls == []


def test_a_rung_failing_before_it_streamed_escalates():
    workers = ladder_of(-0.1, -0.1, -0.1, small={"fail_after": 1})
    (start,), texts, (result,) = parts(collect(ScriptedPolicy(prefix_k=4), workers))
    assert start.tier == "medium" and "died mid-stream" in result.attempts[0].error


def test_a_rung_failing_after_it_streamed_ends_the_stream_with_an_error():
    workers = ladder_of(-0.1, -0.1, -0.1, small={"fail_after": 6})

    async def go():  # noqa: ANN202
        seen = []
        with pytest.raises(WorkerFailed, match="failed while streaming"):
            async for event in stream_cascade(Query.of("q"), ScriptedPolicy(prefix_k=2), workers):
                seen.append(event)
        return seen

    seen = asyncio.run(go())
    assert isinstance(seen[0], StreamStart) and seen[0].tier == "small"
    assert workers[1].produced == 0  # nothing else may answer once small's tokens were sent


def test_every_rung_failing_raises_as_the_unstreamed_cascade_does():
    bad = InvalidRequest("too long", "messages")
    with pytest.raises(InvalidRequest):
        collect(
            ScriptedPolicy(),
            ladder_of(-0.1, -0.1, -0.1, small={"fail": bad}, medium={"fail": bad}, large={"fail": bad}),
        )
    with pytest.raises(NoRungAvailable):
        collect(
            ScriptedPolicy(),
            ladder_of(-0.1, -0.1, small={"fail": RuntimeError("a")}, medium={"fail": RuntimeError("b")}),
        )


def test_a_consumer_that_leaves_stops_the_rung():
    workers = ladder_of(-0.1, -0.1, -0.1, words=200)

    async def go():  # noqa: ANN202
        gen = stream_cascade(Query.of("q"), ScriptedPolicy(prefix_k=2), workers)
        async for event in gen:
            if isinstance(event, str):
                break
        await gen.aclose()
        produced = workers[0].produced
        await asyncio.sleep(0.05)
        return produced

    produced = asyncio.run(go())
    assert workers[0].closed == 1 and workers[0].produced == produced < 10
