"""A Llama / Qwen2 causal LM run one decoder layer at a time, over its own KV cache.

Adaptive depth needs what ``model(...)`` hides: stop after layer e for one token, fill the K/V of
the layers it skipped, run layers e..L on a few drafted tokens at once, and roll the cache back
when a draft is rejected. This class reuses the model's own modules (projections, norms, MLPs,
rotary embedding), so it computes the same function as the transformers forward pass; only the
cache is ours: one preallocated K and V tensor per layer, addressed by absolute position, so a
rollback is just "write the next token at an earlier position".

Batch size is 1 (the adaptive decode loops are per sequence, as LayerSkip's and CALM's are).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

SUPPORTED = ("llama", "qwen2")


# (out, in, dtype, rows) -> True where this process's CPU runs ``W @ xᵀ`` faster than F.linear
_TRANSPOSED: dict[tuple[int, int, torch.dtype, int], bool] = {}
TUNED_ROWS = range(2, 9)  # a speculative verification: the pending token and up to 7 drafts
KERNEL_RULES = ("tuned", "plain", "transposed")  # timed per shape; always F.linear; always W @ xᵀ (issue 22)
_rule = "tuned"


def set_kernel_rule(rule: str) -> None:
    """Choose how ``linear`` computes 2..8 rows from now on (benchmarks/verify_cost.py compares
    them side by side); forgets every choice made so far."""
    global _rule
    if rule not in KERNEL_RULES:
        raise ValueError(f"kernel rule {rule!r}: one of {', '.join(KERNEL_RULES)}")
    _rule = rule
    _TRANSPOSED.clear()


def linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, with the kernel ``tune_kernels`` timed faster for a pass over 2..8 positions
    (a speculative verification). On a CPU, torch's GEMM for a few rows is not the one-row GEMV:
    on the AVX2 machine of issue 22, ``F.linear`` over 2–7 rows cost 2–6× one row and ``W @ xᵀ``
    about one row (small's LM head: 17 ms against 3.5 for 2 rows); on the AMX machine of session
    23 it is the other way round for 2–3 rows (``F.linear`` 1.0–1.2× one row, ``W @ xᵀ`` 2.7×), so
    a fixed choice made verification cost up to 3× what it should (docs/ADAPTIVE_DEPTH.md). One
    row (plain decoding) and prefill keep ``F.linear``; values agree to float rounding."""
    rows = x.numel() // x.shape[-1]
    w = module.weight
    if not _TRANSPOSED.get((w.shape[0], w.shape[1], w.dtype, rows), False):
        return module(x)
    out = (w @ x.reshape(rows, -1).T).T
    if module.bias is not None:
        out = out + module.bias
    return out.reshape(*x.shape[:-1], -1)


def tune_kernels(modules: list[torch.nn.Linear], reps: int = 3) -> dict[tuple[int, int, torch.dtype, int], bool]:
    """Time ``F.linear`` against ``W @ xᵀ`` once per weight shape and row count 2..8 on this
    process's CPU (threads as set), and remember the faster for ``linear``. About 2 s for the
    medium tier (its LM head dominates); a shape timed before is not timed again."""
    import time

    def best_of(fn) -> float:  # noqa: ANN001
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    with torch.inference_mode():
        for m in modules:
            w = m.weight
            if w.device.type != "cpu":
                continue
            for rows in TUNED_ROWS:
                key = (w.shape[0], w.shape[1], w.dtype, rows)
                if key in _TRANSPOSED:
                    continue
                if _rule != "tuned":
                    _TRANSPOSED[key] = _rule == "transposed"
                    continue
                x = torch.randn(rows, w.shape[1], dtype=w.dtype)
                plain = best_of(lambda x=x: torch.nn.functional.linear(x, w))
                flipped = best_of(lambda x=x: w @ x.T)
                _TRANSPOSED[key] = flipped < 0.9 * plain  # F.linear unless clearly slower
    return dict(_TRANSPOSED)


