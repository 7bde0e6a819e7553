"""The outcomes format: one row per query, one quality per rung, optional costs and signals.

On disk it is JSONL, one object per line (documented in docs/OUTCOMES.md):

    {"id": "…", "query": "…", "quality": {"small": 1.0, "large": 0.0},
     "tokens": {"small": 57, …}?, "response": {"small": "…"}?, "signals": {"small": {…}}?,
     "group": "…"?}

``quality`` is in [0, 1] (1 correct, 0 wrong; a fraction when several samples were scored).
In memory it is one frozen ``Outcomes`` of numpy arrays so policies can slice it cheaply.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np

from ladder.errors import OutcomesError


@dataclass(frozen=True)
class Outcomes:
    ids: tuple[str, ...]
    queries: tuple[str, ...]
    rungs: tuple[str, ...]  # cheapest first
    quality: np.ndarray  # [n, R] in [0, 1]
    tokens: np.ndarray | None = None  # [n, R] output tokens (cost proxy), optional
    responses: dict[str, tuple[str, ...]] = field(default_factory=dict)  # rung -> [n] answer text
    signals: dict[str, np.ndarray] = field(default_factory=dict)  # "rung/name" -> [n]
    groups: tuple[str, ...] | None = None  # e.g. MMLU subject (for reporting only)
    source: str = ""
    # rung -> [n] per-token log-probabilities of its answer (collected from Ladder's own tiers)
    logprobs: dict[str, tuple[tuple[float, ...], ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, r = len(self.ids), len(self.rungs)
        if n == 0:
            raise OutcomesError(f"outcomes {self.source or ''} hold no rows".replace("  ", " "))
        if r < 2:
            raise OutcomesError(f"outcomes need at least two rungs, got {list(self.rungs)}")
        if self.quality.shape != (n, r):
            raise OutcomesError(f"quality has shape {self.quality.shape}, expected {(n, r)}")
        if np.isnan(self.quality).any() or (self.quality < 0).any() or (self.quality > 1).any():
            raise OutcomesError("quality values must lie in [0, 1] with no gaps")
        if len(self.queries) != n:
            raise OutcomesError("queries and ids differ in length")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def fingerprint(self) -> str:
        """A hash of the training data, recorded in every policy file fitted on it."""
        h = hashlib.blake2b(digest_size=12)
        h.update("\x1f".join(self.rungs).encode())
        for i, q in zip(self.ids, self.queries):
            h.update(f"{i}\x1e{q}\x1d".encode())
        h.update(np.ascontiguousarray(self.quality, dtype=np.float32).tobytes())
        return h.hexdigest()

    def take(self, index: np.ndarray) -> Outcomes:
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if len(idx) == 0:
            raise OutcomesError(f"an empty split of {self.source or 'the outcomes'}")
        pick = lambda seq: tuple(seq[i] for i in idx)  # noqa: E731
        return replace(
            self,
            ids=pick(self.ids),
            queries=pick(self.queries),
            quality=self.quality[idx],
            tokens=None if self.tokens is None else self.tokens[idx],
            responses={k: pick(v) for k, v in self.responses.items()},
            signals={k: v[idx] for k, v in self.signals.items()},
            groups=None if self.groups is None else pick(self.groups),
            logprobs={k: pick(v) for k, v in self.logprobs.items()},
        )

    def answer_logprobs(self, rung: str) -> tuple[tuple[float, ...], ...]:
        """Per-row token log-probabilities of a rung's answers; empty tuples where none were recorded."""
        return self.logprobs.get(rung, ((),) * len(self.ids))

    def response(self, rung: str) -> tuple[str, ...]:
        if rung not in self.responses:
            raise OutcomesError(f"outcomes carry no responses of rung {rung!r}")
        return self.responses[rung]


def stable_hash(ids: tuple[str, ...] | list[str], salt: str) -> np.ndarray:
    """[n] a 32-bit hash of each salted id: the same on every run and machine (splits, folds)."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(f"{salt}:{i}".encode(), digest_size=4).digest(), "big") for i in ids],
        dtype=np.int64,
    )


def stable_split(ids: tuple[str, ...] | list[str], test_fraction: float = 0.2, salt: str = "ladder") -> np.ndarray:
    """True for test rows, decided by a hash of each id: stable across runs and machines."""
    return stable_hash(ids, salt) < int(test_fraction * 2**32)
