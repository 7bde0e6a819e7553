"""Per-tier actor pools for the batch jobs: each tier's engines in Ray actors of their own.

In the ``pools`` layout (``ladder score --layout pools``) a Ray Data stage of light cascade actors
runs every row's cascade (policy, IDK step, cost) and calls a rung's pool only when the row
reaches that rung. A pool's actors are placed like the tier's Serve replicas (``num_cpus``,
``num_gpus``, ``placement``; ``num_replicas`` or ``autoscaling.min_replicas`` of them), so on a
cluster each tier's engines run on their own node type and are shared by every cascade actor:
the rows of all batches that reached a rung are batched together by its engine. The ``whole``
layout instead loads every tier into each Ray Data actor (one node holds the whole ladder).

An actor lost with its node is restarted by Ray where its placement fits, and the call retried
on it; a row waits for it rather than being answered by another rung (a batch job has no client
waiting, and the rung mix stays the policy's).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ladder.cluster.compose import build_worker, materialize, materialize_in
from ladder.cluster.settings import LadderConfig, TierConfig
from ladder.errors import InvalidRequest, WorkerFailed
from ladder.types import Generation, Query


class TierActor:
    """One tier's worker in a Ray actor (async: its engine batches the calls of every caller)."""

    def __init__(self, tier_json: str, cache_dir: str) -> None:
        tier = TierConfig.model_validate_json(tier_json)
        self.worker = build_worker(tier, materialize_in(Path(cache_dir), tier)).load()

    async def generate(self, query: Query) -> Generation:
        return await self.worker.generate(query)

    def ready(self) -> bool:
        return True  # answered once the constructor (the engine's start) is done

    def close(self) -> None:
        if close := getattr(self.worker, "close", None):  # an engine process stops with its actor
            close()


class PoolWorker:
    """A rung of the cascade in a batch actor: a call goes to the pool's actor with the fewest
    calls in flight from this caller."""

    def __init__(self, tier: str, actors: list[Any]) -> None:
        self.tier = tier
        self.actors = actors
        self.in_flight = [0] * len(actors)

    async def generate(self, query: Query) -> Generation:
        import ray

        i = min(range(len(self.actors)), key=self.in_flight.__getitem__)
        self.in_flight[i] += 1
        try:
            return await self.actors[i].generate.remote(query)
        except ray.exceptions.RayTaskError as exc:  # the tier raised: a client error stays one
            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, InvalidRequest):
                raise cause from None
            raise WorkerFailed(f"tier {self.tier}: {type(cause).__name__}: {str(cause)[:300]}") from None
        except ray.exceptions.RayError as exc:  # the actor is gone and could not be restarted
            raise WorkerFailed(f"tier {self.tier}: {type(exc).__name__}: {str(exc)[:300]}") from None
        finally:
            self.in_flight[i] -= 1


def start_pools(config: LadderConfig, timeout_s: float = 1800) -> dict[str, list[Any]]:
    """Start every tier's pool on the running Ray and wait until each actor's engine is up."""
    import ray

    for tier in config.tiers:  # convert once here, not in every actor
        materialize(config, tier)
    pools: dict[str, list[Any]] = {}
    for tier in config.tiers:
        options = tier.actor_options() | {
            "max_restarts": -1,  # a node lost: start it again where the placement fits ...
            "max_task_retries": -1,  # ... and send it the calls it had
        }
        remote = ray.remote(TierActor).options(**options)
        pools[tier.name] = [
            remote.remote(tier.model_dump_json(), str(config.cache_path)) for _ in range(tier.min_replicas)
        ]
    for name, actors in pools.items():
        print(f"tier {name}: starting {len(actors)} actor(s) ...", file=sys.stderr, flush=True)
    ray.get([a.ready.remote() for actors in pools.values() for a in actors], timeout=timeout_s)
    return pools


def stop_pools(pools: dict[str, list[Any]], timeout_s: float = 60) -> None:
    """Stop each engine, then its actor (one that does not answer in time is killed as it is)."""
    import ray

    actors = [a for pool in pools.values() for a in pool]
    ray.wait([a.close.remote() for a in actors], num_returns=len(actors), timeout=timeout_s)
    for a in actors:
        ray.kill(a, no_restart=True)