class LayerwiseModel:
    def __init__(self, model) -> None:  # noqa: ANN001 (a transformers CausalLM)
        kind = model.config.model_type
        if kind not in SUPPORTED:
            raise ValueError(f"adaptive depth supports {SUPPORTED} decoders, not {kind!r}")
        cfg = model.config
        self.model = model
        self.embed = model.model.embed_tokens
        self.layers = list(model.model.layers)
        self.norm = model.model.norm
        self.lm_head = model.lm_head
        self.rotary = model.model.rotary_emb
        self.n_layers = len(self.layers)
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.hidden = cfg.hidden_size
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.k: torch.Tensor | None = None  # [L, n_kv, T, hd]
        self.v: torch.Tensor | None = None
        # Work counters (benchmarks read them): decoder-layer invocations (sequential passes, what a
        # memory-bound decode step pays for) and layer × positions (arithmetic).
        self.layer_calls = 0
        self.layer_positions = 0
        self._verify_costs: list[float] | None = None
        self.tune()

    def tune(self) -> None:
        """Choose the verification kernel per weight shape (``linear``) under the current kernel
        rule, and forget the pass costs timed under another."""
        self._verify_costs = None
        if self.device.type == "cpu":
            block = self.layers[0]
            attn, mlp = block.self_attn, block.mlp
            modules = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.down_proj]
            tune_kernels([*modules, self.lm_head])

    # -- cache -----------------------------------------------------------------------------
    def reset(self, max_len: int) -> None:
        if self.k is None or self.k.shape[2] < max_len:
            shape = (self.n_layers, self.n_kv, max_len, self.head_dim)
            self.k = torch.empty(shape, device=self.device, dtype=self.dtype)
            self.v = torch.empty(shape, device=self.device, dtype=self.dtype)

    def rope(self, start: int, n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(start, start + n, device=self.device)[None]
        return self.rotary(like, pos)

    # -- layers ----------------------------------------------------------------------------
    def embed_ids(self, ids: list[int]) -> torch.Tensor:
        return self.embed(torch.tensor([ids], device=self.device))  # [1, n, D]

    def _kv(self, j: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer j's K (before rotary) and V for its normed input x [1, n, D]. One computation for
        the layer and for fill_kv, so both write the same bits (F.linear and ``linear``'s W @ xᵀ
        differ in the last bit)."""
        attn, n = self.layers[j].self_attn, x.shape[1]
        k = linear(attn.k_proj, x).view(1, n, self.n_kv, self.head_dim).transpose(1, 2)
        v = linear(attn.v_proj, x).view(1, n, self.n_kv, self.head_dim).transpose(1, 2)
        return k, v

    def _qkv(self, j: int, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]):  # noqa: ANN202
        n = x.shape[1]
        q = linear(self.layers[j].self_attn.q_proj, x).view(1, n, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self._kv(j, x)
        q, k = apply_rotary_pos_emb(q, k, *rope)
        return q, k, v

    def layer(self, j: int, h: torch.Tensor, start: int, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Run decoder layer j on h [1, n, D] at positions start..start+n, writing its K/V."""
        block = self.layers[j]
        n = h.shape[1]
        self.layer_calls += 1
        self.layer_positions += n
        q, k, v = self._qkv(j, block.input_layernorm(h), rope)
        end = start + n
        self.k[j, :, start:end] = k[0]
        self.v[j, :, start:end] = v[0]
        keys, values = self.k[j : j + 1, :, :end], self.v[j : j + 1, :, :end]
        if n == 1:
            mask = None
        else:  # query i sits at position start + i and sees keys up to it
            mask = torch.ones(n, end, dtype=torch.bool, device=self.device).tril(diagonal=start)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=self.n_kv != self.n_heads)
        h = h + linear(block.self_attn.o_proj, out.transpose(1, 2).reshape(1, n, -1))
        y, mlp = block.post_attention_layernorm(h), block.mlp
        return h + linear(mlp.down_proj, mlp.act_fn(linear(mlp.gate_proj, y)) * linear(mlp.up_proj, y))

    def layers_range(self, h: torch.Tensor, start: int, first: int, last: int) -> torch.Tensor:
        """Layers first..last-1 on h at positions start.. (one rotary computation for all)."""
        rope = self.rope(start, h.shape[1], h)
        for j in range(first, last):
            h = self.layer(j, h, start, rope)
        return h

    def fill_kv(self, h: torch.Tensor, start: int, first: int, last: int) -> None:
        """State propagation (CALM): the layers a token skipped still need its K/V for later
        tokens' attention; compute them from the exited hidden state h (K/V projections only, no
        attention or MLP, so it costs a fraction of running the layers)."""
        rope = self.rope(start, h.shape[1], h)
        n = h.shape[1]
        for j in range(first, last):
            k, v = self._kv(j, self.layers[j].input_layernorm(h))
            k, _ = apply_rotary_pos_emb(k, k, *rope)
            self.k[j, :, start : start + n] = k[0]
            self.v[j, :, start : start + n] = v[0]

    def verify_costs(self, max_rows: int = 9) -> list[float]:
        """Cost of a full-depth pass (every layer and the LM head) over n positions relative to
        one, for n = 1..max_rows — what a speculative verification of n-1 drafts pays. Timed once
        per model on a CPU (about 1 s for the small tier, 3 s for medium); elsewhere 1.0 for every
        n (a GPU verifies a few positions at about the cost of one). Measured on this project's
        AMX CPU: 1.1× for 2 positions, 1.2× for 3, 1.6–2.0× from 4 (the GEMM kernels change
        there), so a long draft must be likely to pay for itself (``worth_drafting``)."""
        if self._verify_costs is None or len(self._verify_costs) < max_rows:
            if self.device.type != "cpu":
                self._verify_costs = [1.0] * max_rows
            else:
                costs, top, times = [], 1.0, self.pass_times(max_rows)
                for t in times:  # more positions never cost less: a dip is timing noise
                    top = max(top, t / times[0])
                    costs.append(round(top, 3))
                self._verify_costs = costs
        return self._verify_costs[:max_rows]

    def pass_times(self, max_rows: int, reps: int = 3) -> list[float]:
        """Seconds of a full-depth pass over n = 1..max_rows positions after a 64-token context
        (the best of ``reps``, after one warm-up each). Overwrites the KV cache; the work counters
        are left as they were (the timing is not a request's work)."""
        import time

        calls, positions = self.layer_calls, self.layer_positions
        ids = list(range(1, 65))  # a short context, as a verification sees after a prompt
        self.reset(len(ids) + max_rows)
        best = []
        with torch.inference_mode():
            self.layers_range(self.embed_ids(ids), 0, 0, self.n_layers)
            for n in range(1, max_rows + 1):
                times = []
                for _ in range(reps + 1):
                    t0 = time.perf_counter()
                    h = self.layers_range(self.embed_ids(ids[:n]), len(ids), 0, self.n_layers)
                    linear(self.lm_head, self.norm(h))
                    times.append(time.perf_counter() - t0)
                best.append(min(times[1:]))
        self.layer_calls, self.layer_positions = calls, positions
        return best

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head: the full-depth output distribution (float32 logits)."""
        return linear(self.lm_head, self.norm(h)).float()
