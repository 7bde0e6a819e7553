"""The HTTP app in-process (no Ray, Redis or weights): the real FastAPI routes of ``gateway`` over
an ASGI transport, with scripted workers as tiers. Each typed error reaches the client as one
status, OpenAI-style body and header set, from the handlers registered on the app."""

import asyncio
import json

import httpx
import pytest

from ladder.cluster.settings import LadderConfig
from ladder.errors import (
    ContextOverflow,
    LadderError,
    NoRungAvailable,
    TierLost,
    TierStarting,
    UnknownTier,
    WorkerFailed,
    WorkerTimeout,
)
from ladder.serving.gateway import Gateway, _answer
from tests.fakes import ScriptedWorker
from tests.serving.gateway_app import ADMIN, CODE, KEY, call, chat, config, gateway, learned, routed


@pytest.fixture
def tiers():
    return [ScriptedWorker("small", logprob=-3.0, words=6), ScriptedWorker("medium", logprob=-0.1, words=6)]


def test_a_routed_request_escalates_and_reports_the_ladder(tiers):
    r = call(gateway(tiers, min_mean_logprob=-1.0), "POST", "/v1/chat/completions", **chat())
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "medium" and body["choices"][0]["message"]["content"] == "answer from medium w0 w1 w2"
    assert r.headers["x-ladder-tier"] == "medium" and body["ladder"]["escalations"] == 1
    assert [a["tier"] for a in body["ladder"]["rungs_tried"]] == ["small", "medium"]


def test_a_stream_sends_the_accepted_rung_and_ends_with_the_ladder_object(tiers):
    r = call(gateway(tiers, min_mean_logprob=-1.0), "POST", "/v1/chat/completions", **chat(stream=True))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e.get("choices"))
    assert text == "answer from medium w0 w1 w2" and r.text.rstrip().endswith("data: [DONE]")
    assert events[-1]["ladder"]["rungs_tried"][0]["tier"] == "small"


@pytest.mark.parametrize(
    "key,path,status,code",
    [
        (None, "/v1/chat/completions", 401, "invalid_api_key"),
        ("wrong", "/v1/models", 401, "invalid_api_key"),
        (KEY, "/v1/models/nope", 404, "model_not_found"),
    ],
)
def test_access_errors_have_openai_bodies(tiers, key, path, status, code):
    method = "POST" if "chat" in path else "GET"
    r = call(gateway(tiers), method, path, key=key, **(chat() if method == "POST" else {}))
    assert r.status_code == status and r.json()["error"]["code"] == code
    assert tiers[0].calls == []  # refused before any tier was asked


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({"model": "ladder", "messages": "hi"}, 400, "messages"),
        ({"model": "ladder", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 65}, 400, "max_tokens"),
        ({"model": "huge", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ],
)
def test_bad_requests_are_4xx_and_reach_no_tier(tiers, body, status, param):
    r = call(gateway(tiers), "POST", "/v1/chat/completions", json=body)
    assert r.status_code == status and r.json()["error"]["param"] == param
    assert tiers[0].calls == [] and tiers[1].calls == []


def test_a_failing_pinned_tier_is_503_with_retry_after_and_no_other_tier_answers():
    tiers = [ScriptedWorker("small", fail=WorkerFailed("tier small: boom")), ScriptedWorker("medium")]
    r = call(gateway(tiers), "POST", "/v1/chat/completions", **chat(model="small"))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "no_rung_available" and tiers[1].calls == []


def test_the_error_table_gives_each_typed_error_its_status():
    assert _answer(WorkerTimeout("t"))[:3] == (504, None, "tier_failed")
    assert _answer(WorkerFailed("t"))[0] == 503
    assert _answer(NoRungAvailable("x", overloaded=True))[2:] == ("overloaded", {"Retry-After": "2"})
    assert _answer(ContextOverflow("too long", "messages"))[:3] == (400, "messages", "context_length_exceeded")
    assert _answer(UnknownTier("x", ["small"]))[:3] == (404, "model", "model_not_found")
    assert _answer(LadderError("?"))[0] == 500


def test_a_failing_rung_is_skipped_and_when_every_rung_fails_the_answer_is_503():
    tiers = [ScriptedWorker("small", fail=WorkerFailed("tier small: boom")), ScriptedWorker("medium")]
    r = call(gateway(tiers), "POST", "/v1/chat/completions", **chat())
    assert r.status_code == 200 and r.json()["model"] == "medium"
    dead = [ScriptedWorker(t, fail=WorkerFailed(f"tier {t}: boom")) for t in ("small", "medium")]
    r = call(gateway(dead), "POST", "/v1/chat/completions", **chat())
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_rung_available"


