"""Access and data rules: Redis AUTH and TLS URLs work against real servers, the decision cache
holds hashes and routes but never prompt text, and nothing Ladder loads goes through pickle."""

import asyncio
import re
import subprocess
from pathlib import Path

import pytest
import redis

from ladder.cluster.redis_server import EmbeddedRedis, free_port
from ladder.cluster.settings import LadderConfig
from ladder.policies.fixed import FixedPolicy
from ladder.router.cascade import decide
from ladder.serving.cache import RedisRouteCache
from ladder.types import Query, Route
from ladder.serving.signing import Signer

SRC = Path(__file__).parents[2] / "src" / "ladder"

SIGNER = Signer(b"a test server secret")  # what the gateway gets from ladder serve


@pytest.mark.redis
def test_redis_auth_url_is_honoured_and_a_wrong_password_is_a_miss_not_a_crash():
    with EmbeddedRedis(password="s3cret-pw") as server:

        async def go():
            good = RedisRouteCache(server.url, ttl_s=60, signer=SIGNER)
            await good.put("k", Route(1, "v1"))
            await good.flush()
            assert await good.get("k") == Route(1, "v1")
            bad = RedisRouteCache(f"redis://:wrong@127.0.0.1:{server.port}/0", ttl_s=60, signer=SIGNER)
            assert await bad.get("k") is None and bad.stats["errors"] == 1
            anonymous = RedisRouteCache(f"redis://127.0.0.1:{server.port}/0", ttl_s=60, signer=SIGNER)
            assert await anonymous.get("k") is None
            await good.close(), await bad.close(), await anonymous.close()

        asyncio.run(go())


async def _tls_proxy(cert: Path, key: Path, upstream_port: int) -> tuple[asyncio.Server, int]:
    """A TLS terminator in front of the plain redis-server (the bundled binary has no TLS)."""
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=ctx)
    return server, port


@pytest.mark.redis
def test_rediss_url_speaks_tls_and_verifies_the_certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    with EmbeddedRedis() as plain:

        async def go():
            server, port = await _tls_proxy(cert, key, plain.port)
            try:
                cache = RedisRouteCache(
                    f"rediss://:{plain.password}@127.0.0.1:{port}/0?ssl_ca_certs={cert}",
                    ttl_s=60,
                    signer=SIGNER,
                    read_timeout_ms=2000,
                    connect_timeout_ms=2000,
                )
                await cache.put("tls-key", Route(2, "v9"))
                await cache.flush()
                assert await cache.get("tls-key") == Route(2, "v9")
                # Without the CA the certificate is rejected: a miss, not a crash.
                untrusted = RedisRouteCache(
                    f"rediss://:{plain.password}@127.0.0.1:{port}/0", ttl_s=60, signer=SIGNER, connect_timeout_ms=2000
                )
                assert await untrusted.get("tls-key") is None and untrusted.stats["errors"] == 1
                await cache.close(), await untrusted.close()
            finally:
                server.close()

        asyncio.run(go())
        assert redis.Redis.from_url(plain.url).get("tls-key") is not None  # it went through the TLS hop


@pytest.mark.redis
def test_decision_cache_stores_hashed_keys_and_routes_never_prompt_text():
    secret = "my-bank-password-is-hunter2"
    with EmbeddedRedis() as server:

        async def go():
            cache = RedisRouteCache(server.url, ttl_s=60, signer=SIGNER)
            await decide(Query.of(f"Remember this: {secret} please"), FixedPolicy(0), cache, 3)
            await cache.flush()
            await cache.close()

        asyncio.run(go())
        client = redis.Redis.from_url(server.url)
        keys = client.keys("*")
        assert len(keys) == 1
        assert re.fullmatch(rb"ladder:route:v\d+:[^:]+:[0-9a-f]{32}", keys[0])
        dump = b"".join(keys) + b"".join(client.get(k) for k in keys)
        for word in (b"hunter2", b"bank", b"Remember"):
            assert word not in dump


def test_nothing_ladder_loads_goes_through_pickle():
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for pattern in (
            r"\bimport pickle\b",
            r"\bpickle\.load",
            r"torch\.load\(",
            r"\bjoblib\b",
            r"allow_pickle\s*=\s*True",
            r"cloudpickle\.load",
        ):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(SRC)}: {pattern}")
    assert offenders == []


def test_the_server_binds_to_loopback_unless_told_otherwise():
    from tests.security.sockets import listeners

    assert LadderConfig().server.host == "127.0.0.1"
    assert LadderConfig().cache.redis_url is None  # the embedded Redis, on loopback and with a password
    with EmbeddedRedis() as server:
        mine = [s for s in listeners({server.process.pid})]
        assert mine and all(s.loopback and s.port == server.port for s in mine)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port).get("x")
        assert server.password not in " ".join(server.process.args)  # not on its command line either
