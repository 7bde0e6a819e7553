"""Routed streams on the real app (small + medium tiers, vLLM, Ray Serve, Redis): decided on the
first tokens, streamed live, escalated without splicing, and the rung that lost stops generating;
the same app's policy swapped live, and its shadow log read back as prompts to collect."""

import json
import time
from collections.abc import Callable

import httpx
import pytest

from tests.integration.served import small_tier_app

pytestmark = [pytest.mark.ray, pytest.mark.redis, pytest.mark.model, pytest.mark.slow]
KEY = "sk-ladder-stream"
K = 4
# The fixed policy's rule on the first K tokens: a greedy answer's tokens are its most likely
# ones (mean log-prob well above -2: accepted); tokens sampled at temperature 2 from a flattened
# distribution are not (escalated).
POLICY = {"kind": "fixed", "min_mean_logprob": -2.0, "prefix_tokens": K}
POLICY_VERSION = f"fixed-s0-t-2-k{K}"


@pytest.fixture(scope="module")
def server():
    with small_tier_app(
        KEY, tiers=("small", "medium"), policy=POLICY, extra={"shadow": {"enabled": True, "prompts": True}}
    ) as served:
        yield served


def sse(url: str, body: dict) -> tuple[dict, list[dict], float | None]:
    """(headers, every data event, seconds to the first content)."""
    events, first = [], None
    t0 = time.perf_counter()
    with httpx.Client(timeout=120, headers={"authorization": f"Bearer {KEY}"}) as http:
        with http.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                events.append(event)
                if first is None and any(c["delta"].get("content") for c in event.get("choices", [])):
                    first = time.perf_counter() - t0
            return dict(r.headers), events, first


def text_of(events: list[dict]) -> str:
    return "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices", []))


def ladder_of(events: list[dict]) -> dict:
    (ext,) = [e["ladder"] for e in events if "ladder" in e]
    return ext


def generated(tier: str) -> int:
    from ray import serve

    return (
        serve.get_deployment_handle(f"tier-{tier}", app_name=f"ladder-tier-{tier}")
        .stats.remote()
        .result()["generated_tokens"]
    )


def test_a_confident_prefix_is_accepted_and_streamed_live(server):
    url, _ = server
    msgs = [{"role": "user", "content": "Write a short poem about the sea."}]
    headers, events, _ = sse(url, {"model": "ladder", "messages": msgs, "max_tokens": 48, "temperature": 0})
    ext = ladder_of(events)
    assert headers["x-ladder-tier"] == "small" and ext["tier"] == "small"
    assert ext["decided_at"] == K and ext["streamed"] and ext["escalations"] == 0 and ext["hedged"] is False
    assert {e["model"] for e in events if e.get("choices")} == {"small"}
    # the same text as the tier streamed on its own (greedy)
    _, pinned, _ = sse(url, {"model": "small", "messages": msgs, "max_tokens": 48, "temperature": 0})
    assert text_of(events) == text_of(pinned) and len(text_of(events)) > 20
    assert ladder_of(pinned)["route"] == "forced" and ladder_of(pinned)["decided_at"] == 0


def test_an_unsure_prefix_escalates_at_once_and_the_client_sees_only_the_next_rung(server):
    url, _ = server
    msgs = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
    body = {"messages": msgs, "max_tokens": 64, "temperature": 2.0, "seed": 7}
    small_before = generated("small")
    headers, events, _ = sse(url, {"model": "ladder", **body})
    small_spent = generated("small") - small_before
    ext = ladder_of(events)
    assert headers["x-ladder-tier"] == "medium" and ext["tier"] == "medium" and ext["streamed"]
    small, medium = ext["rungs_tried"]
    assert (small["tier"], small["accepted"], small["decided_at"], small["completion_tokens"]) == ("small", False, K, K)
    assert (medium["tier"], medium["accepted"], medium["decided_at"]) == ("medium", True, 0)
    # the small tier was stopped after the decision, not left to write its 64 tokens
    assert K <= small_spent < 32, small_spent
    # what the client read is exactly the medium tier's answer (same seed, pinned): never spliced
    _, pinned, _ = sse(url, {"model": "medium", **body})
    assert text_of(events) == text_of(pinned) and text_of(events)
    usage = [e for e in events if e.get("usage")]
    assert not usage  # include_usage was not asked for


