"""Faults under load against the real served app (Ray Serve, Redis, the small tier's weights).

Every request must end in an answer, an HTTP error with an OpenAI error body, or a client-visible
connection error — never a hang or a silent drop — and service must come back on its own.
"""

import asyncio
from pathlib import Path

import httpx
import psutil
import pytest
from benchmarks.harness.chaos import (
    account,
    fill_redis,
    kill_engine,
    kill_proxy,
    kill_replica,
    scenario,
)
from benchmarks.harness.loadgen import send, short_chat

from tests.integration.served import small_tier_app

pytestmark = [pytest.mark.ray, pytest.mark.redis, pytest.mark.model, pytest.mark.slow]
KEY = "sk-faults-key-7f3a9c"


@pytest.fixture(scope="module")
def server():
    # A tiny queue (1 running + 2 waiting): easy to overflow.
    with small_tier_app(
        KEY, cache={"breaker_cooldown_s": 0.5}, tier={"max_ongoing_requests": 1, "max_queued_requests": 2}
    ) as served:
        yield served


def _no_silent_losses(report: dict) -> None:
    assert report["errors_without_body"] == 0, report
    for kind in report["error_kinds"]:
        assert kind.startswith(("503:", "504:", "no-response:connect", "no-response:protocol")), report


def test_overload_is_shed_at_once_with_503_retry_after_and_an_openai_body(server):
    url = server[0]

    async def burst():
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {KEY}"}, timeout=120) as client:
            return await asyncio.gather(
                *(send(client, url + "/v1/chat/completions", short_chat(i, max_tokens=6), 0.0) for i in range(12))
            )

    outcomes = asyncio.run(burst())
    ok = [o for o in outcomes if o.status == 200]
    shed = [o for o in outcomes if o.status == 503]
    assert len(ok) + len(shed) == 12, outcomes
    # 1 running + 2 queued fit, the rest are shed. The queue bound (2) always admits two; the third
    # fits only once the router has handed the first to the replica, and Serve's router counts a
    # request as queued until then (its limits are best effort: ray-project/ray#42947), so on a
    # loaded machine 2 of the 12 can be all that is admitted (seen in a CI run sharing its CPUs).
    assert len(ok) >= 2 and len(shed) >= 1, outcomes
    assert all(o.code == "overloaded" and o.retry_after and o.well_formed for o in shed)
    assert max(o.latency_s for o in shed) < min(o.latency_s for o in ok) + 5  # shed promptly, not after a wait


def test_server_listens_on_loopback_only(server):
    port = int(server[0].rsplit(":", 1)[1])
    listening = [c for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)


def test_redis_full_with_eviction_off_still_answers_every_request(server):
    url, runtime = server
    outcomes, at = asyncio.run(scenario(url, KEY, lambda: fill_redis(runtime.redis_url), at_s=1, total_s=12))
    report = account(outcomes, at)
    assert report["after"]["total"] >= 3 and report["after"]["ok"] == report["after"]["total"], report
    assert report["in_flight"]["ok"] == report["in_flight"]["total"]


def test_proxy_restart_loses_no_request_silently_and_service_recovers(server):
    outcomes, at = asyncio.run(scenario(server[0], KEY, kill_proxy, at_s=3, total_s=45, timeout_s=60))
    report = account(outcomes, at)
    _no_silent_losses(report)
    assert report["recovery_s"] is not None and report["recovery_s"] < 40, report
    assert report["after"]["ok"] >= 1


def test_killed_tier_replica_under_load_recovers(server):
    # A replacement vLLM replica starts its engine (~35-60 s on this CPU); requests queued for the
    # tier meanwhile wait for it (Serve's bounded queue sheds the rest), so clients allow 120 s.
    outcomes, at = asyncio.run(
        scenario(server[0], KEY, lambda: kill_replica("tier-small"), at_s=3, total_s=110, timeout_s=120)
    )
    report = account(outcomes, at)
    _no_silent_losses(report)
    assert report["recovery_s"] is not None and report["recovery_s"] < 100, report
    # the killed replica's engine did not outlive it (the watchdog reaped it): one engine, the new one's
    engines = [p for p in psutil.process_iter(["cmdline"]) if "VLLM::EngineCore" in " ".join(p.info["cmdline"] or [])]
    assert len(engines) == 1, [p.pid for p in engines]


def test_killed_engine_process_fails_cleanly_and_serve_replaces_the_replica(server):
    """The default tier runs vLLM: its engine is a child process that can die on its own. Requests
    then end in 503s (never a hang), the replica's health check fails, and Serve starts a new one."""
    import ray

    def replicas() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#tier-small#" in a["name"]}

    before = replicas()
    outcomes, at = asyncio.run(
        scenario(server[0], KEY, lambda: kill_engine("tier-small"), at_s=3, total_s=110, timeout_s=120)
    )
    report = account(outcomes, at)
    _no_silent_losses(report)
    assert report["after"]["total"] - report["after"]["ok"] >= 1, report  # the dead engine was noticed
    assert report["recovery_s"] is not None and report["recovery_s"] < 100, report
    assert replicas() and not (replicas() & before)  # a new replica serves


def test_api_keys_never_reach_the_logs(server):
    import ray

    # Requests with the key (and a wrong key) have been made by every test above.
    httpx.get(server[0] + "/v1/models", headers={"authorization": "Bearer sk-wrong-key-0000"}, timeout=30)
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    leaked = [
        p.name
        for p in logs.rglob("*")
        if p.is_file() and (KEY.encode() in p.read_bytes() or b"sk-wrong-key-0000" in p.read_bytes())
    ]
    assert list(logs.rglob("*.log")), "no Ray logs found to check"
    assert leaked == []
