"""`ladder tier update` on the served app: one tier replaced under load (blue/green, its own Serve
application), and a replacement that cannot start, which leaves the old tier serving. Real Ray
Serve, real Redis, the small tier's real engine, the CLI as a user runs it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import pytest
import yaml

from ladder.cluster.settings import LadderConfig
from tests.integration.served import small_tier_app

pytestmark = [pytest.mark.ray, pytest.mark.redis, pytest.mark.model, pytest.mark.vllm, pytest.mark.slow]
KEY = "sk-ladder-tier-update"
ADMIN = "sk-ladder-tier-admin"


@pytest.fixture(scope="module")
def served():
    with small_tier_app(KEY, server={"admin_keys": [ADMIN], "drain_s": 20}) as (url, runtime):
        yield url, runtime


def new_config(tmp_path, runtime, **tier) -> str:
    """The running app's config with the small tier's section changed."""
    data = runtime.config.model_dump(mode="json")
    data["tiers"][0].update(tier)
    path = tmp_path / f"new-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(LadderConfig.model_validate(data).model_dump(mode="json")))
    return str(path)


def update(url: str, config: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ladder.cli",
            "tier",
            "update",
            "small",
            "--config",
            config,
            "--url",
            url,
            "--timeout",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=420,
    )


def apps() -> set[str]:
    from ray import serve

    return set(serve.status().applications)


def chat(url: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 6}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=120)


def test_a_tier_replaced_under_load_fails_no_request(served, tmp_path):
    url, runtime = served
    assert apps() == {"ladder", "ladder-tier-small"}
    stop, outcomes = threading.Event(), []

    def client(model: str) -> None:
        while not stop.is_set():
            try:
                r = chat(url, model)
                outcomes.append((time.monotonic(), r.status_code, r.headers.get("x-ladder-tier")))
            except httpx.HTTPError as exc:
                outcomes.append((time.monotonic(), -1, type(exc).__name__))

    threads = [threading.Thread(target=client, args=(m,)) for m in ("ladder", "small", "small")]
    for t in threads:
        t.start()
    try:
        # the new section: another engine batch and stall timeout (a restart of the engine)
        done = update(
            url,
            new_config(
                tmp_path,
                runtime,
                timeout_s=90,
                max_ongoing_requests=4,
                vllm={**runtime.config.tiers[0].vllm.model_dump(mode="json"), "max_num_seqs": 4},
            ),
        )
        switched = time.monotonic()
        time.sleep(5)  # requests after the switch reach the new replica
    finally:
        stop.set()
        for t in threads:
            t.join(150)
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"state": "serving"' in done.stdout and "ladder-tier-small-1" in done.stdout
    assert "starting ladder-tier-small-1" in done.stderr  # progress while it waited
    failed = [o for o in outcomes if o[1] != 200]
    assert not failed and len(outcomes) >= 6, (failed, len(outcomes))
    assert any(at > switched for at, _, _ in outcomes)
    # the admin API reports the new section, served from the new application; the old one goes
    state = httpx.get(f"{url}/admin/tiers/small", headers={"authorization": f"Bearer {ADMIN}"}, timeout=30).json()
    assert state["app"] == "ladder-tier-small-1" and state["config"]["timeout_s"] == 90
    assert state["config"]["max_ongoing_requests"] == 4
    deadline = time.monotonic() + 40
    while "ladder-tier-small" in apps() and time.monotonic() < deadline:
        time.sleep(1)
    assert apps() == {"ladder", "ladder-tier-small-1"}


def test_a_replacement_that_cannot_start_leaves_the_old_tier_serving(served, tmp_path):
    url, runtime = served
    before = apps()
    missing = tmp_path / "no-such-model"
    done = update(url, new_config(tmp_path, runtime, source={"kind": "local", "path": str(missing)}))
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "tier small not updated, the old one keeps serving" in lines[0], done.stderr[-2000:]
    assert str(missing) in lines[0]
    assert apps() == before  # the failed application is removed
    assert chat(url, "small").status_code == 200


def test_an_update_that_would_change_the_cost_model_is_refused_before_anything_starts(served, tmp_path):
    url, runtime = served
    before = apps()
    price = runtime.config.tiers[0].price.model_dump(mode="json")
    price["output_per_1m"] = price["output_per_1m"] * 2 + 1
    done = update(url, new_config(tmp_path, runtime, price=price))
    assert done.returncode == 2 and "400: tier small: price is part of the policy's cost model" in done.stderr
    # 2 logical CPUs, 0.75 taken: a replica of 1.5 fits a node but not beside the running one
    done = update(url, new_config(tmp_path, runtime, num_cpus=1.5))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "409: tier small: no room for its new replicas beside the running ones: they need CPU: 1.5" in done.stderr
    assert apps() == before