def test_metrics_count_each_answer_once(tiers):
    gw = gateway(tiers)
    call(gw, "POST", "/v1/chat/completions", **chat())
    call(gw, "POST", "/v1/chat/completions", key=None, **chat())
    text = call(gw, "GET", "/metrics").text
    assert 'ladder_requests_total{status="200"} 1.0' in text and 'ladder_requests_total{status="401"} 1.0' in text


def test_admin_routes_need_the_admin_key_from_anywhere_and_refuse_a_malformed_push(tiers):
    gw = gateway(tiers)
    r = call(gw, "PUT", "/admin/policy", key=ADMIN, content=b"not json")
    assert r.status_code == 400 and "tensors_b64" in r.json()["error"]["message"]
    assert call(gw, "GET", "/admin/shadow", key=ADMIN).json()["error"]["code"] == "shadow_off"
    # loopback proves nothing (a same-host proxy makes every client loopback): no key, no entry
    for key in (None, KEY, "admin-wrong"):
        r = call(gw, "GET", "/admin/policy", key=key)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    # with no admin key configured at all, the admin API is off rather than open
    off = Gateway(
        config().model_copy(update={"server": config().server.model_copy(update={"admin_keys": []})}),
        tiers,
        tiers,
        None,
    )
    r = call(off, "GET", "/admin/policy", key=None)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert call(gw, "GET", "/admin/policy", key=ADMIN).status_code == 200


def test_a_buffered_request_stops_a_doomed_rung_after_its_prefix():
    # The fixed policy judges the first 2 tokens: small's are unsure, so its generation is stopped
    # there although the client did not ask to stream (before, a buffered request ran it to its end).
    small = ScriptedWorker("small", logprob=-3.0, words=40)
    medium = ScriptedWorker("medium", logprob=-0.1, words=6)
    r = call(gateway([small, medium], min_mean_logprob=-1.0, prefix_tokens=2), "POST", "/v1/chat/completions", **chat())
    assert r.status_code == 200 and r.json()["model"] == "medium"
    assert small.closed == 1 and small.produced < 10
    tried = r.json()["ladder"]["rungs_tried"]
    assert tried[0]["decided_at"] == 2 and tried[0]["completion_tokens"] == 2 and not tried[0]["accepted"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ("I'm sorry, but I can't assist with that.", "refusal"),
        ("Can you explain the difference between a list and a tuple in Python?", "question_back"),
    ],
)
def test_a_confident_non_answer_is_escalated(answer, kind, stream):
    # Quoted from issue 28: medium's refusal and question back were accepted by the IDK step.
    small = ScriptedWorker("small", logprob=-0.01, text=answer)
    medium = ScriptedWorker("medium", logprob=-0.1, words=6)
    body = {"messages": [{"role": "user", "content": "Who wrote 'Pride and Prejudice'?"}], "stream": stream}
    r = call(gateway([small, medium], min_mean_logprob=-1.0), "POST", "/v1/chat/completions", **chat(**body))
    assert r.status_code == 200
    if stream:
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e.get("choices"))
        ladder = events[-1]["ladder"]
    else:
        text, ladder = r.json()["choices"][0]["message"]["content"], r.json()["ladder"]
    assert text == "answer from medium w0 w1 w2"
    assert ladder["rungs_tried"][0]["non_answer"] == kind and ladder["escalations"] == 1


def test_the_top_rung_answers_even_when_it_declines():
    # nothing is above the top rung: its refusal is the answer (and a pinned tier is never judged)
    small = ScriptedWorker("small", logprob=-3.0, words=6)
    medium = ScriptedWorker("medium", logprob=-0.1, text="I cannot help with that.")
    r = call(gateway([small, medium], min_mean_logprob=-1.0), "POST", "/v1/chat/completions", **chat())
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "I cannot help with that."
    r = call(gateway([medium, small]), "POST", "/v1/chat/completions", **chat(model="small"))
    assert r.json()["choices"][0]["message"]["content"] == "I cannot help with that."


