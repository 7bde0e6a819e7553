"""The Ray Serve application: one deployment per tier, and a router ingress speaking OpenAI.

``build_app(args)`` composes it from the YAML config as ONE Serve application, so it runs from
``serve run ladder.serving.app:build_app config=...`` and a Serve config file (``serve deploy``).
``ladder serve`` deploys ``run_targets(...)`` instead: each tier in a Serve application of its own
(``ladder-tier-<name>``) beside the ingress's (``ladder``), so that one tier can be replaced while
the others serve (``ladder tier update``, ``serving/tier_update.py``: Serve's own redeploy of an
application rolls every deployment whose arguments changed, and stops old replicas before new
ones start). Deployments are thin: ``TierDeployment`` wraps a tier's worker; ``LadderIngress``
runs the HTTP app of ``serving/gateway.py`` (routes, typed errors -> HTTP, the cascade) over tier
handles. The router and the HTTP ingress are one deployment on purpose: it saves a network hop on
every request.
"""

from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from ladder.cluster.secrets import server_secret, with_admin_key
from ladder.cluster.settings import LadderConfig, TierConfig, load_config
from ladder.serving.gateway import Gateway, activate, active, build_api
from ladder.serving.signing import Signer
from ladder.serving.tier_update import APP, INGRESS, LiveTiers, TierUpdates, tier_app_name, tier_deployment_name
from ladder.serving.tiers import TierDeployment, TierHandleStreamer

api = build_api(active)  # the routes reach this replica's Gateway (set in LadderIngress.__init__)
BUFFERED_COALESCE_S = 0.5  # a buffered request's deltas merged over this many seconds (TierDeployment.stream)


@serve.deployment
@serve.ingress(api)
class LadderIngress:
    """The router + OpenAI ingress replica: a ``Gateway`` over handles of the tier deployments."""

    def __init__(
        self,
        config_json: str,
        redis_url: str | None,
        secret_hex: str,
        tiers: dict[str, DeploymentHandle | str],
    ) -> None:
        """``tiers``: each tier's deployment handle (one application), or the name of the Serve
        application that holds it (``ladder serve``: a tier may then be replaced, and the one
        that serves now is read from Redis, where ``ladder tier update`` records it)."""
        config = LadderConfig.model_validate_json(config_json)
        secret = bytes.fromhex(secret_hex)
        apps = {name: t for name, t in tiers.items() if isinstance(t, str)}
        updates = None
        if apps:
            live = LiveTiers(redis_url, Signer(secret), apps)
            config = live.adopt(config)  # tiers replaced since the app was deployed
            tiers = {**tiers, **{name: live.handle(name) for name in apps}}
            updates = TierUpdates(live, config)
        workers, streamers = zip(*(tier_workers(t, tiers[t.name]) for t in config.tiers))
        gateway = Gateway(config, workers, streamers, redis_url, secret, updates)
        if updates is not None:
            updates.gateway = gateway
        activate(gateway)

    # ``ladder serve`` calls these on every replica at once (``DeploymentHandle.broadcast``)
    def drain_start(self) -> dict[str, bool | int]:
        return active().drain.start()

    def drain_state(self) -> dict[str, bool | int]:
        return active().drain.state()

    async def adopt_tiers(self) -> list[str]:
        """Switch to the tiers Redis says serve now (``ladder tier update`` calls it on every
        replica once the new tier answers, before the old one is stopped)."""
        updates = active().tier_updates
        return await updates.adopt() if updates is not None else []


def tier_workers(tier: TierConfig, handle: DeploymentHandle) -> tuple[TierHandleStreamer, TierHandleStreamer]:
    """A tier's two adapters: buffered requests run the same streamed cascade (so a prefix gate
    stops a doomed rung after k tokens there too), with the replica's deltas coalesced into few
    Ray messages; streamed ones get every delta as it comes."""
    return (
        TierHandleStreamer(tier.name, handle, tier.timeout_s, BUFFERED_COALESCE_S),
        TierHandleStreamer(tier.name, handle, tier.timeout_s),
    )


def tier_deployment(tier: TierConfig, cache_path: Path, drain_s: float) -> Application:
    """One tier's deployment, bound to its own section of the config and where the weights are."""
    replicas: dict[str, Any] = (
        {"autoscaling_config": tier.autoscaling.serve_config()}
        if tier.autoscaling
        else {"num_replicas": tier.num_replicas}
    )
    return (
        serve.deployment(TierDeployment)
        .options(
            name=tier_deployment_name(tier.name),
            ray_actor_options=tier.actor_options(),
            **replicas,
            max_ongoing_requests=tier.max_ongoing_requests,
            max_queued_requests=tier.max_queued_requests,
            health_check_period_s=10,
            graceful_shutdown_timeout_s=drain_s,  # a stop lets answers in flight finish
            # An engine that cannot start fails the same way twice: report it within a minute
            # (ladder serve names the tier and exits 2) instead of retrying for many.
            max_constructor_retry_count=2,
        )
        .bind(tier.model_dump_json(), str(cache_path))
    )


def build_app(args: dict[str, Any]) -> Application:
    """Serve entry point, the whole ladder as one application: ``args`` = {"config": path | None,
    "redis_url": url | None}. (A tier of it cannot be replaced alone: ``ladder serve`` deploys
    ``run_targets`` for that.)"""
    config = with_admin_key(load_config(args.get("config")))
    handles = {tier.name: tier_deployment(tier, config.cache_path, config.server.drain_s) for tier in config.tiers}
    return ingress(config, args.get("redis_url") or config.cache.redis_url, handles)


def run_targets(config: LadderConfig, redis_url: str | None) -> list[serve.RunTarget]:
    """What ``ladder serve`` deploys: an application per tier (no HTTP route) and the ingress's.
    Only the ingress gets the whole config (keys included) and the server secret; a tier replica
    gets its own tier's section and where the weights are, nothing else."""
    config = with_admin_key(config)
    tiers = [
        serve.RunTarget(
            tier_deployment(t, config.cache_path, config.server.drain_s), name=tier_app_name(t.name), route_prefix=None
        )
        for t in config.tiers
    ]
    apps: dict[str, Any] = {t.name: tier_app_name(t.name) for t in config.tiers}
    return [*tiers, serve.RunTarget(ingress(config, redis_url, apps), name=APP, route_prefix="/")]


def ingress(config: LadderConfig, redis_url: str | None, tiers: dict[str, Any]) -> Application:
    return LadderIngress.options(
        name=INGRESS,
        num_replicas=config.server.ingress_replicas,
        ray_actor_options=config.server.ingress_actor_options(),
        max_ongoing_requests=256,
        max_queued_requests=512,
        graceful_shutdown_timeout_s=config.server.drain_s,
    ).bind(config.model_dump_json(), redis_url, server_secret().hex(), tiers)
