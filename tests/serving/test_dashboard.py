"""The dashboard and the tuning page: the real HTTP app (in-process, scripted tiers), its figures
held to /metrics, its sign-in, and — in a real headless Chromium (Debian's, through selenium) — a
point picked on the tuning page and pushed, seen in the next answer's policy version."""

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ladder.cluster.settings import LadderConfig
from ladder.serving.dashboard import COOKIE, Board, dashboard_page, figures, quantile, session_token
from ladder.serving.gateway import Gateway
from tests.fakes import ScriptedWorker
from tests.serving.browser import chrome, expected_from_metrics, metric_values, submit
from tests.serving.gateway_app import ADMIN, KEY, call, chat, gateway

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
FIGURE = re.compile(r'data-figure="([^"]+)" data-value="([^"]*)"')


def shown(page: str) -> dict[str, float | None]:
    return {name: float(v) if v else None for name, v in FIGURE.findall(page)}


def test_the_dashboard_shows_exactly_what_metrics_says():
    tiers = [ScriptedWorker("small", logprob=-3.0, words=6), ScriptedWorker("medium", logprob=-0.1, words=9)]
    gw = gateway(tiers, min_mean_logprob=-1.0)
    for _ in range(3):
        assert call(gw, "POST", "/v1/chat/completions", **chat()).status_code == 200  # small → medium
    for _ in range(2):
        assert call(gw, "POST", "/v1/chat/completions", **chat(model="small")).status_code == 200
    assert call(gw, "POST", "/v1/chat/completions", key=None, **chat()).status_code == 401
    page = call(gw, "GET", "/dashboard", key=ADMIN)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    got = shown(page.text)
    want = expected_from_metrics(call(gw, "GET", "/metrics").text, ["small", "medium"])
    # both tiers at one price here: three answers paid for two attempts, so "saved" is negative
    assert want["requests"] == 6 and want["escalations"] == 3 and want["saved"] < 0
    for name, value in want.items():
        assert got[name] == value, name
    assert "small (IDK step) → medium (accepted)" in page.text  # the recent escalations
    assert got["p50:medium"] is not None and got["p95:medium"] >= got["p50:medium"]


@pytest.fixture(scope="module")
def redis_url():
    from ladder.cluster.redis_server import EmbeddedRedis

    server = EmbeddedRedis().start()
    yield server.url
    server.stop()


def _answering_tiers() -> list[ScriptedWorker]:
    return [ScriptedWorker("small", logprob=-3.0, words=6), ScriptedWorker("medium", logprob=-0.1, words=9)]


def test_the_dashboard_sums_every_ingress_replica_through_redis(redis_url):
    # two ingress replicas of one app (one Redis): each dashboard shows the sum of both /metrics
    a, b = (
        Gateway(
            gateway(_answering_tiers(), min_mean_logprob=-1.0).config, _answering_tiers(), _answering_tiers(), redis_url
        )
        for _ in range(2)
    )
    for _ in range(3):
        assert call(a, "POST", "/v1/chat/completions", **chat()).status_code == 200  # small → medium
    for _ in range(2):
        assert call(b, "POST", "/v1/chat/completions", **chat(model="small")).status_code == 200
    call(b, "GET", "/dashboard", key=ADMIN)  # b's latest snapshot (it also publishes after requests)
    page = call(a, "GET", "/dashboard", key=ADMIN).text
    got = shown(page)
    want_a = expected_from_metrics(call(a, "GET", "/metrics").text, ["small", "medium"])
    want_b = expected_from_metrics(call(b, "GET", "/metrics").text, ["small", "medium"])
    for name in ("requests", "answered", "escalations", "answered:small", "answered:medium"):
        assert got[name] == want_a[name] + want_b[name], name
    assert got["requests"] == 5 and got["answered:small"] == 2
    assert "id='replicas' data-value='2'" in page and "Partial" not in page