@pytest.mark.parametrize("stream", [False, True])
def test_a_failing_tier_s_cause_goes_to_the_log_not_to_the_client(stream, caplog):
    cause = "engine core died at /root/.cache/ladder/models/x (node 10.1.2.3)"
    tiers = [ScriptedWorker(n, logprob=-0.1, fail=WorkerFailed(cause)) for n in ("small", "medium")]
    r = call(gateway(tiers), "POST", "/v1/chat/completions", headers={"x-request-id": "rid-7"}, **chat(stream=stream))
    body = r.text
    assert ("tier_failed" in body or "no_rung_available" in body) and "rid-7" in body
    assert "/root" not in body and "10.1.2.3" not in body
    assert any(cause in rec.getMessage() and "rid-7" in rec.getMessage() for rec in caplog.records)


def test_ready_is_503_while_a_tier_is_starting_and_200_once_all_answer(tiers):
    class Starting(ScriptedWorker):
        state = "starting"

        async def ready(self) -> str:
            return self.state

    medium = Starting("medium", logprob=-0.1, words=6)
    gw = gateway([tiers[0], medium])
    r = call(gw, "GET", "/ready", key=None)
    assert r.status_code == 503 and r.json()["tiers"] == {"small": "ready", "medium": "starting"}
    assert r.headers["retry-after"] and not r.json()["ready"]
    assert call(gw, "GET", "/health", key=None).status_code == 200  # alive all the same
    medium.state = "ready"
    r = call(gw, "GET", "/ready", key=None)
    assert r.status_code == 200 and r.json()["ready"] and r.json()["redis"] == "off"
    assert "degraded" not in r.json()
    # lost after it was up (its node gone): routed around, so the app stays in the balancer, named
    medium.state = "unavailable"
    r = call(gw, "GET", "/ready", key=None)
    assert r.status_code == 200 and r.json()["degraded"] == ["medium"]
    assert r.json()["tiers"]["medium"] == "unavailable"
    medium.state = "failed"  # an engine that is down in a live replica: not ready
    assert call(gw, "GET", "/ready", key=None).status_code == 503


def test_ready_is_503_when_no_tier_can_answer():
    class Lost(ScriptedWorker):
        async def ready(self) -> str:
            return "unavailable"

    r = call(gateway([Lost("small", logprob=-0.1), Lost("medium", logprob=-0.1)]), "GET", "/ready", key=None)
    assert r.status_code == 503 and r.json()["degraded"] == ["small", "medium"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_starting_tier_is_skipped_as_unavailable_not_counted_as_an_escalation(tiers, stream):
    small = ScriptedWorker("small", fail=TierStarting("tier small is starting"))
    gw = gateway([small, tiers[1]])
    r = call(gw, "POST", "/v1/chat/completions", **chat(stream=stream))
    assert r.status_code == 200
    if stream:
        last = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")][-1]
        ladder = last["ladder"]
    else:
        ladder = r.json()["ladder"]
        assert r.headers["x-ladder-escalations"] == "0"
    assert ladder["tier"] == "medium" and ladder["escalations"] == 0
    assert [(t["tier"], t["unavailable"]) for t in ladder["rungs_tried"]] == [("small", True), ("medium", False)]
    metrics = call(gw, "GET", "/metrics").text
    assert 'ladder_tier_starting_total{tier="small"} 1.0' in metrics
    assert 'ladder_tier_errors_total{tier="small"}' not in metrics and "ladder_escalations_total 0.0" in metrics


@pytest.mark.parametrize("model", ["ladder", "small"])
def test_every_allowed_tier_starting_is_503_tiers_starting_with_retry_after(model):
    starting = [ScriptedWorker(n, fail=TierStarting(f"tier {n} is starting")) for n in ("small", "medium")]
    r = call(gateway(starting), "POST", "/v1/chat/completions", **chat(model=model))
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["error"]["code"] == "tiers_starting" and "starting" in r.json()["error"]["message"]


@pytest.mark.parametrize("model", ["ladder", "small"])
def test_every_allowed_tier_lost_is_503_no_rung_available_not_starting(model):
    """A tier lost with its node is not starting: the 503 says no rung is available (the cause
    goes to the log) and asks for a short retry."""
    lost = [ScriptedWorker(n, fail=TierLost(f"tier {n} has no running replica")) for n in ("small", "medium")]
    r = call(gateway(lost), "POST", "/v1/chat/completions", **chat(model=model))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "no_rung_available" and "starting" not in r.json()["error"]["message"]


def test_draining_refuses_new_requests_with_503_while_streams_in_flight_finish():
    """``ladder serve``'s SIGTERM path: POST /admin/drain (admin key only), then new chat requests
    get 503 ``draining`` + Retry-After and /ready 503, while a stream already running ends whole
    and ``in_flight`` counts it until its last chunk. (Real sockets: ASGITransport buffers a
    whole response, so a stream would be over before the drain.)"""
    from tests.serving.live_server import running

    tiers = [ScriptedWorker("small", words=60, pause_s=0.02), ScriptedWorker("medium")]
    gw = gateway(tiers)
    auth, admin = {"authorization": f"Bearer {KEY}"}, {"authorization": f"Bearer {ADMIN}"}

    async def go(url: str) -> tuple:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            assert (await client.post("/admin/drain", headers=auth)).status_code == 401
            body = chat(model="small", stream=True, max_tokens=64)["json"]
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=auth) as stream:
                chunks = stream.aiter_lines()
                first = await chunks.__anext__()  # the stream is under way
                drain = await client.post("/admin/drain", headers=admin)
                late = await client.post("/v1/chat/completions", headers=auth, **chat())
                ready = await client.get("/ready")
                text = first + "".join([line async for line in chunks])
            await asyncio.sleep(0.2)
            state = await client.get("/admin/drain", headers=admin)
            return drain, late, ready, state, text

    with running(gw) as url:
        drain, late, ready, state, text = asyncio.run(go(url))
    assert drain.json() == {"draining": True, "in_flight": 1}
    assert late.status_code == 503 and late.headers["retry-after"] == "2" and late.json()["error"]["code"] == "draining"
    assert ready.status_code == 503 and ready.json()["draining"] is True
    assert text.rstrip().endswith("data: [DONE]") and "w56" in text  # the stream in flight ended whole
    assert state.json() == {"draining": True, "in_flight": 0} and len(tiers[0].calls) == 1


