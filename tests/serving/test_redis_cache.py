"""The Redis route cache against a real redis-server: round trips, TTL, outages, recovery."""

import asyncio
import time

import pytest

from ladder.cluster.redis_server import EmbeddedRedis
from ladder.serving.cache import RedisRouteCache
from ladder.types import Route
from ladder.serving.signing import Signer

pytestmark = pytest.mark.redis
ROUTE = Route(1, "v7", scores=(0.25, 0.75), thresholds=(0.5, 0.5))

SIGNER = Signer(b"a test server secret")  # what the gateway gets from ladder serve


@pytest.fixture
def redis_server():
    server = EmbeddedRedis().start()
    yield server
    server.stop()


def cache_for(server: EmbeddedRedis, **kw) -> RedisRouteCache:
    return RedisRouteCache(server.url, ttl_s=100, signer=SIGNER, breaker_cooldown_s=0.5, **kw)


def test_put_then_get_round_trips_with_a_jittered_ttl(redis_server):
    async def go():
        cache = cache_for(redis_server)
        assert await cache.get("k") is None
        await cache.put("k", ROUTE)
        await cache.flush()
        got = await cache.get("k")
        ttl = await cache.client.ttl("k")
        raw = await cache.client.get("k")
        await cache.close()
        return got, ttl, raw

    got, ttl, raw = asyncio.run(go())
    assert got == ROUTE
    assert 89 <= ttl <= 110
    assert b"prompt" not in raw and b"v7" in raw


def test_outage_reads_as_a_fast_miss_and_recovery_resumes_hits(redis_server):
    async def go():
        cache = cache_for(redis_server)
        await cache.put("k", ROUTE)
        await cache.flush()
        port = redis_server.port
        redis_server.stop()
        t0 = time.perf_counter()
        misses = [await cache.get("k") for _ in range(10)]
        outage_s = time.perf_counter() - t0
        skipped = cache.stats["skipped"]
        await cache.put("k2", ROUTE)  # must not raise or block
        restarted = EmbeddedRedis(port=port, password=redis_server.password).start()
        await asyncio.sleep(0.6)  # past the breaker's cool-down
        await cache.put("k", ROUTE)
        await cache.flush()
        hit = None
        for _ in range(5):
            hit = await cache.get("k")
            if hit:
                break
            await asyncio.sleep(0.2)
        await cache.close()
        restarted.stop()
        return misses, outage_s, skipped, hit

    misses, outage_s, skipped, hit = asyncio.run(go())
    assert misses == [None] * 10
    assert outage_s < 2.0  # ten lookups against a dead Redis: bounded by timeouts and the breaker
    assert skipped > 0  # the circuit breaker opened
    assert hit == ROUTE


def test_corrupt_value_is_a_miss(redis_server):
    async def go():
        cache = cache_for(redis_server)
        await cache.client.set("k", b"{not json")
        got = await cache.get("k")
        await cache.close()
        return got

    assert asyncio.run(go()) is None
