"""Fault injection against a running Ladder, and the accounting of what clients saw meanwhile.

The faults are the real thing: a tier replica's actor killed, its vLLM engine process killed, the
Serve HTTP proxy killed (Serve's controller restarts it), Redis stopped, Redis filled to its ``maxmemory`` with eviction off. A
scenario keeps a steady closed-loop load on the endpoint, injects the fault at a fixed second,
and classifies every request: before the fault, in flight when it struck, or after; succeeded,
failed with an HTTP error, or got no HTTP response (a client-visible connection error — nothing
is silently dropped). Recovery is the time from the fault to the first request after which every
request succeeded. Used by ``benchmarks/faults.py`` and ``tests/integration/test_faults.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .loadgen import Outcome, closed_loop, short_chat


def kill_replica(deployment: str) -> str:
    """Kill one replica actor of ``deployment`` (e.g. "tier-small") for good; Serve must replace it."""
    import ray

    actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if f"#{deployment}#" in a["name"]]
    if not actors:
        raise RuntimeError(f"no replica actor of {deployment} found")
    ray.kill(ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]), no_restart=True)
    return actors[0]["name"]


def kill_engine(deployment: str) -> str:
    """SIGKILL the vLLM engine process under one replica of ``deployment`` (the replica lives on:
    it must notice, fail what was in flight, and be replaced by Serve through its health check).
    Found by process titles (the replica's is ``ray::ServeReplica:<app>:<deployment>…``, the
    engine's ``VLLM::EngineCore``), so no Ray dashboard is needed."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "VLLM::EngineCore" not in " ".join(proc.info["cmdline"] or []):
                continue
            parent = proc.parent()
            if parent is not None and f":{deployment}" in " ".join(parent.cmdline()):
                proc.kill()
                return f"engine pid {proc.pid} of replica pid {parent.pid}"
        except psutil.Error:
            continue
    raise RuntimeError(f"no vLLM engine process found under a replica of {deployment}")


def kill_proxy() -> str:
    """Kill the HTTP proxy actor; Serve's controller notices and starts a new one."""
    import ray

    proxies = [a for a in ray.util.list_named_actors(all_namespaces=True) if "PROXY_ACTOR" in a["name"]]
    if not proxies:
        raise RuntimeError("no Serve proxy actor found")
    ray.kill(ray.get_actor(proxies[0]["name"], namespace=proxies[0]["namespace"]), no_restart=True)
    return proxies[0]["name"]


def fill_redis(url: str, chunk_bytes: int = 64 * 1024, limit: int = 100_000) -> int:
    """Switch eviction off and write junk until Redis refuses writes (OOM); returns keys written."""
    import redis

    client = redis.Redis.from_url(url)
    client.config_set("maxmemory-policy", "noeviction")
    blob = b"x" * chunk_bytes
    for i in range(limit):
        try:
            client.set(f"junk:{i}", blob)
        except redis.exceptions.OutOfMemoryError:  # "command not allowed when used memory > 'maxmemory'"
            return i
    raise RuntimeError(f"Redis still accepted writes after {limit} × {chunk_bytes} bytes")


async def scenario(
    base_url: str,
    api_key: str | None,
    fault: Callable[[], object],
    *,
    at_s: float = 5.0,
    total_s: float = 30.0,
    concurrency: int = 2,
    heal: Callable[[], object] | None = None,
    heal_at_s: float | None = None,
    timeout_s: float = 60.0,
) -> tuple[list[Outcome], float]:
    """Closed-loop load for ``total_s``; ``fault()`` runs at ``at_s`` (and ``heal()`` at ``heal_at_s``)
    in a thread so the load never pauses. Returns every outcome and the fault's time."""
    t0 = time.perf_counter()
    load = asyncio.create_task(
        closed_loop(base_url, api_key, concurrency, total_s, lambda i: short_chat(i, max_tokens=6), timeout_s)
    )
    await asyncio.sleep(at_s)
    fault_at = time.perf_counter() - t0
    await asyncio.to_thread(fault)
    if heal is not None and heal_at_s is not None:
        await asyncio.sleep(max(0.0, heal_at_s - (time.perf_counter() - t0)))
        await asyncio.to_thread(heal)
    outcomes = await load
    return outcomes, fault_at


def account(outcomes: list[Outcome], fault_at: float) -> dict:
    """Requests before / in flight at / after the fault, by result, and the time to recover."""

    def tally(group: list[Outcome]) -> dict:
        return {
            "total": len(group),
            "ok": sum(o.status == 200 for o in group),
            "http_error": sum(o.status not in (200, None) for o in group),
            "no_response": sum(o.status is None for o in group),
        }

    before = [o for o in outcomes if o.started + o.latency_s < fault_at]
    in_flight = [o for o in outcomes if o.started < fault_at <= o.started + o.latency_s]
    after = sorted((o for o in outcomes if o.started >= fault_at), key=lambda o: o.started)
    last_bad = max((i for i, o in enumerate(after) if o.status != 200), default=None)
    if last_bad is None:
        recovery = 0.0
    elif last_bad + 1 < len(after):
        recovery = after[last_bad + 1].started - fault_at
    else:
        recovery = None  # not recovered within the run
    codes = sorted(
        {f"{o.status}:{o.code}" if o.status else f"no-response:{o.failure}" for o in outcomes if o.status != 200}
    )
    return {
        "before": tally(before),
        "in_flight": tally(in_flight),
        "after": tally(after),
        "recovery_s": recovery,
        "error_kinds": codes,
        "max_latency_after_s": max((o.latency_s for o in after if o.status == 200), default=None),
        "errors_without_body": sum(1 for o in outcomes if o.status not in (200, None) and not o.well_formed),
    }