def test_with_redis_down_the_dashboard_shows_this_replica_and_says_it_is_partial():
    from ladder.cluster.redis_server import free_port

    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    gw = Gateway(
        gateway(_answering_tiers(), min_mean_logprob=-1.0).config, _answering_tiers(), _answering_tiers(), down
    )
    assert call(gw, "POST", "/v1/chat/completions", **chat()).status_code == 200
    page = call(gw, "GET", "/dashboard", key=ADMIN)
    assert page.status_code == 200 and "id='partial'" in page.text and "Redis unreachable" in page.text
    got = shown(page.text)
    want = expected_from_metrics(call(gw, "GET", "/metrics").text, ["small", "medium"])
    assert got["requests"] == want["requests"] == 1 and got["escalations"] == want["escalations"]


def test_quantiles_follow_prometheus_histogram_quantile():
    buckets = {0.5: 2.0, 1.0: 6.0, 2.0: 10.0, float("inf"): 10.0}
    assert quantile(buckets, 0.5) == 0.5 + 0.5 * (3 / 4)  # rank 5 inside (0.5, 1.0]
    assert quantile(buckets, 0.95) == 1.0 + 1.0 * (3.5 / 4)
    assert quantile({1.0: 0.0, float("inf"): 0.0}, 0.5) is None


def test_signing_in_takes_the_admin_key_and_a_foreign_origin_is_refused():
    gw = gateway([ScriptedWorker("small"), ScriptedWorker("medium")])
    no = call(gw, "GET", "/dashboard", key=None)
    assert no.status_code == 401 and "name='key'" in no.text  # the sign-in form, no figures
    assert "data-figure" not in no.text and call(gw, "GET", "/dashboard", key=KEY).status_code == 401
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert call(gw, "POST", "/dashboard/login", key=None, content=b"key=nope", headers=form).status_code == 401
    ok = call(gw, "POST", "/dashboard/login", key=None, content=f"key={ADMIN}".encode(), headers=form)
    assert ok.status_code == 303 and ok.headers["location"] == "/dashboard"
    cookie = ok.headers["set-cookie"]
    assert session_token(ADMIN.encode()) in cookie and ADMIN not in cookie
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    jar = {"cookie": f"{COOKIE}={session_token(ADMIN.encode())}"}
    assert call(gw, "GET", "/dashboard", key=None, headers=jar).status_code == 200
    foreign = jar | form | {"origin": "http://evil.example"}
    r = call(gw, "POST", "/dashboard/tune", key=None, content=b"action=rollback", headers=foreign)
    assert r.status_code == 403


def test_the_history_is_bounded_by_time_not_traffic():
    """Snapshots past the cap (an hour at 5 s) push the oldest out: the page stays the same size
    however much traffic came (render time: benchmarks/dashboard.py)."""
    tiers = ["small", "medium", "large"]
    board = Board()
    fig = {"requests": 0.0, "answered": 0.0, "escalations": 0.0, "errors": 0.0}
    for i in range(5000):  # more than the cap: the oldest go
        fig = {**fig, "requests": 3.0 * i, "answered": 3.0 * i, "escalations": 1.0 * i}
        fig |= {f"answered:{t}": float(i) for t in tiers}
        board.history.append((1000.0 + 5 * i, fig))
    assert len(board.history) == board.keep
    page = dashboard_page(board, figures({}, tiers), tiers, {"version": "v"})
    assert board.history[0][0] == 1000.0 + 5 * (5000 - board.keep) and len(page) < 200_000


