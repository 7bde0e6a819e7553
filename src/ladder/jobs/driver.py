"""The one Ray Data driver of the batch jobs (``ladder score``, ``ladder collect``).

Rows go to a pool of actors that each hold every tier (``actors`` of them, the node's CPUs shared
out, the tiers' GPUs each); each finished record is appended to ``out`` as one JSON line as soon
as its batch returns, so a stopped job resumes where it stopped (the caller skips finished ids).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ladder.cluster.compose import materialize
from ladder.cluster.settings import LadderConfig


def drive(
    config: LadderConfig,
    payloads: list[str],
    column: str,
    actor: type,
    ctor_args: tuple,
    out: Path,
    on_record: Callable[[str], None],
    desc: str,
    unit: str,
    actors: int = 1,
    batch_size: int = 8,
    actor_cpus: float | None = None,
    num_gpus: float | None = None,
) -> None:
    """Run ``actor`` over ``payloads`` (JSON strings in ``column``) on the already-initialised Ray;
    every record the actors return (a JSON string in their ``record`` column) is appended to
    ``out`` and passed to ``on_record``. ``actor_cpus``: each actor's CPUs (default ``actor_share``);
    ``num_gpus``: each actor's GPUs (default: every tier's, as it holds them all)."""
    import ray
    from tqdm import tqdm

    if not payloads:
        return
    for tier in config.tiers:  # convert once in the driver, not in every actor
        materialize(config, tier)
    cpus = actor_cpus or actor_share(actors)
    ds = ray.data.from_items([{column: p} for p in payloads])
    ds = ds.map_batches(
        actor,
        fn_constructor_args=ctor_args,
        batch_size=batch_size,
        concurrency=actors,
        num_cpus=cpus,
        # an actor holds every tier's engine: on a GPU cluster it needs their GPUs
        num_gpus=sum(t.num_gpus for t in config.tiers) if num_gpus is None else num_gpus,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f, tqdm(total=len(payloads), desc=desc, unit=unit) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for record in batch["record"]:
                f.write(str(record) + "\n")
                on_record(str(record))
            f.flush()
            bar.update(len(batch["record"]))


def actor_share(actors: int) -> float:
    """The cluster's free CPUs shared out between ``actors``, but never more than one node has: an
    actor lives on one node, and a share of several nodes' CPUs would wait forever to be placed.
    (Ray Data restarts an actor lost with its node elsewhere; on a busy cluster ask for less, with
    ``--actor-cpus``, so that a restart finds room.)"""
    import ray

    biggest = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)
    share = ray.available_resources().get("CPU", 1.0) / actors
    return min(max(1.0, share), biggest) if biggest >= 1.0 else biggest