def test_a_tier_whose_weights_changed_is_skipped_by_routing_until_a_policy_fitted_on_them():
    """The bundled policy was fitted on the default GGUFs; a config whose medium tier serves other
    weights gets answers without medium (skipped as unavailable, not as an escalation), while a
    request pinned to medium still reaches it; the admin API names the tier and both weights."""
    three = lambda: [ScriptedWorker(t, logprob=-0.05, words=8) for t in ("small", "medium", "large")]  # noqa: E731
    same = three()
    assert all(r.status_code == 200 for r in routed(Gateway(learned(), same, same, None), CODE))
    assert same[1].calls  # the policy does route these prompts through medium
    other = "0" * 64
    tiers = three()
    gw = Gateway(learned({"medium": other}), tiers, tiers, None)
    answers = routed(gw, CODE)
    assert [r.status_code for r in answers] == [200] * len(CODE) and tiers[1].calls == []
    tried = [a for r in answers for a in r.json()["ladder"]["rungs_tried"] if a["tier"] == "medium"]
    assert tried and all(a["unavailable"] for a in tried)
    assert all(r.json()["model"] in ("small", "large") for r in answers)
    pinned = routed(gw, CODE[:1], model="medium")[0]
    assert pinned.status_code == 200 and pinned.json()["model"] == "medium" and len(tiers[1].calls) == 1
    info = call(gw, "GET", "/admin/policy", key=ADMIN).json()
    assert info["unvalidated_tiers"] == {
        "medium": {"fitted_on": "sha256:" + LadderConfig().tiers[1].source.sha256, "serves": "sha256:" + other}
    }


def test_a_changed_top_tier_leaves_the_highest_validated_rung_on_top():
    """With large's weights changed, nothing escalates into it: medium's answer stands."""
    doubtful = lambda: [ScriptedWorker(t, logprob=-6.0, words=8) for t in ("small", "medium", "large")]  # noqa: E731
    same = doubtful()
    assert all(r.status_code == 200 for r in routed(Gateway(learned(), same, same, None), CODE))
    assert same[2].calls  # these doubtful answers do climb to large
    tiers = doubtful()
    gw = Gateway(learned({"large": "1" * 64}), tiers, tiers, None)
    answers = routed(gw, CODE)
    assert [r.status_code for r in answers] == [200] * len(CODE) and tiers[2].calls == []
    assert {r.json()["model"] for r in answers} <= {"small", "medium"}
    assert call(gw, "GET", "/admin/policy", key=ADMIN).json()["unvalidated_tiers"].keys() == {"large"}
