"""The recurrent-depth model behind the ``Worker`` interface, with a per-rung depth budget.

A checkpoint is a folder with ``model.safetensors`` (weights, no pickle) and ``config.json``
(architecture, vocabulary, how it was trained, and the SHA-256 of the weights, checked on load).
Two rungs of a ladder can load the same checkpoint with different ``DepthBudget``s; a request may
set its own (``Sampling.max_iterations`` / ``exit_threshold``) up to the rung's ceiling. Text goes through a
character tokenizer: characters outside the vocabulary, over-long prompts and bad budgets are
``InvalidRequest``s, a damaged checkpoint a ``WeightsUnavailable``/``ChecksumMismatch``.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from pathlib import Path

from ladder.errors import ChecksumMismatch, ContextOverflow, InvalidRequest, WeightsUnavailable
from ladder.types import Generation, Query
from ladder.workers.exits import ExitKind, make_exit
from ladder.workers.options import DepthBudget
from ladder.workers.recurrent import RecurrentConfig, RecurrentDepthModel
from ladder.workers.whole_answer import WholeAnswer


class CharTokenizer:
    """One id per character; prompts are left-padded to a fixed length (the model's positions)."""

    def __init__(self, vocab: str, prompt_len: int, untrained: str = "") -> None:
        self.vocab, self.prompt_len = vocab, prompt_len
        self.ids = {c: i for i, c in enumerate(vocab)}
        self.untrained = untrained  # in the vocabulary, but never seen in training: refused too

    def encode_prompt(self, text: str) -> list[int]:
        text = "".join(text.split())  # whitespace carries no meaning in these programs
        bad = sorted({c for c in text if c not in self.ids or self.ids[c] < 2})
        if bad:
            raise InvalidRequest(f"prompt: characters outside the model's vocabulary: {''.join(bad)!r}", "messages")
        unseen = sorted({c for c in text if c in self.untrained})
        if unseen:
            raise InvalidRequest(
                f"prompt: this checkpoint was not trained on {''.join(unseen)!r} "
                "(its config.json lists the operators it knows)",
                "messages",
            )
        if not text:
            raise InvalidRequest("prompt: empty after removing whitespace", "messages")
        if len(text) > self.prompt_len:
            raise ContextOverflow(
                f"prompt: {len(text)} characters, this model's context holds {self.prompt_len}", "messages"
            )
        return [0] * (self.prompt_len - len(text)) + [self.ids[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids if i >= 2)


def weights_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_checkpoint(folder: Path) -> tuple[RecurrentDepthModel, dict]:
    """(model in eval mode, the checkpoint's metadata); raises on a missing or damaged checkpoint."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path, weights = folder / "config.json", folder / "model.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise WeightsUnavailable(f"recurrent checkpoint {folder}: needs config.json and model.safetensors")
    try:
        meta = json.loads(meta_path.read_text())
        cfg = RecurrentConfig(**meta["model"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise WeightsUnavailable(f"recurrent checkpoint {folder}: bad config.json ({exc})") from None
    expected = meta.get("sha256")
    if expected and weights_sha256(weights) != expected:
        raise ChecksumMismatch(f"recurrent checkpoint {weights}: SHA-256 differs from config.json")
    model = RecurrentDepthModel(cfg)
    try:
        model.load_state_dict(load_file(weights))
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise WeightsUnavailable(f"recurrent checkpoint {weights}: {str(exc)[:200]}") from None
    return model.eval(), meta


class RecurrentWorker(WholeAnswer):  # an answer is a few characters: one piece
    def __init__(
        self,
        tier: str,
        checkpoint: Path,
        budget: DepthBudget = DepthBudget(),
        threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        self.tier, self.checkpoint, self.budget, self.threads = tier, Path(checkpoint), budget, threads
        self.device = device
        _validate(budget, None)
        self.model: RecurrentDepthModel | None = None
        self.tokenizer: CharTokenizer | None = None
        self._lock = threading.Lock()

    def load(self) -> RecurrentWorker:
        self.model, meta = load_checkpoint(self.checkpoint)
        self.model = self.model.to(self.device)
        cfg = self.model.cfg
        _validate(self.budget, cfg.max_r)
        # An operator the model never saw would get a confident, meaningless answer: refuse it.
        untrained = "".join(sorted(set("+-*") - set(meta.get("operators", "+-*"))))
        self.tokenizer = CharTokenizer(cfg.vocab, cfg.prompt_len, untrained)
        return self

    def budget_for(self, query: Query) -> DepthBudget:
        """The request's depth budget: the rung's, with the request's overrides (never above its ceiling)."""
        s = query.sampling
        budget = DepthBudget.model_construct(  # checked by _validate: a bad request value is a 400, not a crash
            max_iterations=s.max_iterations if s.max_iterations is not None else self.budget.max_iterations,
            exit=self.budget.exit,
            threshold=s.exit_threshold if s.exit_threshold is not None else self.budget.threshold,
        )
        _validate(budget, self.budget.max_iterations)
        return budget

    def generate_sync(self, query: Query) -> Generation:
        """One answer within the request's depth budget; ``depths`` = core iterations per token."""
        import torch

        if self.model is None or self.tokenizer is None:
            raise RuntimeError("RecurrentWorker.load() was not called")
        budget = self.budget_for(query)
        user = [m.content for m in query.messages if m.role == "user"]
        ids = self.tokenizer.encode_prompt(user[-1] if user else "")
        s = query.sampling
        gen = torch.Generator(device=self.device).manual_seed(s.seed % 2**64 if s.seed is not None else 0)
        with self._lock:
            if self.threads:
                torch.set_num_threads(self.threads)
            t0 = time.perf_counter()
            out = self.model.generate(
                torch.tensor([ids], device=self.device),
                min(s.max_tokens, self.model.cfg.max_new_tokens),
                budget.max_iterations,
                make_exit(budget.exit, budget.threshold),
                0.0 if s.greedy else s.temperature,
                generator=gen,
            )
            elapsed = time.perf_counter() - t0
        tokens = out.tokens[0].tolist()
        logprobs, depths = out.logprobs[0].tolist(), out.iterations[0].tolist()
        finished = 1 in tokens
        n = tokens.index(1) + 1 if finished else len(tokens)
        return Generation(
            tier=self.tier,
            text=self.tokenizer.decode(tokens[:n]),
            token_ids=tuple(tokens[:n]),
            logprobs=tuple(float(x) for x in logprobs[:n]),
            prompt_tokens=sum(1 for i in ids if i != 0),
            finish_reason="stop" if finished else "length",
            prefill_s=0.0,  # prefill and the first token's iterations are one loop here
            decode_s=elapsed,
            depths=tuple(int(x) for x in depths[:n]),
        )


def _validate(budget: DepthBudget, ceiling: int | None) -> None:
    if budget.max_iterations < 1:
        raise InvalidRequest(f"depth budget: max_iterations must be ≥ 1, got {budget.max_iterations}", "depth")
    if ceiling is not None and budget.max_iterations > ceiling:
        raise InvalidRequest(
            f"depth budget: max_iterations {budget.max_iterations} exceeds this rung's maximum {ceiling}", "depth"
        )
    if budget.exit is not ExitKind.NEVER and not (budget.threshold is not None and 0 < budget.threshold < math.inf):
        raise InvalidRequest(f"depth budget: exit {budget.exit.value!r} needs a positive threshold", "depth")
