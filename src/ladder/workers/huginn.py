"""Loading path for a published recurrent-depth checkpoint in the Huginn format.

Huginn-0125 (Geiping et al. 2025; ``tomg-group-umd/huginn-0125``, 3.5B parameters) is a Hugging Face
folder whose modelling code (``RavenForCausalLM`` in ``raven_modeling_minimal.py``) ships with the
weights, so it loads with ``trust_remote_code`` — from a local folder the operator chose, never
from the hub. Its own generate takes the depth budget as ``num_steps`` and, for per-token adaptive
compute, ``generate_with_adaptive_compute(criterion="kl", exit_threshold=...)`` with the
"latest-m4" KV-cache lookup its authors recommend.

NOT RUN HERE: the checkpoint cannot be downloaded on Ladder's machines (no model hub), and its
remote code was written for transformers 4.x; this path is checked only for its refusals (a folder
that is not a Huginn checkpoint is a ``WeightsUnavailable``). The per-token iteration counts are
not returned by Huginn's generate, so ``Generation.depths`` stays empty for this worker.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from ladder.errors import ContextOverflow, InvalidRequest, WeightsUnavailable
from ladder.types import Generation, Query
from ladder.workers.exits import ExitKind
from ladder.workers.options import DepthBudget
from ladder.workers.whole_answer import WholeAnswer

ARCHITECTURE = "RavenForCausalLM"


def check_folder(folder: Path) -> dict:
    """The checkpoint's config.json if ``folder`` holds a Huginn checkpoint, else a clear error."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        raise WeightsUnavailable(
            f"{folder}: no config.json (a Huginn checkpoint folder is needed; it "
            "cannot be downloaded here — copy it onto the machine)"
        )
    meta = json.loads(config.read_text())
    if ARCHITECTURE not in meta.get("architectures", []):
        raise WeightsUnavailable(
            f"{folder}: architectures {meta.get('architectures')} — not a Huginn ({ARCHITECTURE}) checkpoint"
        )
    if not any(Path(folder).glob("*.py")):
        raise WeightsUnavailable(f"{folder}: the Huginn modelling code (raven_modeling_minimal.py) is missing")
    return meta


class HuginnWorker(WholeAnswer):  # its generate loop has no streamer hook: one piece
    def __init__(
        self, tier: str, folder: Path, budget: DepthBudget = DepthBudget(), device: str = "cpu", dtype: str = "bfloat16"
    ) -> None:
        self.tier, self.folder, self.budget, self.device, self.dtype = tier, Path(folder), budget, device, dtype
        self.model = None
        self.tokenizer = None
        self._lock = threading.Lock()

    def load(self) -> HuginnWorker:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        check_folder(self.folder)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        self.model = (
            AutoModelForCausalLM.from_pretrained(
                self.folder, trust_remote_code=True, local_files_only=True, dtype=getattr(torch, self.dtype)
            )
            .to(self.device)
            .eval()
        )
        return self

    def generate_sync(self, query: Query) -> Generation:
        from transformers import GenerationConfig

        if not query.messages or not any(m.content.strip() for m in query.messages):
            raise InvalidRequest("the prompt is empty", param="messages")

        s, tok = query.sampling, self.tokenizer
        steps = s.max_iterations or self.budget.max_iterations
        chat = [{"role": m.role, "content": m.content} for m in query.messages]
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        ids = tok.encode(text, return_tensors="pt", add_special_tokens=False).to(self.device)
        limit = getattr(self.model.config, "max_position_embeddings", None) or 4096
        ContextOverflow.check(self.tier, ids.shape[1], s.max_tokens, limit)
        config = GenerationConfig(
            max_new_tokens=s.max_tokens,
            do_sample=not s.greedy,
            use_cache=True,
            temperature=None if s.greedy else s.temperature,
            top_p=s.top_p,
            return_dict_in_generate=True,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        with self._lock:
            t0 = time.perf_counter()
            if self.budget.exit is ExitKind.NEVER:
                out = self.model.generate(ids, config, num_steps=steps, tokenizer=tok)
            else:
                out = self.model.generate_with_adaptive_compute(
                    ids,
                    config,
                    num_steps=steps,
                    tokenizer=tok,
                    criterion=self.budget.exit.value,
                    exit_threshold=s.exit_threshold or self.budget.threshold,
                    cache_kwargs={"lookup_strategy": "latest-m4"},
                )
            elapsed = time.perf_counter() - t0
        new = out.sequences[0, ids.shape[1] :].tolist()
        return Generation(
            self.tier,
            tok.decode(new, skip_special_tokens=True),
            tuple(new),
            (),
            ids.shape[1],
            "stop" if new and new[-1] == tok.eos_token_id else "length",
            0.0,
            elapsed,
        )
