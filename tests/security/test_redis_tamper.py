"""What a replica adopts from Redis, against a real redis-server: entries written without the
server secret are ignored, a signed decision may still not do what only a client may (pin) or
index past the ladder, and routes can never evict the live policy."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import redis

from ladder.cluster.redis_server import EmbeddedRedis
from ladder.offline.training import TrainSpec, train_policy
from ladder.outcomes.io import read_jsonl
from ladder.policies.features import FeaturizerKind
from ladder.policies.fixed import FixedPolicy
from ladder.policies.store import policy_files, save_policy
from ladder.router.cascade import decide
from ladder.router.keys import route_key
from ladder.serving.cache import RedisRouteCache
from ladder.serving.live_policy import LivePolicy, PolicyFiles
from ladder.serving.signing import Signer
from ladder.types import Query, Route

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parents[2]
TIERS = ["small", "medium", "large"]
OURS, THEIRS = Signer(b"the app's own server secret"), Signer(b"a secret the attacker guessed")


@pytest.fixture
def server():
    with EmbeddedRedis() as s:
        yield s


def test_routes_need_the_secret_and_a_signed_one_still_cannot_pin_or_overreach(server):
    policy = FixedPolicy(1)  # starts at medium
    raw = redis.Redis.from_url(server.url)
    planted = {
        "unsigned": (json.dumps(asdict(Route(0, policy.version))), None),
        "wrong secret": (None, THEIRS.sign("k", json.dumps(asdict(Route(0, policy.version))))),
    }

    async def go() -> dict:
        cache = RedisRouteCache(server.url, ttl_s=60, signer=OURS)
        seen = {}
        for name, (plain, _) in planted.items():
            q = Query.of(f"planted {name}")
            key = route_key(q, policy.version)
            value = plain if plain is not None else THEIRS.sign(key, json.dumps(asdict(Route(0, policy.version))))
            raw.set(key, value, ex=60)
            seen[name] = await decide(q, policy, cache, 3)
        for name, route in {
            "pinned": Route(0, policy.version, pinned=True),
            "past the ladder": Route(99, policy.version),
            "another policy": Route(0, "hybrid-someone-else"),
            "negative": Route(-5, policy.version),
        }.items():
            q = Query.of(f"signed {name}")
            key = route_key(q, policy.version)
            raw.set(key, OURS.sign(key, json.dumps(asdict(route))), ex=60)
            seen[name] = await decide(q, policy, cache, 3)
        await cache.close()
        return seen

    seen = asyncio.run(go())
    for name in ("unsigned", "wrong secret", "pinned", "another policy"):
        route, hit = seen[name]
        assert not hit and route.start == 1 and not route.pinned, name  # decided afresh by the policy
    assert seen["past the ladder"] == (Route(2, policy.version), True)  # clamped to the top rung
    assert seen["negative"] == (Route(0, policy.version), True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    o = read_jsonl(ROOT / "data" / "outcomes" / "gsm8k.jsonl")
    p = train_policy(o, TrainSpec(FeaturizerKind.TFIDF, idk=False))
    return PolicyFiles(*policy_files(save_policy(p, tmp_path_factory.mktemp("tamper") / "p.json")))


def test_a_policy_written_with_another_secret_is_not_adopted(server, files):
    async def go() -> tuple[str, str]:
        attacker = LivePolicy(FixedPolicy(0), TIERS, [], server.url, THEIRS, poll_s=0.0)
        replica = LivePolicy(FixedPolicy(0), TIERS, [], server.url, OURS, poll_s=0.0)
        pushed = await attacker.push(files)  # published with the wrong secret
        await replica.refresh()
        return pushed["version"], replica.policy.version

    pushed, kept = asyncio.run(go())
    assert pushed != kept == "fixed-s0-tnone"


def test_routes_filling_redis_never_evict_the_live_policy(files):
    with EmbeddedRedis(maxmemory="12mb") as small:

        async def go() -> str:
            one = LivePolicy(FixedPolicy(0), TIERS, [], small.url, OURS, poll_s=0.0)
            pushed = await one.push(files)
            # more routes than the memory cap holds next to the policy, as the route cache writes
            # them (signed, with a TTL), in pipelines for speed
            fill = redis.Redis.from_url(small.url).pipeline(transaction=False)
            for i in range(60_000):
                key = route_key(Query.of(f"filler {i}"), "v")
                fill.set(key, OURS.sign(key, json.dumps(asdict(Route(1, "v"))) + " " * 50), ex=600)
                if i % 1000 == 999:
                    fill.execute()
            late = LivePolicy(FixedPolicy(0), TIERS, [], small.url, OURS, poll_s=0.0)  # started afterwards
            await late.refresh()
            assert late.policy.version == pushed["version"]
            return pushed["version"]

        asyncio.run(go())
        client = redis.Redis.from_url(small.url)
        assert client.info("stats")["evicted_keys"] > 0  # routes were evicted, the policy was not
