"""``ladder serve``: bring up the runtime, deploy the app, wait for Ctrl-C, tear everything down."""

from __future__ import annotations

import re
import sys
import time

from ladder.cluster.compose import materialize
from ladder.cluster.placement import check_placement
from ladder.cluster.redis_server import redacted
from ladder.cluster.secrets import admin_key_path
from ladder.cluster.runtime import Runtime
from ladder.cluster.settings import LadderConfig
from ladder.errors import ConfigError, EngineStartFailed, LadderError, WeightsUnavailable
from ladder.serving.tier_update import APP, INGRESS, TIER_APP_PREFIX, LiveTiers, tier_app_name, tier_deployment_name


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


def deploy(config: LadderConfig, runtime: Runtime, poll_s: float = 2.0) -> str:
    """Deploy the Serve app on the running Ray; returns the base URL once every replica is up,
    printing each tier's progress meanwhile (its engine can take minutes to start; the ingress
    answers /health and /ready from the start, and skips tiers that are not up yet)."""
    from ray import serve

    from ladder.serving.app import run_targets

    check_placement(config)
    LiveTiers.forget(runtime.redis_url)  # tiers replaced under an earlier run of the app are not ours
    serve.start(http_options={"host": config.server.host, "port": config.server.port})
    targets = run_targets(config, runtime.redis_url)
    try:
        runtime.apps.extend(t.name for t in targets)  # on a joined cluster, close removes them whatever happens next
        serve.run_many(targets, wait_for_applications_running=False)
        wait_running(config, poll_s)
    except RuntimeError as exc:  # the replica's traceback is in the deployment's status message
        report = [str(exc)]
        try:
            report += [application_report(a) for a in serve.status().applications.values()]
        except Exception:  # noqa: BLE001 — the status is a best effort; the error below stands
            pass
        raise startup_error("\n".join(report)) from None
    return f"http://{config.server.host}:{config.server.port}"


def wait_running(config: LadderConfig, poll_s: float) -> None:
    """Until Serve says every application (each tier's, the ingress's) is RUNNING: one line per
    tier whenever its state changes (and every minute while it waits), e.g. ``tier large:
    starting (0/1 replicas up, 95 s)``."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    t0 = time.monotonic()
    said: dict[str, tuple[str, float]] = {}
    names = [APP, *(tier_app_name(t.name) for t in config.tiers)]
    while True:
        apps = serve.status().applications
        for name in names:
            if (app := apps.get(name)) is not None and app.status == ApplicationStatus.DEPLOY_FAILED:
                raise RuntimeError(f"Deploying application {name} failed: {app.message}")
        for tier in config.tiers:
            app = apps.get(tier_app_name(tier.name))
            d = app.deployments.get(tier_deployment_name(tier.name)) if app is not None else None
            if d is None:
                continue
            up = int(d.replica_states.get("RUNNING", 0))
            state = f"{'up' if up >= tier.min_replicas else 'starting'} ({up}/{tier.min_replicas} replicas up"
            last, at = said.get(tier.name, ("", 0.0))
            if state != last or time.monotonic() - at >= 60:
                print(f"tier {tier.name}: {state}, {time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
                said[tier.name] = (state, time.monotonic())
        if all((app := apps.get(name)) is not None and app.status == ApplicationStatus.RUNNING for name in names):
            return
        time.sleep(poll_s)


def application_report(application) -> str:  # noqa: ANN001 (ray.serve.schema.ApplicationStatusOverview)
    """What Serve says of an application and each of its deployments (a failed replica's
    traceback is in its deployment's message)."""
    return "\n".join([application.message or ""] + [d.message or "" for d in application.deployments.values()])


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


def drain(grace_s: float, poll_s: float = 0.5) -> None:
    """Stop taking requests and give those in flight up to ``grace_s`` to finish. First every
    ingress replica is told (``drain_start`` through ``DeploymentHandle.broadcast``: the proxy
    would hand an HTTP call to one replica only): a new chat request gets 503 ``draining`` +
    Retry-After and ``/ready`` 503, while answers in flight go on; once no replica has any left
    (or the grace is spent) the app is deleted — Serve still lets each replica finish what it
    holds (their ``graceful_shutdown_timeout_s`` is ``server.drain_s``), and only then would a new
    request get the proxy's 404. An ingress that cannot be told (it failed) is deleted at once."""
    from ray import serve

    print(f"draining requests in flight (up to {grace_s:.0f} s) ...", file=sys.stderr, flush=True)
    deadline = time.monotonic() + grace_s
    try:
        ingress = serve.get_deployment_handle(INGRESS, APP)
        states = ingress.broadcast("drain_start").results(timeout_s=10)
        left = sum(s["in_flight"] for s in states)
        print(f"draining: {len(states)} ingress replica(s), {left} request(s) in flight", file=sys.stderr, flush=True)
        while left > 0 and time.monotonic() < deadline:
            time.sleep(poll_s)
            left = sum(s["in_flight"] for s in ingress.broadcast("drain_state").results(timeout_s=10))
    except Exception as exc:  # noqa: BLE001 — whatever Serve raises, the app is stopped below
        print(
            f"draining: the ingress did not answer ({type(exc).__name__}: {exc}); stopping the app",
            file=sys.stderr,
            flush=True,
        )
    serve.delete(APP, _blocking=False)
    # then the tiers (those replaced by `ladder tier update` too): each replica finishes first
    tiers = [name for name in serve.status().applications if name.startswith(TIER_APP_PREFIX)]
    for name in tiers:
        serve.delete(name, _blocking=False)
    deadline = max(deadline, time.monotonic()) + 5  # + the replicas' own stop
    while set(serve.status().applications) & {APP, *tiers} and time.monotonic() < deadline:
        time.sleep(poll_s)


def serve_forever(config: LadderConfig, host: str | None, port: int | None, tiers: list[str] | None) -> None:
    """Serve until SIGTERM or SIGINT (``ladder.cluster.signals``): drain, stop everything, exit 0."""
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
    try:
        with Runtime.start(config, num_cpus=config.serving_ray_cpus()) as runtime:
            url = deploy(config, runtime)
            print(
                f"Ladder is serving {config.tier_names} at {url}/v1 (redis: {redacted(runtime.redis_url)}; admin "
                f"key: {admin_key_source(config)}; dashboard: {url}/dashboard); Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                drain(config.server.drain_s)
    except KeyboardInterrupt:  # a signal while starting, or a second one while draining
        pass
    print("stopped", file=sys.stderr, flush=True)
