"""The live policy across replicas, against a real redis-server (no Ray): a push on one replica
reaches the others through Redis, bad pushes are refused, rollback, and a Redis outage."""

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from ladder.cluster.redis_server import EmbeddedRedis
from ladder.errors import PolicyFileError
from ladder.offline.training import TrainSpec, train_policy
from ladder.outcomes.io import read_jsonl
from ladder.policies.features import FeaturizerKind
from ladder.policies.fixed import FixedPolicy
from ladder.policies.store import policy_files, save_policy
from ladder.serving.live_policy import LivePolicy, PolicyFiles
from ladder.serving.signing import Signer

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parents[2]
TIERS = ["small", "medium", "large"]
SIGNER = Signer(b"the app's server secret")  # every replica of one app shares it


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two learned policies over the default tiers (fitted without verifier-reading IDK steps)."""
    o = read_jsonl(ROOT / "data" / "outcomes" / "gsm8k.jsonl")
    out = tmp_path_factory.mktemp("live")
    a = train_policy(o, TrainSpec(FeaturizerKind.TFIDF, idk=False))
    b = replace(a, thresholds=(0.3, 0.3))
    return [PolicyFiles(*policy_files(save_policy(p, out / f"{n}.json"))) for n, p in (("a", a), ("b", b))]


@pytest.fixture
def redis_url():
    server = EmbeddedRedis().start()
    yield server.url
    server.stop()


def replica(url: str | None) -> LivePolicy:
    return LivePolicy(FixedPolicy(0), TIERS, [], url, SIGNER, poll_s=0.0)


def test_a_push_reaches_every_replica_and_rollback_goes_back(files, redis_url):
    async def go():
        one, two, late = replica(redis_url), replica(redis_url), None
        info = await one.push(files[0])
        assert info["published"] and one.policy.version == info["version"] != "fixed-s0-tnone"
        await two.refresh()
        assert two.policy.version == one.policy.version  # the other replica follows
        late = replica(redis_url)  # a replica Serve starts later
        await late.refresh()
        assert late.policy.version == one.policy.version
        b = await two.push(files[1])
        await one.refresh()
        assert one.policy.version == b["version"]
        back = await one.rollback()  # one step back: a, on every replica
        assert back["version"] == info["version"]
        await two.refresh()
        assert two.policy.version == info["version"]
        forth = await two.rollback()  # twice: forth again
        assert forth["version"] == b["version"]

    asyncio.run(go())


def test_rolling_back_the_first_push_returns_to_the_configured_policy(files, redis_url):
    async def go():
        one, two = replica(redis_url), replica(redis_url)
        await one.push(files[0])
        await two.refresh()
        back = await two.rollback()
        await one.refresh()
        return back, one

    back, one = asyncio.run(go())
    assert back["configured"] and one.policy.version == "fixed-s0-tnone"


class LateRead(LivePolicy):
    """A replica whose reads of the live key come back late (a slow network), held until ``arrive``."""

    def __init__(self, url: str) -> None:
        super().__init__(FixedPolicy(0), TIERS, [], url, SIGNER, poll_s=0.0)
        self.arrive = asyncio.Event()

    async def _get(self, key: str) -> str | None:
        value = await super()._get(key)
        if key.endswith(":live"):
            await self.arrive.wait()
        return value


def test_a_refresh_that_read_redis_before_a_push_does_not_swap_the_pushed_policy_back(files, redis_url):
    async def go():
        other, one = replica(redis_url), LateRead(redis_url)
        first = await other.push(files[0])
        stale = asyncio.create_task(one.refresh())  # reads "live = first" now, answers late
        await asyncio.sleep(0.2)
        pushed = await one.push(files[1])
        one.arrive.set()
        await stale
        return first, pushed, one

    first, pushed, one = asyncio.run(go())
    assert first["version"] != pushed["version"]
    assert one.policy.version == pushed["version"]  # (before the fix: swapped back to ``first``)


def test_bad_pushes_are_refused_and_the_old_policy_keeps_serving(files, redis_url):
    async def go():
        one = replica(redis_url)
        broken = PolicyFiles(files[0].doc, files[0].tensors[:-1] + b"\0")
        with pytest.raises(PolicyFileError, match="checksum"):
            await one.push(broken)
        two_rungs = LivePolicy(FixedPolicy(0), ["small", "large"], [], redis_url, SIGNER)
        with pytest.raises(PolicyFileError, match="fitted for rungs"):
            await two_rungs.push(files[0])
        assert one.policy.version == "fixed-s0-tnone" and two_rungs.policy.version == "fixed-s0-tnone"
        with pytest.raises(PolicyFileError, match="no previous policy"):
            await one.rollback()

    asyncio.run(go())


def test_without_redis_a_push_swaps_only_the_replica_it_reached():
    async def go():
        lone = LivePolicy(
            FixedPolicy(0), TIERS, [], "redis://127.0.0.1:1/0", SIGNER, poll_s=0.0
        )  # nothing listens there
        return lone, await lone.push(PolicyFiles(*_files_for_offline()))

    lone, info = asyncio.run(go())
    assert info["published"] is False and lone.policy.version == info["version"]


def _files_for_offline():
    o = read_jsonl(ROOT / "data" / "outcomes" / "gsm8k.jsonl")
    import tempfile

    path = save_policy(train_policy(o, TrainSpec(FeaturizerKind.TFIDF, idk=False)), Path(tempfile.mkdtemp()) / "p.json")
    return policy_files(path)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"3",
        b'{"doc": 1, "tensors_b64": "AA=="}',
        b'{"doc": "x"}',
        b'{"doc": "x", "tensors_b64": "not base64!"}',
        b"\xff\xfe",
    ],
)
def test_a_malformed_push_body_is_a_value_error(body):
    with pytest.raises(ValueError):
        PolicyFiles.decode(body)
