"""Reading a trained head's safetensors file: one rule for every kind of head (exit heads, draft
heads) — missing, unreadable, foreign and trained-for-other-weights files are refused with a
``WeightsUnavailable`` that says which and what to run, never a traceback."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ladder.errors import WeightsUnavailable


def read_bound(
    path: Path, fmt: str, model_sha256: str | None, what: str, retrain: str
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of ``path`` after checking its format and the weights it was fitted to."""
    if not path.is_file():
        raise WeightsUnavailable(f"no {what} at {path}: train with `{retrain}`")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # a truncated or foreign file: say which, never a traceback
        raise WeightsUnavailable(f"{what} {path} is unreadable: {exc}") from None
    if meta.get("format") != fmt:
        raise WeightsUnavailable(f"{path} is not a Ladder {what} file (format {meta.get('format')!r})")
    if model_sha256 and meta.get("model_sha256") != model_sha256:
        raise WeightsUnavailable(
            f"{what} {path} was trained for weights {meta.get('model_sha256', '?')[:16]}…, "
            f"this tier loads {model_sha256[:16]}…: retrain with `{retrain}`"
        )
    return meta, tensors
