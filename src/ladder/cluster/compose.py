"""Composition: turn the configuration into policies, weight folders and workers.

The only place (with the Serve app) that knows every concrete class; used by the CLI, the Serve
app and batch jobs alike so they build identical objects.
"""

from __future__ import annotations

from pathlib import Path

from ladder.cluster.settings import LadderConfig, PolicyConfig, TierConfig
from ladder.protocols import Policy
from ladder.types import Generation
from ladder.workers.transformer import DeviceConfig, TransformersWorker
from ladder.workers.weights import WeightStore


def weight_store(config: LadderConfig, tier: TierConfig) -> WeightStore:
    return WeightStore(config.cache_path, dtype=tier.dtype)


def materialize(config: LadderConfig, tier: TierConfig) -> Path:
    return weight_store(config, tier).materialize(tier.name, tier.source.build())


def build_worker(tier: TierConfig, model_dir: Path) -> TransformersWorker:
    return TransformersWorker(tier.name, model_dir, DeviceConfig(tier.device, tier.dtype, tier.threads))


def build_policy(policy: PolicyConfig, tier_names: list[str]) -> Policy:
    from ladder.policies.fixed import FixedPolicy

    if policy.kind == "fixed":
        start = tier_names.index(policy.start_tier) if policy.start_tier else 0
        return FixedPolicy(start, policy.min_mean_logprob)
    from ladder.policies.store import load_policy

    return load_policy(Path(policy.file), tier_names)  # type: ignore[arg-type]


def cost_function(config: LadderConfig):  # noqa: ANN201 (returns CostFn)
    prices = {t.name: t.price for t in config.tiers}

    def cost(gen: Generation) -> float:
        return prices[gen.tier].cost(gen.prompt_tokens, gen.completion_tokens)

    return cost
