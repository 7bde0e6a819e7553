"""Can each tier be placed on the Ray cluster it is about to be deployed on?

Serve leaves a replica whose resources no node offers pending forever, logging a warning every
half minute; ``ladder serve`` would wait with it. Checked before deploying instead, against the
nodes alive now: the tier and the resource no node has enough of, in one line (exit 2)."""

from __future__ import annotations

from ladder.cluster.settings import LadderConfig
from ladder.errors import ConfigError


def demands(config: LadderConfig) -> dict[str, dict[str, float]]:
    """What one replica of each deployment asks of a node (Ray resource name → amount)."""
    out = {f"tier {t.name}": need_of(t.actor_options()) for t in config.tiers}
    out["the router (server.ingress_placement)"] = need_of(config.server.ingress_actor_options())
    return out


def need_of(options: dict) -> dict[str, float]:
    """Ray actor options as the node resources they take (no GPU key when none is asked)."""
    need = {"CPU": options["num_cpus"], **options.get("resources", {})}
    if options["num_gpus"]:
        need["GPU"] = options["num_gpus"]
    return need


def unplaceable(need: dict[str, float], nodes: list[dict[str, float]]) -> str | None:
    """None when one node offers all of ``need`` (in total: what others hold now is Serve's to
    wait for); else what is missing, naming the resource."""
    if any(all(node.get(k, 0.0) >= v for k, v in need.items()) for node in nodes):
        return None
    for k, v in need.items():
        most = max((node.get(k, 0.0) for node in nodes), default=0.0)
        if most < v:
            return f"needs {k}: {v:g} and no node of the Ray cluster has it (the most on one node: {most:g})"
    wanted = ", ".join(f"{k}: {v:g}" for k, v in need.items())
    return f"needs {{{wanted}}} on one node and no node of the Ray cluster has all of them"


def live_nodes() -> list[dict[str, float]]:
    """The resources of each node of the running Ray cluster that is alive now."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def check_placement(config: LadderConfig) -> None:
    """Raise ``ConfigError`` naming the first deployment no live node can hold (on the running Ray)."""
    nodes = live_nodes()
    for who, need in demands(config).items():
        if why := unplaceable(need, nodes):
            raise ConfigError(
                f"{who}: {why}; start a node with it (ray start --resources), or change the tier's placement"
            )
