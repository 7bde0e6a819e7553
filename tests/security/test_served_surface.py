"""One `ladder serve` (small tier, its verifier on, two ingress replicas), attacked from this machine: its ports, its
admin API behind a real same-host reverse proxy (Caddy), planted Redis entries, and every secret
looked for in everything it printed and logged. Traffic goes to loopback only."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from ladder.cluster.redis_server import free_port
from ladder.cluster.secrets import admin_key
from ladder.cluster.settings import LadderConfig, load_config
from ladder.router.keys import route_key
from ladder.types import Query
from benchmarks.harness.processes import descendants, end, survivors
from tests.security.sockets import listeners

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.model, pytest.mark.slow, pytest.mark.redis]
ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    data = LadderConfig().model_dump(mode="json")
    data["tiers"] = [data["tiers"][0]]
    data["tiers"][0]["vllm"]["enforce_eager"] = True
    data["tiers"][0]["verifier"] = "python_examples"  # serve must get an isolated sandbox for it
    data["policy"] = {"kind": "fixed"}
    data["ray"]["num_cpus"] = 2
    data["server"]["api_keys"] = [API_KEY]
    data["server"]["drain_s"] = 120  # longer than the test waits: the second SIGTERM must cut it
    data["server"]["ingress_replicas"] = 2  # the drain must reach the replica the proxy did not pick
    cfg = tmp / "ladder.yaml"
    cfg.write_text(yaml.safe_dump(data))
    port = free_port()
    out, err = tmp / "stdout", tmp / "stderr"
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ladder.cli", "serve", "--config", str(cfg), "--port", str(port)],
            stdout=o,
            stderr=e,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        )
    deadline = time.monotonic() + 420
    probes = []  # /ready while the app starts: (status, tiers)
    early = []  # chat requests sent while /ready said the tier was starting: (seconds, status, headers, body)
    while "Ladder is serving" not in err.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5)
            probes.append((r.status_code, r.json().get("tiers")))
            if r.status_code == 503 and len(early) < 3:
                t0 = time.monotonic()
                c = httpx.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json={"model": "ladder", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4},
                    headers={"authorization": f"Bearer {API_KEY}"},
                    timeout=60,
                )
                early.append((time.monotonic() - t0, c.status_code, c.headers, c.json()))
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(1)
    try:
        yield {
            "url": f"http://127.0.0.1:{port}",
            "proc": proc,
            "out": out,
            "err": err,
            "probes": probes,
            "early": early,
        }
    finally:
        end(proc, signal.SIGINT, 90)


def redis_of(served) -> redis.Redis:
    """The app's Redis as an attacker who learned its address and password would reach it (read
    here, as root, from the server's own config file: the password is on no command line)."""
    for listener in listeners(descendants(served["proc"].pid)):
        if "redis-server" in listener.command:
            conf = Path(f"/proc/{listener.pid}/cwd/redis.conf")  # it runs in its own directory
            password = re.search(r"^requirepass (\S+)$", conf.read_text(), re.M).group(1)
            assert password not in listener.command
            return redis.Redis(host="127.0.0.1", port=listener.port, password=password)
    raise AssertionError("no redis-server among the app's processes")


def test_ready_said_starting_until_the_tier_answered(served):
    r = httpx.get(served["url"] + "/ready", timeout=30)
    assert r.status_code == 200 and r.json()["tiers"] == {"small": "ready"} and r.json()["redis"] == "ok"
    # while the engine started, /ready never said 200 for a tier that was not up
    assert all(status == 503 and tiers["small"] != "ready" for status, tiers in served["probes"] if status != 200)
    assert all(tiers == {"small": "ready"} for status, tiers in served["probes"] if status == 200)
    # and `ladder serve` said so per tier while it waited
    log = served["err"].read_text()
    assert re.search(r"tier small: starting \(0/1 replicas up, \d+ s\)", log), log[-2000:]
    assert log.index("tier small: up (1/1 replicas up") < log.index("Ladder is serving")


def test_a_request_sent_while_the_tier_starts_gets_503_at_once_not_its_timeout(served):
    assert served["early"], "no request was sent while the tier was starting"
    for seconds, status, headers, body in served["early"]:
        if status == 200:  # the tier came up between the probe and the request
            assert body["ladder"]["tier"] == "small"
            continue
        assert seconds < 5, seconds
        assert status == 503 and body["error"]["code"] == "tiers_starting" and headers["retry-after"] == "5", body


