"""Draining every ingress replica through a real redis-server (``serving.drain``): the replica told
tells the others on their health-check tick, their requests in flight are summed, and what is not
this start's, or not signed, drains nothing."""

import asyncio
import json
import time

import pytest
import redis

from ladder.cluster.redis_server import EmbeddedRedis
from ladder.serving.drain import REPORT_KEEP_S, Drain
from ladder.serving.signing import Signer

pytestmark = pytest.mark.redis
SECRET = b"s" * 32


@pytest.fixture(scope="module")
def redis_server():
    server = EmbeddedRedis().start()
    yield server
    server.stop()


@pytest.fixture
def url(redis_server):
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


def test_the_told_replica_tells_the_others_and_their_requests_in_flight_are_summed(url):
    async def go() -> tuple:
        told, other, idle = (Drain(url, "launch-1", Signer(SECRET)) for _ in range(3))
        told.in_flight, other.in_flight = 1, 2
        await told.start()
        before_tick = other.draining
        await other.tick()
        await idle.tick()
        summed = await told.state()
        other.in_flight = 0  # its answers finished; reported on its next tick
        await other.tick()
        told.in_flight = 0
        return before_tick, other.draining, idle.draining, summed, await told.state()

    before_tick, other_draining, idle_draining, summed, later = asyncio.run(go())
    assert before_tick is False and other_draining and idle_draining
    assert summed == {"draining": True, "in_flight": 3, "replicas": 3, "shared": True}
    assert later == {"draining": True, "in_flight": 0, "replicas": 3, "shared": True}


def test_another_start_of_the_app_and_planted_entries_drain_nothing(url):
    client = redis.Redis.from_url(url)

    async def go() -> tuple:
        await Drain(url, "launch-1", Signer(SECRET)).start()
        other_app = Drain(url, "launch-2", Signer(SECRET))  # shares the Redis and the secret
        await other_app.tick()
        # an attacker with Redis access: a flag and a report without the secret's signature
        client.set("ladder:drain:launch-3", "0" * 64 + ":launch-3")
        victim = Drain(url, "launch-3", Signer(SECRET))
        await victim.tick()
        client.hset("ladder:drain:launch-1:replicas", "planted", json.dumps({"in_flight": 99, "at": time.time()}))
        # a replica gone (its last report older than REPORT_KEEP_S) no longer counts
        gone = Drain(url, "launch-1", Signer(SECRET))
        body = json.dumps({"in_flight": 5, "at": time.time() - REPORT_KEEP_S - 1})
        client.hset(gone.reports_key, gone.replica, gone.signer.sign(f"{gone.reports_key}:{gone.replica}", body))
        reader = Drain(url, "launch-1", Signer(SECRET))
        return other_app.draining, victim.draining, await reader.state()

    other_draining, victim_draining, state = asyncio.run(go())
    assert other_draining is False and victim_draining is False
    assert state == {"draining": False, "in_flight": 0, "replicas": 2, "shared": True}  # reader + the told one


def test_without_redis_the_told_replica_drains_alone_and_says_so(redis_server):
    dead = EmbeddedRedis().start()
    dead.stop()

    async def go() -> tuple:
        for target in (None, dead.url):
            drain = Drain(target, "launch-1", Signer(SECRET))
            drain.in_flight = 1
            await drain.start()
            await drain.tick()  # never raises: Serve would call the replica unhealthy
            yield drain.draining, await drain.state()

    async def collect() -> list:
        return [x async for x in go()]

    for draining, state in asyncio.run(collect()):
        assert draining and state == {"draining": True, "in_flight": 1, "replicas": 1, "shared": False}
