"""The settings each backend's worker takes, declared once (pydantic, no torch).

The YAML config (``cluster/settings.py``) uses these same models for a tier's ``vllm``, ``depth``
and ``adaptive`` sections, and ``cluster/compose.py`` hands them whole to the worker it builds: a
field is added, validated and documented in one place. Positional construction is allowed
(``DepthBudget(8, ExitKind.KL, 1e-3)``) because the workers' callers and tests read better so.
"""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = list(type(self).model_fields)
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} positional arguments")
        super().__init__(**dict(zip(names, args)), **kwargs)


# -- recurrent-depth rungs ------------------------------------------------------------------------
class ExitKind(str, Enum):
    NEVER = "never"  # always run the full budget: the fixed-r baseline
    KL = "kl"  # KL(p_i || p_{i-1}) of successive output distributions below a threshold (Geiping et al.)
    LATENT = "latent"  # relative change of the latent state below a threshold


class DepthBudget(Options):
    """A recurrent-depth rung's budget: at most ``max_iterations`` core iterations per token, fewer
    when the ``exit`` rule fires (``kl``: successive output distributions within ``threshold``)."""

    max_iterations: int = Field(default=32, ge=1, le=64)
    exit: ExitKind = ExitKind.KL
    threshold: float | None = Field(default=1e-3, gt=0)  # the exit rule's threshold (unused by never)


# -- vLLM tiers ---------------------------------------------------------------------------------------
class CoreSharing(str, Enum):
    """How a CPU engine shares the machine's cores with the other tiers' engines."""

    TURNS = "turns"  # every engine on its cores, one engine step at a time (workers/engine_share.py)
    FREE = "free"  # engines run at once and the OS interleaves their threads (vLLM's own behaviour)
    LEND = "lend"  # each engine owns its cores and borrows the others' while their engines are idle


EAGLE_EXPORT_FORMAT = "ladder-eagle-export/1"  # what `ladder depth export` writes (workers/draft_export)


def exported_head_binding(folder: str | Path) -> str | None:
    """The weights hash an exported EAGLE head was trained on (its config.json's ``ladder``
    section); None where the folder holds no Ladder export."""
    try:
        meta = json.loads((Path(folder).expanduser() / "config.json").read_text()).get("ladder", {})
    except (OSError, ValueError):
        return None
    return meta.get("model_sha256") if isinstance(meta, dict) and meta.get("format") == EAGLE_EXPORT_FORMAT else None


class EngineSpeculation(Options):
    """Speculative decoding inside a GPU tier's vLLM engine (issue 34), verified by the tier's own
    model in one step, so the answer is the tier's either way:

    - ``ngram`` drafts up to ``num_speculative_tokens`` tokens by prompt lookup (the longest
      n-gram, between ``prompt_lookup_min`` and ``prompt_lookup_max`` tokens, that recurs in the
      prompt and answer so far);
    - ``eagle`` drafts with the tier's trained draft head, exported for the engine by
      ``ladder depth export --tier T`` (``model``: that folder; the tier refuses a head exported
      for other weights).

    vLLM's CPU engine cannot run either, so a CPU tier asking for one is refused when the config
    is read."""

    method: Literal["ngram", "eagle"] = "ngram"
    num_speculative_tokens: int = Field(default=4, ge=1, le=16)
    prompt_lookup_min: int = Field(default=1, ge=1)
    prompt_lookup_max: int = Field(default=4, ge=1)
    model: str | None = None  # eagle: the folder `ladder depth export` wrote

    @model_validator(mode="after")
    def _window(self) -> EngineSpeculation:
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(
                f"prompt_lookup_min ({self.prompt_lookup_min}) exceeds prompt_lookup_max ({self.prompt_lookup_max})"
            )
        if self.method == "eagle" and not self.model:
            raise ValueError("method eagle needs model: the folder `ladder depth export --tier T` wrote")
        if self.method == "ngram" and self.model:
            raise ValueError("model belongs to method eagle (ngram drafts from the prompt)")
        return self

    def engine_config(self) -> dict[str, Any]:
        """vLLM's ``speculative_config`` (its field names)."""
        if self.method == "eagle":
            model = str(Path(self.model).expanduser())  # type: ignore[arg-type]
            return {"method": "eagle", "model": model, "num_speculative_tokens": self.num_speculative_tokens}
        return self.model_dump(mode="json", exclude={"model"})


class VLLMOptions(Options):
    """Engine settings of a ``backend: vllm`` tier (see workers/vllm_worker.py)."""

    max_model_len: int = Field(default=4096, ge=64)
    max_num_seqs: int = Field(default=32, ge=1)  # requests batched together at most
    # Tokens one engine step may take (prompts are prefilled in chunks of it); None = vLLM's own
    # default (2048). Every engine start runs one forward pass this long to warm up: on a CPU
    # without native bfloat16 that pass was 107 s of the small tier's start and ~20 min of the
    # large one's at 2048 (measured, docs/STATUS.md); 256 still batches 16 decoding sequences.
    max_num_batched_tokens: int | None = Field(default=None, ge=16)
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)  # GPU only
    # CPU only: KV cache reserved up front (vLLM's kv_cache_memory_bytes; its VLLM_CPU_KVCACHE_SPACE
    # takes whole GiB only). A 1.5B model in float32 holds ~9k tokens in 0.5 GiB: 16 answers of ~580.
    kv_cache_gib: float = Field(default=2, gt=0)
    # No compiled graph: starts sooner, runs slower, holds less memory. auto: eager only where the
    # engine computes in float32 on a CPU (three float32 engines fit 24 GiB only so), compiled
    # where it runs bfloat16 natively (measured, session 20: the routed ladder served 0.240 answers/s
    # with large eager, 0.311 compiled, on the same AMX machine).
    enforce_eager: bool | Literal["auto"] = False
    # CPU only. cores: the cores this engine's OpenMP threads are bound to (one thread each), as
    # positions in the list of cores the process may use (wrapping: [1] on a 1-core machine is
    # its core 0); None = every core. sharing: see CoreSharing (benchmarks/engine_sharing.py:
    # engines left free on the same cores stall each other; on disjoint cores nothing is shared).
    cores: list[int] | None = Field(default=None, min_length=1)
    sharing: CoreSharing = CoreSharing.TURNS
    speculative: EngineSpeculation | None = None  # GPU only (refused for a CPU tier)


