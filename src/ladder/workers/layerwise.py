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

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

SUPPORTED = ("llama", "qwen2")
_TIMING_CONTEXT = list(range(1, 65))  # token ids of the context a timed pass attends to


# How ``linear`` computes a pass over a few positions (a plain decoding step or a speculative
# verification). More rows than the tuned range (prefill) always run ``F.linear``.
KERNELS = ("plain", "transposed", "packed")  # F.linear; W @ xᵀ (issue 22); oneDNN's packed weight
KERNEL_RULES = ("tuned", *KERNELS)  # tuned: per row count, whichever full pass was fastest
PACK_ROWS = 8  # the row count oneDNN blocks the packed weight for (it serves any count)
_rule = "tuned"


def set_kernel_rule(rule: str) -> None:
    """Choose how models tuned from now on (``LayerwiseModel.tune``) compute a few rows
    (benchmarks/verify_cost.py compares the rules side by side)."""
    global _rule
    if rule not in KERNEL_RULES:
        raise ValueError(f"kernel rule {rule!r}: one of {', '.join(KERNEL_RULES)}")
    _rule = rule


def can_pack() -> bool:
    """Whether this torch build can pack CPU weights for oneDNN (a build with mkldnn)."""
    return torch.backends.mkldnn.is_available()


def pack(module: torch.nn.Linear) -> None:
    """Keep oneDNN's blocked copy of the module's weight on it (once). The copy doubles the
    weight memory of a tuned model; ``unpack`` drops it when no row count chose it."""
    if getattr(module, "_ladder_packed", None) is None:
        module._ladder_packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), PACK_ROWS)


def unpack(module: torch.nn.Linear) -> None:
    module._ladder_packed = None


def linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, computed by the kernel the module's model chose for this many rows
    (``LayerwiseModel.tune``). On a CPU, torch's GEMM over a few rows is not the one-row GEMV,
    and which kernel is fastest depends on the CPU: on the AVX2 machine of issue 22, ``F.linear``
    over 2–7 rows cost 2–6× one row and ``W @ xᵀ`` about one row; on the AMX machine of sessions
    23–24, ``F.linear`` costs 1.0–1.2× one row for 2–3 rows, then ~2× from 4 rows (MKL reads the
    weight once per 3-row block) and ~3× from 7, ``W @ xᵀ`` 2× from 2 rows, and oneDNN with a
    packed weight 1.1–1.4× for any of 1..8 rows (docs/ADAPTIVE_DEPTH.md). Values agree to float
    rounding (a few 1e-6 relative)."""
    rows = x.numel() // x.shape[-1]
    kernels = getattr(module, "_ladder_kernels", None)
    kernel = kernels.get(rows, "plain") if kernels else "plain"
    if kernel == "plain":
        return module(x)
    flat = x.reshape(rows, -1)
    if kernel == "packed":
        out = torch.ops.mkldnn._linear_pointwise(flat, module._ladder_packed, module.bias, "none", [], "")
    else:
        out = (module.weight @ flat.T).T
        if module.bias is not None:
            out = out + module.bias
    return out.reshape(*x.shape[:-1], -1)


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
        # rows -> kernel for ``linear``, one choice for every projection of this model; empty
        # (F.linear everywhere) until ``tune`` times it
        self.kernels: dict[int, str] = {}
        for module in self.linears():
            module._ladder_kernels = self.kernels

    def linears(self) -> list[torch.nn.Linear]:
        """Every projection a full-depth pass runs through ``linear`` (the LM head last)."""
        out = []
        for block in self.layers:
            attn, mlp = block.self_attn, block.mlp
            out += [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        return [*out, self.lm_head]

    def tune(self, max_rows: int = 9, reps: int = 2) -> list[float]:
        """Choose, for each pass size n = 1..max_rows, the kernel (``linear``) whose full-depth
        pass is fastest under the current rule (``set_kernel_rule``), and return the seconds of a
        pass over n = 1..max_rows with the kernels chosen. Whole passes are timed, not products
        one at a time: a projection small enough to stay in cache times fast alone but streams
        from memory in a pass (small's 3.5 MB MLP weights: 0.03 ms alone, several times that in a
        pass). One row is tuned too: on the AMD EPYC of session 26, ``F.linear`` over one row ran a
        small-tier pass in ~65 ms and oneDNN's packed weight in ~45 ms, and a verification's cost
        is relative to the one-row pass this runner really makes. About 3 s for the small tier,
        8 s for medium; nothing to time off the CPU."""
        self._verify_costs = None
        self.kernels.clear()
        if self.device.type != "cpu":
            return []
        linears = self.linears()
        candidates = KERNELS if _rule == "tuned" else (_rule,)
        if not can_pack():
            if _rule == "packed":
                raise ValueError("kernel rule 'packed': this torch build has no oneDNN (mkldnn) CPU backend")
            candidates = tuple(k for k in candidates if k != "packed")
        if "packed" in candidates:
            for module in linears:
                pack(module)
        with self._timing_context(max_rows):
            times = []
            for n in range(1, max_rows + 1):
                timed = {}
                for kernel in candidates:
                    self.kernels[n] = kernel
                    timed[kernel] = self._pass_seconds(n, reps)
                self.kernels[n] = min(timed, key=timed.__getitem__)
                times.append(timed[self.kernels[n]])
        if "packed" not in self.kernels.values():
            for module in linears:
                unpack(module)
        return times

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

    def layer(
        self,
        j: int,
        h: torch.Tensor,
        start: int,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run decoder layer j on h [1, n, D] at positions start..start+n, writing its K/V
        (``mask``: ``causal(start, n)``, passed in to build it once per pass)."""
        block = self.layers[j]
        n = h.shape[1]
        self.layer_calls += 1
        self.layer_positions += n
        q, k, v = self._qkv(j, block.input_layernorm(h), rope)
        end = start + n
        self.k[j, :, start:end] = k[0]
        self.v[j, :, start:end] = v[0]
        keys, values = self.k[j : j + 1, :, :end], self.v[j : j + 1, :, :end]
        if mask is None and n > 1:
            mask = self.causal(start, n)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=self.n_kv != self.n_heads)
        h = h + linear(block.self_attn.o_proj, out.transpose(1, 2).reshape(1, n, -1))
        y, mlp = block.post_attention_layernorm(h), block.mlp
        return h + linear(mlp.down_proj, mlp.act_fn(linear(mlp.gate_proj, y)) * linear(mlp.up_proj, y))

    def layers_range(self, h: torch.Tensor, start: int, first: int, last: int) -> torch.Tensor:
        """Layers first..last-1 on h at positions start.. (one rotary computation for all)."""
        n = h.shape[1]
        rope, mask = self.rope(start, n, h), (self.causal(start, n) if n > 1 else None)
        for j in range(first, last):
            h = self.layer(j, h, start, rope, mask)
        return h

    def tree_range(self, h: torch.Tensor, start: int, parents: list[int]) -> torch.Tensor:
        """Every layer on a draft *tree* in one pass: row i of h [1, n, D] is a token whose parent
        is row ``parents[i]`` (-1: the cached context before ``start``). Row i is written to cache
        slot start + i but sits at position start + its depth, and attends to the context and its
        own ancestors only, so each root-to-node path is computed as if it had been decoded alone
        (the rows of a plain chain, parents [-1, 0, 1, …], give ``layers_range``'s pass)."""
        n = h.shape[1]
        depth, seen = [0] * n, torch.zeros(n, start + n, dtype=torch.bool, device=self.device)
        seen[:, :start] = True
        for i, parent in enumerate(parents):
            if parent >= i:
                raise ValueError(f"tree row {i}: its parent {parent} must come before it")
            if parent >= 0:
                depth[i] = depth[parent] + 1
                seen[i] = seen[parent]
            seen[i, start + i] = True
        positions = torch.tensor([[start + d for d in depth]], device=self.device)
        rope = self.rotary(h, positions)
        for j in range(self.n_layers):
            h = self.layer(j, h, start, rope, seen if n > 1 else None)
        return h

    def move_kv(self, src: int, dst: int) -> None:
        """Copy every layer's K/V of cache slot ``src`` to ``dst``: an accepted draft verified off
        the chain (a tree branch) takes the slot its position is read from."""
        self.k[:, :, dst] = self.k[:, :, src]
        self.v[:, :, dst] = self.v[:, :, src]

    def causal(self, start: int, n: int) -> torch.Tensor:
        """The attention mask of n positions from start: query i sits at position start + i and
        sees keys up to it."""
        return torch.ones(n, start + n, dtype=torch.bool, device=self.device).tril(diagonal=start)

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
        one, for n = 1..max_rows — what a speculative verification of n-1 drafts pays — with the
        kernels ``tune`` chooses while timing it. Timed once per model on a CPU; elsewhere 1.0 for
        every n (a GPU verifies a few positions at about the cost of one). Measured on this
        project's AMX CPU (session 24): 1.1× for 2 positions, 1.2× for 3, 1.3–1.6× for 4–8, so a
        long draft must be likely to pay for itself (``adaptive_depth.plan_tree``)."""
        if self._verify_costs is None or len(self._verify_costs) < max_rows:
            if self.device.type != "cpu":
                self._verify_costs = [1.0] * max_rows
            else:
                costs, top, times = [], 1.0, self.tune(max_rows)
                for t in times:  # more positions never cost less: a dip is timing noise
                    top = max(top, t / times[0])
                    costs.append(round(top, 3))
                self._verify_costs = costs
        return self._verify_costs[:max_rows]

    def pass_times(self, max_rows: int, reps: int = 3) -> list[float]:
        """Seconds of a full-depth pass over n = 1..max_rows positions with the kernels chosen
        now (the best of ``reps``, after one warm-up each)."""
        with self._timing_context(max_rows):
            return [self._pass_seconds(n, reps) for n in range(1, max_rows + 1)]

    @contextmanager
    def _timing_context(self, max_rows: int) -> Iterator[None]:
        """A 64-token context in the cache, as a verification sees after a prompt. Overwrites
        the KV cache; the work counters are left as they were (timing is not a request's work)."""
        calls, positions = self.layer_calls, self.layer_positions
        self.reset(len(_TIMING_CONTEXT) + max_rows)
        with torch.inference_mode():
            self.layers_range(self.embed_ids(_TIMING_CONTEXT), 0, 0, self.n_layers)
            try:
                yield
            finally:
                self.layer_calls, self.layer_positions = calls, positions

    def _pass_seconds(self, n: int, reps: int) -> float:
        ids, start = _TIMING_CONTEXT[:n], len(_TIMING_CONTEXT)
        times = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            h = self.layers_range(self.embed_ids(ids), start, 0, self.n_layers)
            linear(self.lm_head, self.norm(h))
            times.append(time.perf_counter() - t0)
        return min(times[1:])

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head: the full-depth output distribution (float32 logits)."""
        return linear(self.lm_head, self.norm(h)).float()
