import asyncio

import pytest

from ladder.errors import InvalidRequest, NoRungAvailable, TierOverloaded
from ladder.router import route_key, run_cascade
from ladder.router.memory import InMemoryRouteCache
from ladder.types import Message, Query, Route, Sampling
from tests.fakes import ScriptedPolicy, ScriptedWorker


def run(coro):
    return asyncio.run(coro)


def ladder_of(*logprobs: float, fail: dict[int, Exception] | None = None) -> list[ScriptedWorker]:
    fail = fail or {}
    names = ["small", "medium", "large", "xl"]
    return [ScriptedWorker(names[i], lp, fail.get(i)) for i, lp in enumerate(logprobs)]


def test_stops_at_first_accepted_rung():
    workers = ladder_of(-0.5, -0.1, -0.1)
    result = run(run_cascade(Query.of("q"), ScriptedPolicy(min_logprob=-1.0), workers))
    assert result.answer.tier == "small"
    assert [len(w.calls) for w in workers] == [1, 0, 0]
    assert result.escalations == 0


def test_escalates_in_order_and_never_repeats_a_rung():
    workers = ladder_of(-3.0, -2.0, -0.2)
    result = run(run_cascade(Query.of("q"), ScriptedPolicy(min_logprob=-1.0), workers))
    assert [a.tier for a in result.attempts] == ["small", "medium", "large"]
    assert [a.accepted for a in result.attempts] == [False, False, True]
    assert all(len(w.calls) == 1 for w in workers)
    assert result.answer.tier == "large"


def test_starts_at_the_routed_rung():
    workers = ladder_of(-0.1, -0.1, -0.1)
    result = run(run_cascade(Query.of("q"), ScriptedPolicy(start=1), workers))
    assert [a.tier for a in result.attempts] == ["medium"]
    assert len(workers[0].calls) == 0


def test_top_rung_is_accepted_even_when_unconfident():
    workers = ladder_of(-5.0, -5.0)
    result = run(run_cascade(Query.of("q"), ScriptedPolicy(min_logprob=-1.0), workers))
    assert result.answer.tier == "medium" and result.attempts[-1].accepted


def test_failing_tier_escalates_instead_of_failing_the_request():
    workers = ladder_of(-0.1, -0.1, fail={0: RuntimeError("boom")})
    result = run(run_cascade(Query.of("q"), ScriptedPolicy(), workers))
    assert result.answer.tier == "medium"
    assert "boom" in (result.attempts[0].error or "")


def test_failing_top_rung_returns_the_lower_answer_rather_than_none():
    workers = ladder_of(-3.0, -0.1, fail={1: RuntimeError("down")})
    result = run(run_cascade(Query.of("q"), ScriptedPolicy(min_logprob=-1.0), workers))
    assert result.answer.tier == "small"


def test_every_rung_failing_raises_no_rung_available():
    workers = ladder_of(-0.1, -0.1, fail={0: RuntimeError("a"), 1: TimeoutError("b")})
    with pytest.raises(NoRungAvailable, match="every rung failed"):
        run(run_cascade(Query.of("q"), ScriptedPolicy(), workers))


def test_every_rung_shedding_load_is_reported_as_overload_and_a_mix_is_not():
    full = TierOverloaded("queue full")
    with pytest.raises(NoRungAvailable) as shed:
        run(run_cascade(Query.of("q"), ScriptedPolicy(), ladder_of(-0.1, -0.1, fail={0: full, 1: full})))
    assert shed.value.overloaded
    with pytest.raises(NoRungAvailable) as mixed:
        run(run_cascade(Query.of("q"), ScriptedPolicy(), ladder_of(-0.1, -0.1, fail={0: full, 1: RuntimeError("x")})))
    assert not mixed.value.overloaded


def test_client_error_on_every_rung_stays_a_client_error():
    bad = InvalidRequest("too long", "messages")
    workers = ladder_of(-0.1, -0.1, fail={0: bad, 1: bad})
    with pytest.raises(InvalidRequest, match="too long"):
        run(run_cascade(Query.of("q"), ScriptedPolicy(), workers))


def test_pinned_route_never_escalates_and_bypasses_policy():
    workers = ladder_of(-9.0, -0.1)
    policy = ScriptedPolicy(min_logprob=-1.0)
    pinned = Route(0, policy.version, pinned=True)
    result = run(run_cascade(Query.of("q"), policy, workers, route=pinned))
    assert result.answer.tier == "small" and result.route_source == "forced"
    assert policy.route_calls == 0 and len(workers[1].calls) == 0


def test_cache_hit_skips_policy_route():
    cache, policy, workers = InMemoryRouteCache(), ScriptedPolicy(start=1), ladder_of(-0.1, -0.1)
    first = run(run_cascade(Query.of("q"), policy, workers, cache))
    second = run(run_cascade(Query.of("q"), policy, workers, cache))
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert policy.route_calls == 1
    assert second.route == first.route and second.route_source == "cache"


def test_cost_is_summed_over_every_attempt():
    workers = ladder_of(-3.0, -0.1)
    result = run(run_cascade(Query.of("q"), ScriptedPolicy(min_logprob=-1.0), workers, cost=lambda g: 1.5))
    assert result.cost_usd == pytest.approx(3.0)


def test_key_changes_with_policy_version_and_content_not_whitespace():
    q = Query.of("What is  2+2?")
    assert route_key(q, "v1") != route_key(q, "v2")
    assert route_key(q, "v1") == route_key(Query.of(" What is 2+2? "), "v1")
    assert route_key(q, "v1") != route_key(Query.of("What is 2+3?"), "v1")
    other_role = Query((Message("system", "What is 2+2?"),), Sampling())
    assert route_key(q, "v1") != route_key(other_role, "v1")


def test_key_holds_no_prompt_text():
    key = route_key(Query.of("my secret password is hunter2"), "v1")
    assert "hunter2" not in key and key.startswith("ladder:route:v1:v1:")