# -- a real browser -------------------------------------------------------------------------
def learned_gateway() -> Gateway:
    """Three scripted tiers under the bundled learned policy (it has a calibrated frontier)."""
    # the default tiers' weights: the bundled policy skips tiers with others (cluster.tier_weights)
    sources = {t.name: t.source.model_dump() for t in LadderConfig().tiers}
    cfg = LadderConfig(
        tiers=[
            {"name": n, "backend": "transformers", "verifier": "python_examples", "source": sources[n], "price": p}
            for n, p in (
                ("small", {"input_per_1m": 0.5, "output_per_1m": 1.2}),
                ("medium", {"input_per_1m": 0.6, "output_per_1m": 2.6}),
                ("large", {"input_per_1m": 0.9, "output_per_1m": 7.8}),
            )
        ],
        policy={"kind": "learned"},
        server={"api_keys": [KEY], "admin_keys": [ADMIN], "max_completion_tokens": 64},
    )
    workers = [ScriptedWorker(n, logprob=lp, words=8) for n, lp in (("small", -2.5), ("medium", -0.6), ("large", -0.1))]
    return Gateway(cfg, workers, workers, redis_url=None)


def screenshot_path(name: str, tmp_path: Path) -> Path:
    """Under benchmarks/results/ when LADDER_SCREENSHOTS=1 (the README links them), else tmp."""
    return (RESULTS if os.environ.get("LADDER_SCREENSHOTS") == "1" else tmp_path) / name


needs_browser = pytest.mark.skipif(
    shutil.which("chromedriver") is None, reason="chromedriver not installed (scripts/setup.sh installs Debian's)"
)


@pytest.mark.parametrize(
    "form,reason",
    [
        ("point=9999&version={v}", "no frontier point 9999"),
        ("point=&version={v}", "choose a point first"),
        ("point=1&version=hybrid-000000000000", "the live policy changed since this page was drawn"),
    ],
)
def test_an_invalid_push_shows_the_refusal_and_the_old_policy_keeps_serving(form, reason):
    from urllib.parse import unquote

    gw = learned_gateway()
    before = gw.policy.version
    post = {"content-type": "application/x-www-form-urlencoded"}
    r = call(gw, "POST", "/dashboard/tune", key=ADMIN, content=form.format(v=before).encode(), headers=post)
    assert r.status_code == 303 and f"done=refused: {reason}" in unquote(r.headers["location"])
    page = call(gw, "GET", r.headers["location"], key=ADMIN).text
    assert reason in page.replace("&#x27;", "'") and f"<code id='policy-version'>{before}</code>" in page
    answer = call(gw, "POST", "/v1/chat/completions", **chat())
    assert answer.status_code == 200 and answer.headers["x-ladder-policy-version"] == before


@needs_browser
def test_in_a_browser_the_figures_match_metrics_and_a_pushed_point_serves_the_next_answer(tmp_path):
    from selenium.webdriver.common.by import By

    from tests.serving.live_server import running

    gw = learned_gateway()
    gw.board.every_s = 0.0  # a snapshot per request: the charts have history in a short test
    prompts = ["def add(a, b):\n    return a + b\n# write tests", "What is 17 * 23?", "Name a prime above 90."]
    with running(gw) as url, chrome() as browser:
        auth = {"authorization": f"Bearer {KEY}"}
        for i in range(30):
            body = {"model": "ladder", "messages": [{"role": "user", "content": prompts[i % 3]}], "max_tokens": 16}
            assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=auth, timeout=30).status_code == 200
        browser.get(f"{url}/dashboard")
        browser.find_element(By.NAME, "key").send_keys(ADMIN)
        submit(browser, By.CSS_SELECTOR, "button[type=submit]")
        cells = browser.find_elements(By.CSS_SELECTOR, "td[data-figure]")
        got = {c.get_attribute("data-figure"): c.get_attribute("data-value") for c in cells}
        want = expected_from_metrics(httpx.get(f"{url}/metrics").text, gw.tier_names)
        for name, value in want.items():
            assert float(got[name]) == value, name
        browser.save_screenshot(str(screenshot_path("dashboard.png", tmp_path)))

        browser.get(f"{url}/dashboard/tune")
        before = browser.find_element(By.ID, "policy-version").text
        assert before == gw.policy.version
        radios = browser.find_elements(By.CSS_SELECTOR, "input[name=point]")
        assert len(radios) > 3 and len(browser.find_elements(By.ID, "current")) == 1  # the serving point
        figures_of = lambda css: [td.text for td in browser.find_elements(By.CSS_SELECTOR, css)][2:]  # noqa: E731
        chosen = figures_of("tr:has(#point-1) td")
        radios[1].click()  # a cheap point: certainly not the policy's own
        submit(browser, By.ID, "push")
        after = browser.find_element(By.ID, "policy-version").text
        assert after != before and "pushed " + after in browser.find_element(By.ID, "message").text
        assert figures_of("#current td") == chosen  # the serving row is now point 1's
        body = {"model": "ladder", "messages": [{"role": "user", "content": "Another question?"}], "max_tokens": 16}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=auth, timeout=30)
        assert r.headers["x-ladder-policy-version"] == after
        browser.save_screenshot(str(screenshot_path("tune.png", tmp_path)))
        submit(browser, By.ID, "rollback")
        assert browser.find_element(By.ID, "policy-version").text == before


