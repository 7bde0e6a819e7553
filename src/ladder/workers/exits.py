"""Per-token exit criteria for adaptive depth: when has a token iterated (or climbed) enough?

Small classes behind one protocol, chosen by an ``ExitKind`` enum and ``make_exit`` — never a chain
of string comparisons. Each rule sees the previous and the current step of a batch of tokens and
returns which rows may stop. They know nothing about models; the model asks them after each
iteration. Thresholds are data (a rung's depth budget), not code.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ladder.workers.options import ExitKind


class ExitRule(Protocol):
    needs_logits: bool

    def done(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor: ...  # [B] bool


class NeverExit:
    needs_logits = False

    def done(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        return torch.zeros(cur.shape[0], dtype=torch.bool, device=cur.device)


class KLExit:
    """``prev`` / ``cur`` are log-probabilities [B, V]; stop when the distribution stopped moving."""

    needs_logits = True

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def done(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        kl = (cur.exp() * (cur - prev)).sum(-1)  # KL(cur || prev): [B]
        return kl < self.threshold


class LatentExit:
    """``prev`` / ``cur`` are latent states [B, D]; stop when ||s_i - s_{i-1}|| / ||s_i|| is small."""

    needs_logits = False

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def done(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        change = (cur - prev).norm(dim=-1) / cur.norm(dim=-1).clamp_min(1e-6)
        return change < self.threshold


def make_exit(kind: ExitKind, threshold: float | None = None) -> ExitRule:
    if kind is ExitKind.NEVER:
        return NeverExit()
    if threshold is None or threshold <= 0:
        raise ValueError(f"exit rule {kind.value!r} needs a positive threshold, got {threshold}")
    return {ExitKind.KL: KLExit, ExitKind.LATENT: LatentExit}[kind](threshold)
