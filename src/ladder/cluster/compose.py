"""Composition: turn the configuration into policies, weight folders and workers.

The only place (with the Serve app) that knows every concrete class; used by the CLI, the Serve
app and batch jobs alike so they build identical objects.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from ladder.cluster.settings import BundledSourceConfig, LadderConfig, PolicyConfig, TierConfig
from ladder.errors import ConfigError, WeightsUnavailable
from ladder.protocols import Policy, TierWorker
from ladder.types import Delta, Generation, Query
from ladder.workers.options import AdaptiveDepth, AdaptiveMode, DepthBudget
from ladder.workers.recurrent_worker import RecurrentWorker
from ladder.workers.transformer import DeviceConfig, TransformersWorker
from ladder.workers.weights import WeightStore


def weight_store(config: LadderConfig, tier: TierConfig) -> WeightStore:
    return WeightStore(config.cache_path, dtype=tier.dtype)


def materialize(config: LadderConfig, tier: TierConfig) -> Path:
    """The folder a tier's worker loads: the converted-weights cache, or a recurrent checkpoint as is."""
    return materialize_in(config.cache_path, tier)


def materialize_in(cache_dir: Path, tier: TierConfig) -> Path:
    """``materialize`` with only the cache directory (a tier replica knows nothing else)."""
    if tier.backend in ("recurrent", "huginn"):
        src = tier.source
        path = src.path if isinstance(src, BundledSourceConfig) else Path(os.path.expanduser(src.path))  # type: ignore[union-attr]
        if not path.is_dir():
            raise WeightsUnavailable(f"tier {tier.name}: checkpoint folder {path} not found")
        return path
    return WeightStore(cache_dir, dtype=tier.dtype).materialize(tier.name, tier.source.build())


def weights_id(tier: TierConfig) -> str:
    """What exit heads are bound to: the tier's pinned weight hash, else its source's description."""
    return getattr(tier.source, "sha256", None) or repr(tier.source)


class VerifyingWorker:
    """A tier's worker whose answers carry its verifier's signals (``verifier:`` in the config),
    computed in the sandbox (a child process, ~70 ms here) off the event loop. Every path that
    generates for the cascade — the served tiers and the batch jobs — goes through it, so the IDK
    step sees the same signals online as in the collected outcomes it was fitted on."""

    def __init__(self, worker: TierWorker, verifier: str) -> None:
        from ladder.verify import VERIFIERS

        self.inner, self.tier, self.check = worker, worker.tier, VERIFIERS[verifier]

    def load(self) -> VerifyingWorker:
        self.inner.load()
        return self

    def __getattr__(self, name: str):  # noqa: ANN204 — generate_sync, model, healthy, close …
        return getattr(self.inner, name)

    async def generate(self, query: Query) -> Generation:
        return await self._verified(query, await self.inner.generate(query))

    async def stream(self, query: Query) -> AsyncIterator[Delta | Generation]:
        """The inner stream; its closing ``Generation`` carries the signals (the whole answer's)."""
        inner = self.inner.stream(query)
        try:
            async for item in inner:
                yield await self._verified(query, item) if isinstance(item, Generation) else item
        finally:
            await inner.aclose()

    async def _verified(self, query: Query, gen: Generation) -> Generation:
        signals = await asyncio.to_thread(self.check, query.text, gen.text)
        return dataclasses.replace(gen, signals=tuple(sorted({**dict(gen.signals), **signals}.items())))


def build_worker(tier: TierConfig, model_dir: Path) -> TierWorker:
    worker = _engine_worker(tier, model_dir)
    return VerifyingWorker(worker, tier.verifier) if tier.verifier else worker


def _recurrent(tier: TierConfig, model_dir: Path) -> TierWorker:
    return RecurrentWorker(tier.name, model_dir, tier.depth or DepthBudget(), tier.threads, tier.device)


def _huginn(tier: TierConfig, model_dir: Path) -> TierWorker:
    from ladder.workers.huginn import HuginnWorker

    return HuginnWorker(tier.name, model_dir, tier.depth or DepthBudget(), tier.device, tier.dtype)


def _vllm(tier: TierConfig, model_dir: Path) -> TierWorker:
    from ladder.workers.vllm_worker import VLLMWorker

    return VLLMWorker(tier.name, model_dir, tier.device, tier.engine, tier.dtype)


def _transformers(tier: TierConfig, model_dir: Path) -> TierWorker:
    adaptive = AdaptiveDepth()
    if (a := tier.adaptive) is not None and a.mode is not AdaptiveMode.FULL:
        adaptive = a.resolved(tier.name, weights_id(tier))
    return TransformersWorker(tier.name, model_dir, DeviceConfig(tier.device, tier.dtype, tier.threads), adaptive)


# One entry per ``TierConfig.backend``: each builds its worker from the tier's own settings.
BACKENDS: dict[str, Callable[[TierConfig, Path], TierWorker]] = {
    "vllm": _vllm,
    "transformers": _transformers,
    "recurrent": _recurrent,
    "huginn": _huginn,
}


def _engine_worker(tier: TierConfig, model_dir: Path) -> TierWorker:
    return BACKENDS[tier.backend](tier, model_dir)


def build_policy(policy: PolicyConfig, tier_names: list[str], verified: list[str] | None = None) -> Policy:
    """The configured policy; ``verified``: the tiers that run a verifier (checked when given)."""
    from ladder.policies.fixed import FixedPolicy

    if policy.kind == "fixed":
        start = tier_names.index(policy.start_tier) if policy.start_tier else 0
        return FixedPolicy(start, policy.min_mean_logprob, policy.prefix_tokens)
    from ladder.policies.store import load_policy

    loaded = load_policy(policy.path, tier_names)
    if verified is not None and (missing := [r for r in loaded.verifier_rungs() if r not in verified]):
        raise ConfigError(
            f"policy {policy.path} reads verifier signals of {', '.join(missing)}: set "
            f"'verifier: python_examples' on those tiers"
        )
    return loaded


def cost_function(config: LadderConfig):  # noqa: ANN201 (returns CostFn)
    prices = {t.name: t.price for t in config.tiers}

    def cost(gen: Generation) -> float:
        return prices[gen.tier].cost(gen.prompt_tokens, gen.completion_tokens)

    return cost
