"""The served app end to end: real Ray Serve, real Redis, the small tier's real weights, and the
official ``openai`` client against the real endpoint."""

import hashlib
import shutil
import time

import httpx
import openai
import pytest

from ladder.cluster.redis_server import EmbeddedRedis
from tests.integration.served import small_tier_app

pytestmark = [pytest.mark.ray, pytest.mark.redis, pytest.mark.model, pytest.mark.slow]
KEY = "sk-ladder-test"
PLAN_KEY = "sk-ladder-plan"  # a key with a plan (server.keys): 2 requests a minute
ADMIN_KEY = "sk-ladder-admin"


@pytest.fixture(scope="module")
def server():
    plan = {
        "id": "plan-test",
        "sha256": hashlib.sha256(PLAN_KEY.encode()).hexdigest(),
        "limits": {"requests_per_min": 2},
    }
    with small_tier_app(
        KEY, cache={"breaker_cooldown_s": 0.5}, server={"keys": [plan], "admin_keys": [ADMIN_KEY]}
    ) as served:
        yield served


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def ask(client, content="What is the capital of France?", model="ladder", **kw):
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=12, temperature=0, **kw
    )


def test_chat_completion_answers_from_the_small_tier_with_route_headers(client):
    raw = ask(client)
    resp = raw.parse()
    assert resp.model == "small"
    assert resp.choices[0].message.content.strip()  # the answer's wording is the model's (vLLM bf16 kernels)
    assert resp.usage.completion_tokens > 0 and resp.usage.prompt_tokens > 0
    assert raw.headers["x-ladder-tier"] == "small"
    assert raw.headers["x-ladder-route"] in ("router", "cache")
    assert float(raw.headers["x-ladder-cost-usd"]) > 0


def test_second_identical_request_hits_the_redis_cache(client):
    ask(client, "Cache me: what is 3+4?")
    time.sleep(0.2)  # writes are fire-and-forget
    raw = ask(client, "Cache me:   what is 3+4?")
    assert raw.headers["x-ladder-cache"] == "hit"
    assert raw.headers["x-ladder-route"] == "cache"


