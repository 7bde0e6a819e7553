"""`/admin/tiers/<name>` in-process (no Ray): what a tier update is refused for before anything
starts, the switch of one tier's workers, and the signed records in a real Redis that ingress
replicas adopt. The update itself runs on Serve: tests/integration/test_tier_update.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from ladder.cluster.redis_server import EmbeddedRedis
from ladder.cluster.settings import TierConfig
from ladder.serving.gateway import Gateway
from ladder.serving.signing import Signer
from ladder.serving.tier_update import KEY_LIVE, LiveTier, LiveTiers
from tests.fakes import ScriptedWorker
from tests.serving.gateway_app import ADMIN, CODE, KEY, call, chat, config, learned, routed


class RecordingUpdates:
    """Stands in for ``tier_update.TierUpdates`` (which deploys on Serve): records what it was asked."""

    def __init__(self) -> None:
        self.started: list[tuple[TierConfig, float]] = []
        self.live = LiveTiers(None, Signer(b"s" * 32), {"small": "ladder-tier-small", "medium": "ladder-tier-medium"})

    async def start(self, tier: TierConfig, timeout_s: float) -> dict:
        self.started.append((tier, timeout_s))
        return {"tier": tier.name, "state": "starting", "generation": 1}


def section(**changes) -> dict:
    return config().tier("small").model_dump(mode="json") | changes


def post(gw: Gateway, name: str, body: dict | str, key: str = ADMIN):
    content = body if isinstance(body, str) else json.dumps(body)
    return call(gw, "POST", f"/admin/tiers/{name}", key=key, content=content)


def gateway(updates=None) -> Gateway:
    tiers = [ScriptedWorker("small", logprob=-3.0, words=6), ScriptedWorker("medium", logprob=-0.1, words=6)]
    return Gateway(config(min_mean_logprob=-1.0), tiers, tiers, None, tier_updates=updates)


def test_an_app_with_every_tier_in_one_application_refuses_updates():
    r = post(gateway(), "small", {"tier": section(timeout_s=30)})
    assert r.status_code == 409 and r.json()["error"]["code"] == "tier_update_refused"
    assert "cannot replace a tier alone" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "name,body,status,param",
    [
        ("small", {"tier": section(timeout_s=30)}, 401, None),  # a client key, not an admin key
        ("large", {"tier": section(name="large")}, 404, "tier"),
        ("small", {"tier": section(name="medium")}, 400, "tier.name"),
        ("small", {"tier": section(price={"input_per_1m": 1, "output_per_1m": 3})}, 400, "tier.price"),
        ("small", {"tier": section(verifier="python_examples")}, 400, "tier.verifier"),
        ("small", {"tier": section(), "timeout_s": 7200}, 400, "timeout_s"),
        ("small", {"tier": section(backend="nope")}, 400, "tier.backend"),
        ("small", "not json", 400, None),
    ],
)
def test_an_update_is_refused_with_the_field_named_and_nothing_started(name, body, status, param):
    updates = RecordingUpdates()
    r = post(gateway(updates), name, body, key=KEY if status == 401 else ADMIN)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    assert updates.started == []


def test_a_valid_section_starts_the_update_and_says_so():
    updates = RecordingUpdates()
    r = post(gateway(updates), "small", {"tier": section(timeout_s=30), "timeout_s": 120})
    assert r.status_code == 202 and r.json()["state"] == "starting"
    ((tier, timeout_s),) = updates.started
    assert tier.timeout_s == 30 and timeout_s == 120


def test_a_replaced_tier_takes_the_next_request_and_the_admin_api_shows_its_section():
    gw = gateway(RecordingUpdates())
    before = call(gw, "POST", "/v1/chat/completions", **chat()).json()["ladder"]
    assert [a["tier"] for a in before["rungs_tried"]] == ["small", "medium"]  # small's answers escalate
    confident = ScriptedWorker("small", logprob=-0.1, words=6)
    gw.replace_tier(TierConfig.model_validate(section(timeout_s=30)), confident, confident)
    after = call(gw, "POST", "/v1/chat/completions", **chat()).json()["ladder"]
    assert [a["tier"] for a in after["rungs_tried"]] == ["small"]
    shown = call(gw, "GET", "/admin/tiers/small", key=ADMIN).json()
    assert shown["config"]["timeout_s"] == 30 and shown["app"] == "ladder-tier-small"


@pytest.fixture(scope="module")
def redis_url():
    server = EmbeddedRedis().start()
    yield server.url
    server.stop()


def test_replicas_adopt_only_signed_records_and_a_fresh_serve_forgets_them(redis_url):
    import redis

    signer = Signer(b"k" * 32)
    apps = {"small": "ladder-tier-small", "medium": "ladder-tier-medium"}
    writer = LiveTiers(redis_url, signer, apps)
    new = TierConfig.model_validate(section(timeout_s=30))
    asyncio.run(writer.record(LiveTier(app="ladder-tier-small-1", generation=1, tier=new)))
    planted = LiveTier(app="attacker", generation=9, tier=TierConfig.model_validate(section(name="medium")))
    redis.Redis.from_url(redis_url).hset(KEY_LIVE, "medium", planted.model_dump_json())  # unsigned
    reader = LiveTiers(redis_url, signer, apps)
    cfg = reader.adopt(config())
    assert reader.apps == {"small": "ladder-tier-small-1", "medium": "ladder-tier-medium"}
    assert cfg.tier("small").timeout_s == 30 and cfg.tier("medium") == config().tier("medium")
    LiveTiers.forget(redis_url)
    assert LiveTiers(redis_url, signer, apps).read_sync() == {}


def test_without_redis_a_replica_serves_the_configured_tiers():
    from ladder.cluster.redis_server import free_port

    live = LiveTiers(f"redis://127.0.0.1:{free_port()}/0", Signer(b"k" * 32), {"small": "ladder-tier-small"})
    assert live.read_sync() == {}


def test_ladder_serve_counts_room_for_a_second_copy_of_its_largest_tier():
    import math
    import os

    cfg = config()  # two tiers of num_cpus 0.5, one ingress of 0.25
    assert cfg.serving_ray_cpus() == max(os.cpu_count() or 1, math.ceil(0.5 + 0.5 + 0.25 + 0.5))
    pinned = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"num_cpus": 2})})
    assert pinned.serving_ray_cpus() == 2  # a configured count is the operator's


def test_a_tier_replaced_with_other_weights_is_skipped_by_routing_until_a_policy_fitted_on_them():
    """A tier update that changes the weights: routed requests stop reaching the tier the moment
    the gateway switches (the bundled policy was fitted on the default GGUFs), pinned ones do."""
    tiers = [ScriptedWorker(t, logprob=-0.05, words=8) for t in ("small", "medium", "large")]
    gw = Gateway(learned(), tiers, tiers, None, tier_updates=RecordingUpdates())
    assert all(r.status_code == 200 for r in routed(gw, CODE)) and tiers[1].calls
    section = learned({"medium": "0" * 64}).tier("medium")
    new = ScriptedWorker("medium", logprob=-0.05, words=8)
    gw.replace_tier(section, new, new)
    answers = routed(gw, CODE)
    assert [r.status_code for r in answers] == [200] * len(CODE) and new.calls == []
    assert routed(gw, CODE[:1], model="medium")[0].json()["model"] == "medium" and len(new.calls) == 1
