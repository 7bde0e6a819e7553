"""A tier backed by a Hugging Face transformers causal LM, on CPU or CUDA.

The decode loop is written out (prefill, then one token at a time with the KV cache) rather than
calling ``model.generate``, because the worker must report per-token log-probabilities, entropy
and timings, and because the adaptive-depth work extends exactly this loop. Blocking model calls
run in a thread so an event loop (Ray Serve replica) stays responsive; one lock per worker keeps
concurrent requests from interleaving on one model.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ladder.errors import ContextOverflow, InvalidRequest, WeightsUnavailable
from ladder.types import Delta, Generation, Query, Sampling
from ladder.workers.adaptive_depth import Pick, Step, early_exit, head_speculative, self_speculative
from ladder.workers.options import AdaptiveDepth, AdaptiveMode, Drafter  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class DeviceConfig:
    device: str = "cpu"  # "cpu" | "cuda" | "cuda:1" ...
    dtype: str = "bfloat16"
    threads: int | None = None  # torch intra-op threads on CPU; None = torch's default


class TransformersWorker:
    def __init__(
        self,
        tier: str,
        model_dir: Path,
        device: DeviceConfig = DeviceConfig(),
        adaptive: AdaptiveDepth = AdaptiveDepth(),
    ) -> None:
        self.tier = tier
        self.model_dir = Path(model_dir)
        self.device_config = device
        self.adaptive = adaptive
        self._heads = None
        self._draft = None
        self._layerwise = None
        self.model = None
        self.tokenizer = None
        self.context_length = 0
        self._lock = threading.Lock()
        self.generated_tokens = 0  # tokens decoded by this worker (tests check that a closed stream stops it)

    # -- lifecycle -------------------------------------------------------------------------
    def load(self) -> TransformersWorker:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a replica's log is no place for a progress bar
        if self.device_config.threads:
            torch.set_num_threads(self.device_config.threads)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=getattr(torch, self.device_config.dtype)
        ).to(self.device_config.device)
        self.model.eval()
        if self.adaptive.mode is not AdaptiveMode.FULL:
            from ladder.workers.layerwise import LayerwiseModel

            self._layerwise = LayerwiseModel(self.model)
            if self.adaptive.mode is AdaptiveMode.SPECULATIVE:  # timed at load, not in a request
                self._layerwise.verify_costs(self.adaptive.max_draft + 1)
        if self.adaptive.needs_heads:
            from ladder.workers.exit_heads import ExitHeads

            if self.adaptive.heads is None:
                raise WeightsUnavailable(f"tier {self.tier}: adaptive depth {self.adaptive.mode!r} needs exit heads")
            heads = ExitHeads.load(self.adaptive.heads, self.adaptive.weights_id or None)
            a = self.adaptive
            self.adaptive = a = a.model_copy(
                update={
                    "threshold": a.threshold
                    if a.threshold is not None
                    else heads.info.get("early_exit_threshold", 0.9),
                    "draft_layer": a.draft_layer
                    if a.draft_layer is not None
                    else heads.info.get("draft_layer", heads.layers[0]),
                }
            )
            if a.mode is AdaptiveMode.SPECULATIVE and a.draft_layer not in heads.layers:
                # an unknown draft layer fails at load, not per request
                raise WeightsUnavailable(
                    f"tier {self.tier}: no exit head after layer {a.draft_layer}; the heads have {list(heads.layers)}"
                )
            self._heads = heads.to(device=self.device_config.device, dtype=getattr(torch, self.device_config.dtype))
        if self.adaptive.mode is AdaptiveMode.SPECULATIVE and self.adaptive.drafter.uses_draft_head:
            from ladder.workers.draft_head import DraftHead

            if self.adaptive.draft_head is None:
                raise WeightsUnavailable(
                    f"tier {self.tier}: drafter {self.adaptive.drafter.value!r} needs a draft head"
                )
            head = DraftHead.load(self.adaptive.draft_head, self.adaptive.weights_id or None)
            self._draft = head.to(device=self.device_config.device, dtype=getattr(torch, self.device_config.dtype))
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048))
        return self

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters()) if self.model is not None else 0

    # -- prompt ----------------------------------------------------------------------------
    def encode(self, query: Query) -> list[int]:
        if not query.messages or not any(m.content.strip() for m in query.messages):
            raise InvalidRequest("the prompt is empty", param="messages")
        for m in query.messages:
            try:
                m.content.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON): the tokenizer would raise
                raise InvalidRequest("messages: content is not valid Unicode (lone surrogate)", "messages") from None
        messages = [{"role": m.role, "content": m.content} for m in query.messages]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        thr = query.sampling.exit_threshold
        if self.adaptive.mode is AdaptiveMode.EARLY_EXIT and thr is not None and not 0 < thr <= 1:
            # checked before any token is streamed; here the threshold is a gate probability, not a KL
            raise InvalidRequest(
                f"tier {self.tier} exits early on a gate probability: depth.exit_threshold "
                f"must be in (0, 1], got {thr}",
                param="depth",
            )
        ContextOverflow.check(self.tier, len(ids), query.sampling.max_tokens, self.context_length)
        return ids

    # -- generation ------------------------------------------------------------------------
    async def generate(self, query: Query) -> Generation:
        return await asyncio.to_thread(self.generate_sync, query)

    def generate_sync(self, query: Query, on_text: Callable[[str, int, float], None] | None = None) -> Generation:
        if self.model is None:
            raise RuntimeError(f"tier {self.tier}: call load() before generate()")
        prompt_ids = self.encode(query)
        with self._lock:
            return self._decode(prompt_ids, query.sampling, on_text)

    async def stream(self, query: Query) -> AsyncIterator[Delta | Generation]:
        """Deltas (text and the new tokens' log-probabilities) as tokens are generated, then the
        complete ``Generation`` as the last item.

        Text that could still turn out to be the start of a stop sequence (or half a UTF-8
        character) is held back until it is certain, so no stop text ever reaches the client.
        """
        loop = asyncio.get_running_loop()
        steps: asyncio.Queue[tuple[str, int, float]] = asyncio.Queue()
        prompt_ids = self.encode(query)  # bad input raises here, before any chunk is sent
        sampling = query.sampling

        cancel = threading.Event()  # set when the consumer goes away: the decode loop stops at its next step

        def run() -> Generation:
            with self._lock:
                return self._decode(
                    prompt_ids, sampling, lambda *step: loop.call_soon_threadsafe(steps.put_nowait, step), cancel
                )

        task = loop.run_in_executor(None, run)
        holdback = max((len(s) for s in sampling.stop), default=1) - 1
        try:
            async for item in self._deltas(task, steps, holdback, len(prompt_ids)):
                yield item
        finally:
            cancel.set()

    async def _deltas(
        self, task: asyncio.Future, steps: asyncio.Queue, holdback: int, prompt_tokens: int
    ) -> AsyncIterator[Delta | Generation]:
        sent = 0
        while not (task.done() and steps.empty()):
            getter = asyncio.ensure_future(steps.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                continue
            text, token, logprob = getter.result()
            safe = len(text) - holdback
            while safe > sent and text[safe - 1] == "\ufffd":
                safe -= 1
            yield Delta(text[sent:safe] if safe > sent else "", (token,), (logprob,), prompt_tokens)
            sent, prompt_tokens = max(sent, safe), 0
        final = await task
        if len(final.text) > sent:
            yield Delta(final.text[sent:])
        yield final

    def _decode(
        self,
        prompt_ids: list[int],
        sampling: Sampling,
        on_text: Callable[[str, int, float], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Generation:
        import torch

        if self.device_config.threads:
            # OpenMP's thread count is per OS thread, and this runs in a pool thread (to_thread):
            # set it here too, or the thread inherits OMP_NUM_THREADS (Ray sets it to the actor's CPUs).
            torch.set_num_threads(self.device_config.threads)
        generator = None
        if not sampling.greedy:
            generator = torch.Generator(device=self.device_config.device)
            if sampling.seed is None:
                generator.seed()  # no seed: a fresh random stream, as OpenAI does
            else:
                generator.manual_seed(sampling.seed % 2**64)  # any int: torch takes 64 bits (fuzzing)
        eos = _eos_ids(self.model, self.tokenizer)
        tokens: list[int] = []
        logprobs: list[float] = []
        depths: list[int] = []
        finish, text = "length", ""
        with torch.inference_mode():
            t0 = time.perf_counter()
            steps = self._steps(prompt_ids, sampling, lambda logits: _pick(logits, sampling, generator))
            prefill_s, t1 = 0.0, t0
            for token, logprob, depth in steps:
                if not prefill_s:
                    prefill_s = time.perf_counter() - t0  # time to the first token
                    t1 = time.perf_counter()
                if token in eos:
                    finish = "stop"
                    break
                tokens.append(token)
                logprobs.append(logprob)
                depths.append(depth)
                self.generated_tokens += 1
                if sampling.stop or on_text:
                    text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                    cut = min((i for s in sampling.stop if (i := text.find(s)) >= 0), default=-1)
                    if cut >= 0:
                        text, finish = text[:cut], "stop"
                    if on_text:  # the text so far, the new token and its log-probability
                        on_text(text, token, logprob)
                    if cut >= 0:
                        break
                if len(tokens) == sampling.max_tokens or (cancel is not None and cancel.is_set()):
                    break
            steps.close()
            decode_s = time.perf_counter() - t1
        if finish != "stop" or not sampling.stop:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Generation(
            tier=self.tier,
            text=text,
            token_ids=tuple(tokens),
            logprobs=tuple(logprobs),
            prompt_tokens=len(prompt_ids),
            finish_reason=finish,
            prefill_s=prefill_s,
            decode_s=decode_s,
            depths=tuple(depths) if self.adaptive.mode is not AdaptiveMode.FULL else (),
        )

    def _steps(self, prompt_ids: list[int], sampling: Sampling, pick: Pick) -> Iterator[Step]:
        """(token, logprob, depth) in order; the tier's adaptive-depth mode picks the loop."""
        a = self.adaptive
        max_len = len(prompt_ids) + sampling.max_tokens + 1
        if a.mode is AdaptiveMode.EARLY_EXIT:
            threshold = sampling.exit_threshold if sampling.exit_threshold is not None else a.threshold
            return early_exit(self._layerwise, self._heads, prompt_ids, max_len, pick, threshold)
        if a.mode is AdaptiveMode.SPECULATIVE and sampling.greedy and a.drafter.uses_draft_head:
            return head_speculative(
                self._layerwise,
                self._draft,
                prompt_ids,
                max_len,
                pick,
                a.max_draft,
                a.draft_threshold,
                lookup=a.drafter.uses_lookup,
                width=a.draft_width,
            )
        if a.mode is AdaptiveMode.SPECULATIVE and sampling.greedy:  # lossless only means something for greedy
            return self_speculative(
                self._layerwise,
                self._heads,
                prompt_ids,
                max_len,
                pick,
                a.draft_layer,
                a.max_draft,
                a.draft_threshold,
                lookup=a.drafter.uses_lookup,
            )
        return self._full_depth(prompt_ids, pick)

    def _full_depth(self, prompt_ids: list[int], pick: Pick) -> Iterator[Step]:
        """The transformers forward pass with its own KV cache: the reference path."""
        import torch

        device = self.device_config.device
        n_layers = self.model.config.num_hidden_layers
        out = self.model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True)
        while True:
            token, logprob = pick(out.logits[0, -1])
            yield token, logprob, n_layers
            out = self.model(
                input_ids=torch.tensor([[token]], device=device), past_key_values=out.past_key_values, use_cache=True
            )


def _pick(logits, sampling: Sampling, generator) -> tuple[int, float]:  # noqa: ANN001 (torch)
    """Choose the next token: greedy at temperature 0, else temperature + nucleus sampling."""
    import torch

    logits = logits.float()  # bf16 logits / a small temperature overflow
    if sampling.greedy:
        logp = torch.log_softmax(logits, dim=-1)
        token = int(torch.argmax(logp))
        return token, float(logp[token])
    logp = torch.log_softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_logp, order = torch.sort(logp, descending=True)
        keep = torch.cumsum(sorted_logp.exp(), dim=-1) - sorted_logp.exp() < sampling.top_p
        keep[0] = True  # the most likely token always stays: a top_p below float32's range kept none
        masked = torch.full_like(logp, -math.inf)
        masked[order[keep]] = logp[order[keep]]
        logp = torch.log_softmax(masked, dim=-1)
    token = int(torch.multinomial(logp.exp(), 1, generator=generator))
    return token, float(logp[token])


def _eos_ids(model, tokenizer) -> set[int]:  # noqa: ANN001 (transformers objects)
    ids = model.generation_config.eos_token_id if model.generation_config else None
    found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return found
