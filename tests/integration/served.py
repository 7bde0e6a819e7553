"""One way to bring up the real app on the small tier for integration tests (loopback, a key)."""

from collections.abc import Iterator
from contextlib import contextmanager

from ladder.cluster.redis_server import free_port
from ladder.cluster.runtime import Runtime
from ladder.cluster.settings import LadderConfig
from ladder.serving.launch import deploy, restrict


@contextmanager
def small_tier_app(
    api_key: str,
    *,
    server: dict | None = None,
    cache: dict | None = None,
    tier: dict | None = None,
    tiers: tuple[str, ...] = ("small",),
    policy: dict | None = None,
    extra: dict | None = None,
) -> Iterator[tuple[str, Runtime]]:
    """(base URL, runtime) of a served app with only the small tier (or ``tiers``); overrides per
    config section (``tier``: the first tier's)."""
    data = LadderConfig().model_dump()
    data["server"].update(api_keys=[api_key], **(server or {}))
    data["cache"].update(cache or {})
    for t in data["tiers"]:
        # Eager vLLM (no graph compile): the engine starts in ~33 s instead of ~50 s, which the fault
        # tests that kill and replace replicas wait for (throughput is not what these tests measure).
        t["vllm"]["enforce_eager"] = True
    data["tiers"][0].update(tier or {})
    data["ray"]["num_cpus"] = 2
    for section, values in (extra or {}).items():
        data[section].update(values)
    cfg = restrict(LadderConfig.model_validate(data), list(tiers), "127.0.0.1", free_port())
    if policy is not None:
        cfg = LadderConfig.model_validate({**cfg.model_dump(), "policy": policy})
    runtime = Runtime.start(cfg, num_cpus=cfg.serving_ray_cpus())  # as ladder serve starts it
    try:
        yield deploy(cfg, runtime), runtime
    finally:
        runtime.close()