# -- transformer tiers: token-level adaptive depth -------------------------------------------------
class AdaptiveMode(str, Enum):
    FULL = "full"
    EARLY_EXIT = "early_exit"
    SPECULATIVE = "speculative"


class Drafter(str, Enum):
    """Where the speculative mode's drafts come from."""

    HEAD = "head"  # a learned draft head (workers/draft_head.py)
    LOOKUP = "lookup"
    LOOKUP_HEAD = "lookup+head"
    EXIT_HEAD = "exit_head"
    LOOKUP_EXIT_HEAD = "lookup+exit_head"

    @property
    def uses_heads(self) -> bool:
        """Drafts from the exit heads (the early-exit heads file)."""
        return self in (Drafter.EXIT_HEAD, Drafter.LOOKUP_EXIT_HEAD)

    @property
    def uses_draft_head(self) -> bool:
        return self in (Drafter.HEAD, Drafter.LOOKUP_HEAD)

    @property
    def uses_lookup(self) -> bool:
        return self in (Drafter.LOOKUP, Drafter.LOOKUP_EXIT_HEAD, Drafter.LOOKUP_HEAD)


class AdaptiveDepth(Options):
    """Token-level adaptive depth of a transformer tier (issues 5, 22; ``docs/ADAPTIVE_DEPTH.md``).

    ``full``: every layer. ``early_exit``: lossy, a token stops at the first exit head whose gate
    reaches ``threshold`` (calibrated with ``ladder depth calibrate``). ``speculative``: lossless for
    greedy requests (sampled ones run at full depth); drafts come from ``drafter``: ``head`` (a
    learned draft head reading the final hidden state, ``ladder depth train --drafter head``),
    ``lookup`` (prompt lookup, free), ``lookup+head`` (chosen per step by expected acceptance),
    ``exit_head`` / ``lookup+exit_head`` (the exit head after ``draft_layer`` layers). At most
    ``max_draft`` drafts per verification, fewer when the drafter's confidence drops below
    ``draft_threshold``; ``draft_width`` > 1: the draft head grows a tree, expanding its
    ``draft_width`` best nodes per depth with as many children each (1: a chain). ``heads`` /
    ``draft_head``: folders; null = the ones bundled for the tier.
    ``greedy_match``: what a greedy request is promised against plain decoding of the same tier —
    ``exact`` (identical tokens: float32, where the verifier's several-position pass rounds like
    the one-position pass to far below top-2 gaps) or ``approximate`` (bfloat16/float16: the
    verification pass rounds differently, so near-ties may resolve differently; measured rates in
    docs/ADAPTIVE_DEPTH.md). A speculative tier in a 16-bit dtype must say ``approximate``."""

    mode: AdaptiveMode = AdaptiveMode.FULL
    drafter: Drafter = Drafter.EXIT_HEAD
    heads: Path | None = None
    draft_head: Path | None = None
    threshold: float | None = Field(default=None, gt=0, le=1)  # None: the heads' calibrated one
    draft_layer: int | None = Field(default=None, ge=1)  # None: the heads' chosen one
    max_draft: int = Field(default=6, ge=1, le=32)
    draft_threshold: float = Field(default=0.0, ge=0, lt=1)
    draft_width: int = Field(default=1, ge=1, le=8)
    greedy_match: Literal["exact", "approximate"] = "exact"
    # What the heads must have been trained on (refused otherwise): set by compose from the tier's
    # source, never written in a config file.
    weights_id: str = Field(default="", exclude=True)

    @property
    def needs_heads(self) -> bool:
        return self.mode is AdaptiveMode.EARLY_EXIT or (
            self.mode is AdaptiveMode.SPECULATIVE and self.drafter.uses_heads
        )

    def resolved(self, tier: str, weights_id: str) -> AdaptiveDepth:
        """The same settings with the heads' folders resolved (null: bundled for ``tier``)."""
        from ladder.workers.draft_head import (
            bundled_draft_head,  # torch: only when a tier asks for heads
        )
        from ladder.workers.exit_heads import bundled_heads

        heads = Path(os.path.expanduser(self.heads)) if self.heads else bundled_heads(tier)
        draft = Path(os.path.expanduser(self.draft_head)) if self.draft_head else bundled_draft_head(tier)
        return self.model_copy(update={"heads": heads, "draft_head": draft, "weights_id": weights_id})


def runs_eager(options: VLLMOptions, device: str, dtype: str) -> bool:
    """Whether the engine runs without a compiled graph: as configured, or for ``auto`` only in
    float32 on a CPU (where memory, not speed, decides)."""
    if isinstance(options.enforce_eager, bool):
        return options.enforce_eager
    return device.startswith("cpu") and dtype == "float32"