def test_the_grafana_board_queries_only_what_the_app_exports():
    """deploy/grafana-ladder.json (no Grafana here: checked against the dashboard schema's basics
    and against the metric names a real /metrics answer carries)."""
    import json

    board = json.loads((RESULTS.parents[1] / "deploy" / "grafana-ladder.json").read_text())
    panels = board["panels"]
    assert board["uid"] and isinstance(board["schemaVersion"], int) and len({p["id"] for p in panels}) == len(panels)
    assert all({"x", "y", "w", "h"} <= set(p["gridPos"]) and p["targets"] for p in panels)
    tiers = [ScriptedWorker("small", logprob=-3.0), ScriptedWorker("medium")]
    gw = gateway(tiers, min_mean_logprob=-1.0)
    call(gw, "POST", "/v1/chat/completions", **chat())
    exported = {name for name, _ in metric_values(call(gw, "GET", "/metrics").text)} | {
        f.name + "_total" for f in text_string_to_metric_families(call(gw, "GET", "/metrics").text)
    }
    queried = {m for p in panels for t in p["targets"] for m in re.findall(r"\bladder_[a-z_]+", t["expr"])}
    assert len(queried) >= 8 and queried <= exported, queried - exported


def _lost(wrote, read, path: str = "") -> list[str]:
    """Paths of ``wrote`` that ``read`` dropped or changed (keys ``read`` adds are its defaults)."""
    if isinstance(wrote, dict):
        if not isinstance(read, dict):
            return [path]
        return [
            q for k, v in wrote.items() for q in (_lost(v, read[k], f"{path}/{k}") if k in read else [f"{path}/{k}"])
        ]
    if isinstance(wrote, list):
        if not isinstance(read, list) or len(read) != len(wrote):
            return [path]
        return [q for i, (a, b) in enumerate(zip(wrote, read)) for q in _lost(a, b, f"{path}[{i}]")]
    return [] if wrote == read else [path]


def test_the_grafana_board_loads_into_grafanas_own_typed_models():
    """Grafana's schema, as its foundation SDK's generated models (no Grafana server here): the board
    read into them and written back keeps every field we wrote, and every query is a Prometheus one."""
    import json

    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard
    from grafana_foundation_sdk.models.prometheus import Dataquery

    register_default_plugins()
    wrote = json.loads((RESULTS.parents[1] / "deploy" / "grafana-ladder.json").read_text())
    board = Dashboard.from_json(wrote)
    assert _lost(wrote, json.loads(json.dumps(board, cls=JSONEncoder))) == []
    assert all(isinstance(t, Dataquery) for p in board.panels for t in p.targets)
    typo = {**wrote, "panels": [{**wrote["panels"][0], "targetz": wrote["panels"][0]["targets"]}]}
    assert _lost(typo, json.loads(json.dumps(Dashboard.from_json(typo), cls=JSONEncoder))) == ["/panels[0]/targetz"]