def test_streaming_a_pinned_tier_matches_the_non_streamed_text(client):
    chunks = list(
        client.chat.completions.create(
            model="small",
            messages=[{"role": "user", "content": "Name three colors."}],
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    plain = ask(client, "Name three colors.", model="small").parse()
    plain = client.chat.completions.create(
        model="small", messages=[{"role": "user", "content": "Name three colors."}], max_tokens=16, temperature=0
    )
    assert text == plain.choices[0].message.content


def test_models_lists_router_and_tiers(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["ladder", "small"]
    assert client.models.retrieve("small").id == "small"


def test_bad_requests_get_openai_errors(client, server):
    with pytest.raises(openai.NotFoundError) as nf:
        ask(client, model="gpt-17")
    assert nf.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="ladder", messages=[], max_tokens=5)
    with pytest.raises(openai.BadRequestError) as too_long:
        ask(client, "word " * 9000)
    assert too_long.value.body["code"] == "context_length_exceeded"
    headers = {"authorization": f"Bearer {KEY}"}
    for body in (
        '{"model": "ladder", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}',
        '{"model": "ladder", "messages": [{"role": "user", "content": "lone \\ud800 surrogate"}]}',
        '{"model": "ladder", "messages": [{"role": "user", "content": "x"}], "seed": 99999999999999999999}',
        "{not json",
        '{"model": "ladder", "messages": [{"role": "wizard", "content": "x"}]}',
    ):
        r = httpx.post(server[0] + "/v1/chat/completions", content=body, headers=headers, timeout=30)
        assert r.status_code == 400, r.text
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_api_key_is_required(server):
    r = httpx.post(server[0] + "/v1/chat/completions", json={"model": "ladder", "messages": []}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    bad = openai.OpenAI(base_url=server[0] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_redis_outage_degrades_to_misses_and_hits_resume_after_restart(client, server):
    runtime = server[1]
    port = runtime.embedded_redis.port
    runtime.embedded_redis.stop()
    try:
        for i in range(3):
            raw = ask(client, f"During the outage #{i}")
            assert raw.parse().choices[0].message.content is not None
            assert raw.headers["x-ladder-cache"] == "miss"
    finally:
        restarted = EmbeddedRedis(port=port, password=runtime.embedded_redis.password).start()
        runtime._redis = restarted  # so the fixture's close() stops it
    time.sleep(0.6)
    hit = None
    for _ in range(10):
        ask(client, "After the outage")
        time.sleep(0.3)
        hit = ask(client, "After the outage").headers["x-ladder-cache"]
        if hit == "hit":
            break
    assert hit == "hit"


def test_metrics_count_requests_and_cache(server, client):
    ask(client, "metrics probe")
    text = httpx.get(server[0] + "/metrics", timeout=30).text
    assert 'ladder_requests_total{status="200"}' in text
    assert 'ladder_answered_total{tier="small"}' in text
    assert "ladder_decision_seconds_bucket" in text


def test_health(server):
    r = httpx.get(server[0] + "/health", timeout=30)
    assert r.status_code == 200 and r.json()["tiers"] == ["small"]


def test_killed_tier_replica_gives_an_error_not_a_hang_and_serve_replaces_it(client, server):
    """Runs last in this module: it kills the small tier's only replica in the middle of a request."""
    import concurrent.futures

    import ray

    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "tier-small" in a["name"]]
    assert replicas, "no tier-small replica actor found"
    victim = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            lambda: httpx.post(
                server[0] + "/v1/chat/completions",
                timeout=120,
                headers={"authorization": f"Bearer {KEY}"},
                json={
                    "model": "ladder",
                    "max_tokens": 200,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": "Write a long essay about rivers."}],
                },
            )
        )
        time.sleep(2.0)
        ray.kill(victim, no_restart=True)
        response = pending.result(timeout=150)
    # The only rung died: a clear error (or, if Serve retried on a fresh replica, an answer) — never a hang.
    assert response.status_code in (200, 503), response.text
    if response.status_code == 503:
        assert response.json()["error"]["code"] == "no_rung_available"
        assert "Retry-After" in response.headers
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if ask(client, "Are you back?").parse().model == "small":
                break
        except openai.APIStatusError:
            time.sleep(2)
    else:
        pytest.fail("Serve did not replace the killed replica within 120 s")


def test_a_client_that_disconnects_stops_the_engine_within_a_second(server, client):
    """Closing a pinned stream cancels the request through Serve down to vLLM's abort: the tier's
    generated-token counter stops growing (the compute stops, not only the response)."""
    from ray import serve

    url, _ = server
    msgs = [{"role": "user", "content": "Write a very long story about a dragon who learns to cook."}]
    # Control: with this seed the model writes at least 200 tokens, so a stream left running would go on.
    full = client.chat.completions.create(model="small", messages=msgs, max_tokens=200, temperature=0.8, seed=11)
    assert full.usage.completion_tokens == 200
    tier = serve.get_deployment_handle("tier-small", app_name="ladder-tier-small")
    before = tier.stats.remote().result()["generated_tokens"]
    body = {"model": "small", "messages": msgs, "max_tokens": 1500, "temperature": 0.8, "seed": 11, "stream": True}
    with httpx.Client(timeout=60, headers={"authorization": f"Bearer {KEY}"}) as http:
        with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
            chunks = 0
            for line in r.iter_lines():
                chunks += line.startswith("data: ") and '"content"' in line
                if chunks >= 5:
                    break
    time.sleep(1.0)
    after_1s = tier.stats.remote().result()["generated_tokens"]
    time.sleep(2.0)
    after_3s = tier.stats.remote().result()["generated_tokens"]
    assert after_1s - before >= 4  # it was generating
    assert after_3s == after_1s, (before, after_1s, after_3s)  # and stopped once the client left


def test_a_key_plan_is_enforced_by_the_served_app_through_redis(server):
    """Per-key limits on the real stack (Serve ingress, the embedded Redis's Lua script): the plan's
    third request within a minute is a 429 the openai client raises as RateLimitError, with
    OpenAI's headers; a plain key is not limited by it."""
    limited = openai.OpenAI(base_url=server[0] + "/v1", api_key=PLAN_KEY, max_retries=0, timeout=120)
    first = ask(limited, "Say one word.")
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    ask(limited, "Say one word.")
    with pytest.raises(openai.RateLimitError) as refused:
        ask(limited, "Say one word.")
    assert refused.value.code == "rate_limit_exceeded"
    assert int(refused.value.response.headers["retry-after"]) >= 1
    plain = openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=120)
    assert ask(plain, "Say one word.").parse().choices[0].message.content is not None
    metrics = httpx.get(server[0] + "/metrics").text
    assert 'ladder_key_refused_total{key="plan-test",reason="requests"} 1.0' in metrics


@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="chromedriver not installed (scripts/setup.sh)")
def test_the_dashboard_in_a_browser_matches_the_served_metrics(server, client, tmp_path):
    """The served app's /dashboard in headless Chromium: sign in with the admin key, and every
    figure on the page equals the one recomputed from the same app's /metrics."""
    from selenium.webdriver.common.by import By

    from tests.serving.browser import chrome, expected_from_metrics, submit

    for _ in range(3):
        ask(client, "Say one word.")
    with chrome() as browser:
        browser.get(server[0] + "/dashboard")
        browser.find_element(By.NAME, "key").send_keys(ADMIN_KEY)
        submit(browser, By.CSS_SELECTOR, "button[type=submit]")
        cells = browser.find_elements(By.CSS_SELECTOR, "td[data-figure]")
        got = {c.get_attribute("data-figure"): c.get_attribute("data-value") for c in cells}
        want = expected_from_metrics(httpx.get(server[0] + "/metrics").text, ["small"])
        browser.save_screenshot(str(tmp_path / "served-dashboard.png"))
    assert want["answered"] >= 3
    for name, value in want.items():
        assert float(got[name]) == value, name