def test_nothing_the_app_started_listens_beyond_loopback(served):
    mine = listeners(descendants(served["proc"].pid))
    assert any("redis-server" in s.command for s in mine) and any("raylet" in s.command for s in mine)
    assert len(mine) > 5
    assert [s for s in mine if not s.loopback] == []


def test_the_embedded_ray_refuses_a_local_client_without_its_token(served):
    """Loopback keeps other hosts out; Ray's token (on by default in Ray 2.60) keeps other local
    users out: a client without it is refused by the GCS, asked the way `ladder serve` probes."""
    from ladder.cluster.runtime import _STRANGER

    gcs = [s for s in listeners(descendants(served["proc"].pid)) if "gcs_server" in s.command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")} | {"RAY_AUTH_MODE": "disabled"}
    env["HOME"] = "/nonexistent"  # a local user without the operator's ~/.ray/auth_token
    answers = [
        subprocess.run(
            [sys.executable, "-c", _STRANGER, f"127.0.0.1:{s.port}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        for s in gcs  # its gRPC port among them
    ]
    assert gcs and not any("ANSWERED" in p.stdout for p in answers)
    assert (Path.home() / ".ray" / "auth_token").stat().st_mode & 0o077 == 0  # and the token is the operator's
    assert any("uthentication" in p.stderr for p in answers), [p.stderr[-300:] for p in answers]


def test_the_admin_api_behind_a_same_host_reverse_proxy_needs_the_key(served, tmp_path):
    key_file = Path(os.path.expanduser(os.environ.get("LADDER_CACHE_DIR", "~/.cache/ladder"))) / "admin.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    front = free_port()
    caddy = Path(sys.executable).with_name("caddy")
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    proxy = subprocess.Popen(
        [str(caddy), "reverse-proxy", "--from", f"http://127.0.0.1:{front}", "--to", served["url"]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        via = f"http://127.0.0.1:{front}"
        for _ in range(100):
            try:
                if httpx.get(via + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        # every client of the proxy reaches the app from loopback: that must grant nothing
        for headers in ({}, {"authorization": f"Bearer {API_KEY}"}, {"authorization": "Bearer guessed"}):
            r = httpx.get(via + "/admin/policy", headers=headers, timeout=30)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            r = httpx.post(via + "/admin/policy/rollback", headers=headers, timeout=30)
            assert r.status_code == 401
        r = httpx.get(
            via + "/admin/policy", headers={"authorization": f"Bearer {admin_key(load_config())}"}, timeout=30
        )
        assert r.status_code == 200 and r.json()["configured"]
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
    # and the CLI finds the key where `ladder serve` left it, with no key on its command line
    p = subprocess.run(
        [sys.executable, "-m", "ladder.cli", "policy", "show", "--url", served["url"]],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "LADDER_ADMIN_KEY"},
    )
    assert p.returncode == 0 and json.loads(p.stdout)["configured"], p.stderr
    p = subprocess.run(
        [sys.executable, "-m", "ladder.cli", "policy", "show", "--admin-key", "x", "--url", served["url"]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2  # there is no such option: keys never go on argv


def test_entries_planted_in_redis_without_the_secret_are_ignored(served):
    url, client = served["url"], redis_of(served)
    health = httpx.get(url + "/health", timeout=30).json()
    version = health["policy_version"]
    # a policy of the attacker's: the live pointer and a blob, unsigned
    client.set("ladder:policy:live", "planted-1")
    client.set("ladder:policy:blob:planted-1", json.dumps({"doc_b64": "", "tensors_b64": ""}))
    # and routes for two prompts: one past the last rung, one pinned to the cheapest
    prompts = ["What is the capital of Peru?", "Name a prime number."]
    for prompt, start, pinned in ((prompts[0], 7, False), (prompts[1], 0, True)):
        route = {"start": start, "policy_version": version, "scores": [], "thresholds": [], "pinned": pinned}
        client.set(route_key(Query.of(prompt), version), json.dumps(route), ex=600)
    headers = {"authorization": f"Bearer {API_KEY}"}
    for prompt in prompts:
        body = {"model": "ladder", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4, "temperature": 0}
        r = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=120)
        assert r.status_code == 200 and r.headers["x-ladder-cache"] == "miss"  # decided afresh
    time.sleep(1.5)  # past the live policy's poll interval
    assert httpx.get(url + "/health", timeout=30).json()["policy_version"] == version


def test_no_secret_appears_in_anything_the_run_printed_or_logged(served):
    password = redis_of(served).connection_pool.connection_kwargs["password"]
    secrets_ = {"admin key": admin_key(load_config()), "API key": API_KEY, "Redis password": password}
    texts = {"stdout": served["out"].read_text(), "stderr": served["err"].read_text()}
    session = Path("/tmp/ray/session_latest/logs")
    for path in session.rglob("*") if session.exists() else []:
        if path.is_file() and path.stat().st_size < 50_000_000:
            texts[str(path)] = path.read_text(errors="replace")
    assert len(texts) > 5  # Ray's logs were read too
    leaks = [(name, where) for name, value in secrets_.items() for where, text in texts.items() if value in text]
    assert leaks == []


def test_sigterm_drains_answers_in_flight_a_second_stops_at_once_nothing_left_exit_0(served):
    """Last in this module: what systemd, Docker and Kubernetes send. Short streams in flight at
    the first SIGTERM finish whole (the drain) while new requests get 503 ``draining``; a long one
    still running at the second is cut,
    and the process exits 0 at once, leaving none of the processes it started."""
    proc = served["proc"]
    started = descendants(proc.pid) - {proc.pid}
    assert len(started) > 3  # Redis, Ray's daemons, workers
    streams = {"short-0": 24, "short-1": 24, "long": 1500}
    results: dict[str, dict] = {name: {"chunks": 0, "done": False, "error": None} for name in streams}

    def consume(name: str, max_tokens: int) -> None:
        prompt = "Write the numbers from 1 to 5000, separated by commas." if name == "long" else "Say hi"
        body = {
            "model": "ladder",
            "stream": True,
            "max_tokens": max_tokens,
            # greedy: a client's default temperature of 1.0 once sampled an early end to the
            # long one (24 chunks, done before the shorts drained); greedy, every rung counts on
            "temperature": 0,
            "messages": [{"role": "user", "content": prompt}],
        }
        try:
            with httpx.stream(
                "POST",
                served["url"] + "/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {API_KEY}"},
                timeout=120,
            ) as r:
                for line in r.iter_lines():
                    results[name]["chunks"] += line.startswith("data: {")
                    results[name]["done"] |= line == "data: [DONE]"
        except httpx.HTTPError as exc:
            results[name]["error"] = repr(exc)

    threads = {n: threading.Thread(target=consume, args=(n, m), daemon=True) for n, m in streams.items()}
    for t in threads.values():
        t.start()
    deadline = time.monotonic() + 60
    while not all(r["chunks"] for r in results.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(r["chunks"] for r in results.values()), results  # every stream is in flight
    proc.send_signal(signal.SIGTERM)
    for name in ("short-0", "short-1"):
        threads[name].join(timeout=60)
        assert results[name]["done"] and results[name]["error"] is None, results  # drained: answered whole
    assert threads["long"].is_alive() and proc.poll() is None, results  # still draining the long one
    # meanwhile the app is still there and says it is draining: a new request is a 503 with
    # Retry-After (not the proxy's 404), and /ready takes the replica out of a balancer
    late = httpx.post(
        served["url"] + "/v1/chat/completions",
        json={"model": "ladder", "max_tokens": 4, "messages": [{"role": "user", "content": "Say hi"}]},
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    assert late.status_code == 503 and late.headers["retry-after"] == "2", late.text
    assert late.json()["error"]["code"] == "draining"
    ready = httpx.get(served["url"] + "/ready", timeout=30)
    assert ready.status_code == 503 and ready.json()["draining"] is True
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=45) == 0, served["err"].read_text()[-2000:]
    assert time.monotonic() - t0 < 45  # not the remaining drain of server.drain_s = 120 s
    threads["long"].join(timeout=30)
    assert not threads["long"].is_alive() and not results["long"]["done"]  # cut, and the client was told
    log = served["err"].read_text()
    assert "draining requests in flight" in log and "stopping at once" in log
    # both ingress replicas were told, the busy one too (the proxy would pick the idle one)
    assert re.search(r"draining: 2 ingress replica\(s\), 3 request\(s\) in flight", log), log[-2000:]
    assert survivors(started, wait_s=30) == {}