def test_a_plain_request_stops_the_escalated_rung_after_its_prefix_too(server):
    # issue 28: a buffered (non-streamed) request runs the same prefix decision; before, the small
    # tier wrote all its 64 tokens before the whole-answer IDK step escalated
    url, _ = server
    msgs = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
    body = {"model": "ladder", "messages": msgs, "max_tokens": 64, "temperature": 2.0, "seed": 7}
    small_before = generated("small")
    r = httpx.post(url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=120)
    small_spent = generated("small") - small_before
    assert r.status_code == 200, r.text
    ext = r.json()["ladder"]
    small, medium = ext["rungs_tried"]
    assert (small["accepted"], small["decided_at"], small["completion_tokens"]) == (False, K, K)
    assert medium["accepted"] and r.json()["model"] == "medium" and not ext["streamed"]
    assert K <= small_spent < 32, small_spent


def test_usage_and_the_ladder_object_close_a_routed_stream(server):
    url, _ = server
    body = {
        "model": "ladder",
        "messages": [{"role": "user", "content": "Name three colors."}],
        "max_tokens": 16,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    _, events, _ = sse(url, body)
    finish = [e for e in events if e.get("choices") and e["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and "ladder" in finish[0]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0


def test_bad_stream_options_are_a_400_before_the_stream(server):
    url, _ = server
    with httpx.Client(timeout=30, headers={"authorization": f"Bearer {KEY}"}) as http:
        r = http.post(
            url + "/v1/chat/completions",
            json={
                "model": "ladder",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
                "stream_options": {"include_usage": "yes"},
            },
        )
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("stream_options")


# -- the live policy: swapped without a restart (issue 21) ----------------------------------------
def two_rung_policy(tmp_path, idk: bool):  # noqa: ANN001, ANN201
    """A learned policy over small + medium, fitted on the committed HumanEval outcomes."""
    from dataclasses import replace
    from pathlib import Path

    from ladder.offline.training import TrainSpec, train_policy
    from ladder.outcomes.io import read_jsonl
    from ladder.policies.features import FeaturizerKind
    from ladder.policies.store import save_policy

    o = read_jsonl(Path(__file__).resolve().parents[2] / "data" / "outcomes" / "humaneval.jsonl")
    o = replace(o, rungs=("small", "medium"), quality=o.quality[:, :2], tokens=o.tokens[:, :2])
    policy = train_policy(o, TrainSpec(FeaturizerKind.TFIDF, idk=idk))
    return policy, save_policy(policy, tmp_path / f"two-rung-{idk}.json")


def ladder_cli(*args: str) -> tuple[int, str, str]:
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "ladder"
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout, r.stderr


def test_policy_show_push_refusals_and_a_swap_under_load_without_a_failed_request(server, tmp_path):
    import threading

    url, _ = server
    rc, out, _ = ladder_cli("policy", "show", "--url", url)
    shown = json.loads(out)
    assert rc == 0 and shown["configured"] and shown["version"].startswith("fixed-")
    configured = shown["version"]

    # refused, and the old policy keeps serving: wrong rungs (the bundled three-rung policy) ...
    rc, _, err = ladder_cli("policy", "push", "src/ladder/data/policy/default.json", "--url", url)
    assert rc == 2 and "fitted for rungs" in err and err.count("\n") == 1
    # ... an IDK step that reads verifier signals these tiers do not compute ...
    verifying, path = two_rung_policy(tmp_path, idk=True)
    assert verifying.verifier_rungs() == ["small"]
    rc, _, err = ladder_cli("policy", "push", str(path), "--url", url)
    assert rc == 2 and "run no verifier" in err
    # ... tensors altered on the way (the server checks the checksum itself)
    from ladder.policies.store import policy_files
    from ladder.serving.live_policy import PolicyFiles

    doc, tensors = policy_files(path)
    from ladder.cluster.secrets import admin_key
    from ladder.cluster.settings import load_config

    admin = {"authorization": f"Bearer {admin_key(load_config())}"}  # the key `ladder serve` keeps in the cache dir
    r = httpx.put(
        url + "/admin/policy", content=PolicyFiles(doc, tensors[:-1] + b"\x00").encode(), headers=admin, timeout=30
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "policy_refused" and "checksum" in r.text
    assert httpx.get(url + "/health").json()["policy_version"] == configured

    # a valid one, pushed while clients keep asking: no request fails, the new version answers
    new, path = two_rung_policy(tmp_path, idk=False)
    stop, seen, failures = threading.Event(), [], []

    def client() -> None:
        with httpx.Client(timeout=120, headers={"authorization": f"Bearer {KEY}"}) as http:
            while not stop.is_set():
                started = time.perf_counter()
                r = http.post(
                    url + "/v1/chat/completions",
                    json={
                        "model": "ladder",
                        "max_tokens": 2,
                        "temperature": 0,
                        "messages": [{"role": "user", "content": f"Say hi #{len(seen)}"}],
                    },
                )
                if r.status_code != 200:
                    failures.append(r.status_code)
                else:
                    seen.append((started, time.perf_counter(), r.json()["ladder"]["policy_version"]))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()

    def wait_for(enough: Callable[[], bool], what: str) -> None:
        deadline = time.perf_counter() + 180  # a 2-core box answers these in 3-12 s each
        while not enough():
            assert time.perf_counter() < deadline and not failures, f"{what}: {seen} {failures}"
            time.sleep(0.2)

    try:
        wait_for(lambda: len(seen) >= 3, "warm-up")
        rc, out, err = ladder_cli("policy", "push", str(path), "--url", url)
        pushed = time.perf_counter()
        assert rc == 0, err
        wait_for(lambda: sum(started > pushed for started, _, _ in seen) >= 3, "answers after the push")
    finally:
        stop.set()
        for t in threads:
            t.join()
    try:
        assert json.loads(out)["version"] == new.version and json.loads(out)["previous"] == configured
        assert not failures
        # one replica: a request that starts once the push returned is routed by the new policy,
        # and none flaps back after the first new answer (one that started earlier may finish on the old)
        assert all(v == new.version for started, _, v in seen if started > pushed)
        first_new = min(done for _, done, v in seen if v == new.version)
        assert all(v == new.version for started, _, v in seen if started > first_new)
        shown = json.loads(ladder_cli("policy", "show", "--url", url)[1])
        assert shown["version"] == new.version and not shown["configured"] and shown["previous"] == configured
    finally:  # the next tests share this server and expect its configured policy
        rc, out, _ = ladder_cli("policy", "rollback", "--url", url)
    assert rc == 0 and json.loads(out)["version"] == configured and json.loads(out)["configured"]
    assert httpx.get(url + "/health").json()["policy_version"] == configured


def test_the_shadow_log_records_requests_by_id_and_exports_prompts_to_collect(server, tmp_path):
    from ladder.offline.datasets import load_prompts

    url, _ = server
    headers = {"authorization": f"Bearer {KEY}", "x-request-id": "mine-1"}
    body = {
        "model": "ladder",
        "messages": [{"role": "user", "content": "Name a fruit."}],
        "max_tokens": 8,
        "temperature": 0,
    }
    r = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=120)
    assert r.status_code == 200 and r.headers["x-request-id"] == "mine-1"
    streamed_headers, events, _ = sse(url, {**body, "messages": [{"role": "user", "content": "Name a color."}]})
    generated_id = streamed_headers["x-request-id"]  # Serve's, when the client sends none
    bad = httpx.post(
        url + "/v1/chat/completions",
        json={**body, "messages": [{"role": "user", "content": "Hi."}]},
        headers={**headers, "x-request-id": "a b;c"},
        timeout=120,
    )
    assert bad.status_code == 200
    time.sleep(0.5)  # records are written off the request path
    out = tmp_path / "shadow.jsonl"
    rc, stdout, err = ladder_cli("shadow", "export", "-o", str(out), "--url", url)
    assert rc == 0, err
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert "a b;c" not in records and any(i.startswith("req-") for i in records)  # an unsafe id is not logged as given
    mine = records["mine-1"]
    assert mine["messages"] == [{"role": "user", "content": "Name a fruit."}] and mine["answered_by"] in (
        "small",
        "medium",
    )
    assert mine["attempts"][0]["tier"] == "small" and mine["policy_version"] == POLICY_VERSION
    assert records[generated_id]["streamed"] and records[generated_id]["attempts"][0]["decided_at"] in (None, K)
    prompts = load_prompts(out)  # the log is a prompts file for `ladder collect`
    assert {"mine-1", generated_id} <= {it.id for it in prompts.items} and not prompts.rejected
