"""``ladder serve``: bring up the runtime, deploy the app, wait for Ctrl-C, tear everything down."""

from __future__ import annotations

import re
import signal
import sys
import time

from ladder.cluster.compose import materialize
from ladder.cluster.redis_server import redacted
from ladder.cluster.secrets import admin_key_path
from ladder.cluster.runtime import Runtime
from ladder.cluster.settings import LadderConfig
from ladder.errors import ConfigError, EngineStartFailed, LadderError, WeightsUnavailable


def restrict(config: LadderConfig, tiers: list[str] | None, host: str | None, port: int | None) -> LadderConfig:
    """The config with a subset of tiers and another bind address (re-validated)."""
    data = config.model_dump()
    if tiers:
        data["tiers"] = [config.tier(t).model_dump() for t in tiers]
        if data["policy"].get("start_tier") not in (None, *tiers):
            data["policy"]["start_tier"] = None
        if data["policy"]["kind"] == "learned" and list(tiers) != config.tier_names:
            # a learned policy is fitted to the whole ladder; a subset runs the fixed one
            print(
                f"tiers {','.join(tiers)}: the learned policy covers {config.tier_names}; using the fixed "
                "policy (cheapest rung first)",
                file=sys.stderr,
            )
            data["policy"] = {"kind": "fixed"}
            for t in data["tiers"]:  # nothing reads a verifier's signals any more: do not pay for it
                t["verifier"] = None
    if host:
        data["server"]["host"] = host
    if port:
        data["server"]["port"] = port
    return LadderConfig.model_validate(data)


def deploy(config: LadderConfig, runtime: Runtime) -> str:
    """Deploy the Serve app on the running Ray; returns the base URL once every replica is up."""
    from ray import serve

    from ladder.serving.app import build_app

    serve.start(http_options={"host": config.server.host, "port": config.server.port})
    try:
        serve.run(
            build_app({"config_json": config.model_dump_json(), "redis_url": runtime.redis_url}),
            name="ladder",
            route_prefix="/",
        )
    except RuntimeError as exc:  # the replica's traceback is in the deployment's status message
        report = [str(exc)]
        try:
            for application in serve.status().applications.values():
                report += [application.message or ""] + [d.message or "" for d in application.deployments.values()]
        except Exception:  # noqa: BLE001 — the status is a best effort; the error below stands
            pass
        raise startup_error("\n".join(report)) from None
    return f"http://{config.server.host}:{config.server.port}"


def startup_error(report: str) -> LadderError:
    """The one line that says which tier could not start and why, out of Serve's deploy report."""
    for kind in (EngineStartFailed, WeightsUnavailable, ConfigError):
        if m := re.search(rf"{kind.__name__}: (tier [^\n]+)", report):
            return kind(m.group(1).strip())
    lines = [ln.strip() for ln in report.strip().splitlines() if ln.strip()]
    return LadderError(f"the app did not start: {lines[-1][:300] if lines else 'no report from Ray Serve'}")


def admin_key_source(config: LadderConfig) -> str:
    """Where `ladder policy` finds the admin key, never the key itself."""
    return "server.admin_keys" if config.server.admin_keys else str(admin_key_path(config.cache_path))


def stop_on_sigterm() -> None:
    """SIGTERM (systemd, Docker, Kubernetes) stops like Ctrl-C: Serve, Ray and Redis shut down."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


def serve_forever(config: LadderConfig, host: str | None, port: int | None, tiers: list[str] | None) -> None:
    config = restrict(config, tiers, host, port)
    from ladder.cluster.compose import build_policy

    # A policy that does not fit the tiers is refused here, in one line, before anything starts.
    build_policy(config.policy, config.tier_names, config.verified_tiers)
    if config.verified_tiers:  # a verifier runs prompt-supplied code: isolated, or not at all
        from ladder.sandbox import require_isolation

        require_isolation()
    for tier in config.tiers:  # convert weights here, with progress, not inside replicas
        print(f"preparing tier {tier.name} ...", file=sys.stderr, flush=True)
        materialize(config, tier)
    stop_on_sigterm()
    with Runtime.start(config) as runtime:
        stop_on_sigterm()  # again: Ray's core worker installs its own (it aborts, leaving Redis and agents)
        url = deploy(config, runtime)
        print(
            f"Ladder is serving {config.tier_names} at {url}/v1 (redis: {redacted(runtime.redis_url)}; admin key: "
            f"{admin_key_source(config)}); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping ...", file=sys.stderr, flush=True)
