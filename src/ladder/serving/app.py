"""The Ray Serve application: one deployment per tier, and a router ingress speaking OpenAI.

``build_app(args)`` composes it from the YAML config, so the same app runs from ``ladder serve``,
``serve run ladder.serving.app:build_app config=...`` and a Serve config file (``serve deploy``).
Deployments are thin: ``TierDeployment`` wraps a tier's worker; ``LadderIngress`` runs the HTTP
app of ``serving/gateway.py`` (routes, typed errors -> HTTP, the cascade) over tier handles. The
router and the HTTP ingress are one deployment on purpose: it saves a network hop on every request.
"""

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from ladder.cluster.secrets import server_secret, with_admin_key
from ladder.cluster.settings import LadderConfig, load_config
from ladder.serving.gateway import Gateway, activate, active, build_api
from ladder.serving.tiers import TierDeployment, TierHandleStreamer

api = build_api(active)  # the routes reach this replica's Gateway (set in LadderIngress.__init__)
INGRESS = "ladder-router"  # the router + OpenAI ingress deployment (``ladder serve`` drains it by name)
BUFFERED_COALESCE_S = 0.5  # a buffered request's deltas merged over this many seconds (TierDeployment.stream)


@serve.deployment
@serve.ingress(api)
class LadderIngress:
    """The router + OpenAI ingress replica: a ``Gateway`` over handles of the tier deployments."""

    def __init__(
        self, config_json: str, redis_url: str | None, secret_hex: str, tiers: dict[str, DeploymentHandle]
    ) -> None:
        config = LadderConfig.model_validate_json(config_json)
        # Buffered requests run the same streamed cascade (so a prefix gate stops a doomed rung
        # after k tokens there too), with the replica's deltas coalesced into few Ray messages.
        workers = [TierHandleStreamer(t.name, tiers[t.name], t.timeout_s, BUFFERED_COALESCE_S) for t in config.tiers]
        streamers = [TierHandleStreamer(t.name, tiers[t.name], t.timeout_s) for t in config.tiers]
        activate(Gateway(config, workers, streamers, redis_url, bytes.fromhex(secret_hex)))

    # ``ladder serve`` calls these on every replica at once (``DeploymentHandle.broadcast``)
    def drain_start(self) -> dict[str, bool | int]:
        return active().drain.start()

    def drain_state(self) -> dict[str, bool | int]:
        return active().drain.state()


def build_app(args: dict[str, Any]) -> Application:
    """Serve entry point: ``args`` = {"config": path | None, "redis_url": url | None}.

    Only the ingress gets the whole config (keys included) and the server secret; a tier replica
    gets its own tier's section and where the weights are, nothing else."""
    if "config_json" in args:  # already validated by the caller (ladder serve)
        config = LadderConfig.model_validate_json(args["config_json"])
    else:
        config = load_config(args.get("config"))
    config = with_admin_key(config)
    config_json = config.model_dump_json()
    handles = {}
    for tier in config.tiers:
        replicas: dict[str, Any] = (
            {"autoscaling_config": tier.autoscaling.serve_config()}
            if tier.autoscaling
            else {"num_replicas": tier.num_replicas}
        )
        handles[tier.name] = (
            serve.deployment(TierDeployment)
            .options(
                name=f"tier-{tier.name}",
                ray_actor_options=tier.actor_options(),
                **replicas,
                max_ongoing_requests=tier.max_ongoing_requests,
                max_queued_requests=tier.max_queued_requests,
                health_check_period_s=10,
                graceful_shutdown_timeout_s=config.server.drain_s,  # a stop lets answers in flight finish
                # An engine that cannot start fails the same way twice: report it within a minute
                # (ladder serve names the tier and exits 2) instead of retrying for many.
                max_constructor_retry_count=2,
            )
            .bind(tier.model_dump_json(), str(config.cache_path))
        )
    redis_url = args.get("redis_url") or config.cache.redis_url
    return LadderIngress.options(
        name=INGRESS,
        num_replicas=config.server.ingress_replicas,
        ray_actor_options=config.server.ingress_actor_options(),
        max_ongoing_requests=256,
        max_queued_requests=512,
        graceful_shutdown_timeout_s=config.server.drain_s,
    ).bind(config_json, redis_url, server_secret().hex(), handles)
