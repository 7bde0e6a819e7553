"""A recurrent-depth decoder (after Geiping et al. 2025, "Huginn"): prelude → core × r → coda.

The prelude embeds the input once; a latent state ``s`` starts as noise and the core block is
applied r times to ``adapter([s, e])`` — the prelude output ``e`` is injected at every step — and
the coda plus LM head decode the final state. Attention is causal; prompts are left-padded to the
model's fixed prompt length and padding is masked out as keys.

KV cache and memory: during the prompt (prefill) every position iterates together, exactly as in
training. A generated token then iterates alone and, at every one of its iterations, attends to the
*final* core keys/values of the tokens before it (the paper's KV sharing), so the cache holds one
entry per token per core layer whatever r is. Per-token adaptive exit asks an ``ExitRule`` after
each iteration; rows that stop keep their state while the rest of the batch iterates on.

This file knows tensors only: no tokenizer, no files, no worker interface (see recurrent_worker).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ladder.workers.exits import ExitRule, NeverExit

KV = tuple[torch.Tensor, torch.Tensor]  # k, v: [B, H, S, hd]


@dataclass(frozen=True)
class RecurrentConfig:
    vocab: str  # token id = index; vocab[0] is padding, vocab[1] ends an answer
    prompt_len: int  # prompts are left-padded to this many tokens
    max_new_tokens: int = 4
    d_model: int = 128
    n_heads: int = 4
    prelude: int = 1
    core: int = 2
    coda: int = 1
    mean_r: float = 6.0  # training: r ~ 1 + Poisson(LogNormal), mean ≈ mean_r
    max_train_r: int = 16
    backprop_k: int = 4  # truncated backprop through the last k iterations
    max_r: int = 64  # the largest r inference accepts
    # Sliding-window attention: a position sees itself and the ``window`` positions before it (None:
    # the whole prefix). Local attention is what makes depth matter: one layer moves information at
    # most ``window`` positions, so a long chain can only be read by iterating the core more often
    # (otherwise a small model learns to sum short chains in a single pass and ignores r).
    window: int | None = None

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.max_new_tokens

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def rope(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding: x [B, H, T, hd] at positions pos [T]. Relative offsets are what
    the arithmetic needs ("the operand two tokens back"), whatever the left padding."""
    half = x.shape[-1] // 2
    freqs = 1.0 / (10000 ** (torch.arange(half, device=x.device, dtype=torch.float32) / half))
    ang = pos.float()[:, None] * freqs[None]  # [T, half]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


class Block(nn.Module):
    """Pre-norm causal self-attention (rotary) + MLP; returns this call's keys/values for the cache."""

    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d, bias=False), nn.GELU(), nn.Linear(4 * d, d, bias=False))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, past: KV | None = None
    ) -> tuple[torch.Tensor, KV]:
        B, T, D = x.shape  # x: [B, T, D]; mask: [B, 1, T, S] with S = past + T; pos: [T]
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = rope(q, pos), rope(k, pos)
        kv = (k, v)  # [B, H, T, hd] each
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, T, hd]
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.norm2(x)), kv


def attention_mask(valid: torch.Tensor, n_new: int, window: int | None = None) -> torch.Tensor:
    """Causal mask for the last ``n_new`` of S positions, limited to the ``window`` positions before
    each (None: all); padding is never a key (except to itself, so a padded row is never empty).
    valid: [B, S] bool → [B, 1, n_new, S] bool."""
    S = valid.shape[1]
    rows = torch.arange(S - n_new, S, device=valid.device)[:, None]  # [n_new, 1]
    cols = torch.arange(S, device=valid.device)[None, :]  # [1, S]
    causal = (cols <= rows) if window is None else (cols <= rows) & (cols >= rows - window)  # [n_new, S]
    return (causal & (valid[:, None, :] | (cols == rows)))[:, None]


@dataclass
class Decoded:
    tokens: torch.Tensor  # [B, n] generated ids
    logprobs: torch.Tensor  # [B, n] log p of each under the sampling distribution
    iterations: torch.Tensor  # [B, n] core iterations each token used


class RecurrentDepthModel(nn.Module):
    def __init__(self, cfg: RecurrentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, V = cfg.d_model, len(cfg.vocab)
        self.embed = nn.Embedding(V, d)
        self.prelude = nn.ModuleList(Block(d, cfg.n_heads) for _ in range(cfg.prelude))
        self.prelude_norm = RMSNorm(d)  # e at the scale of the state, so the noise does not drown it
        self.adapter = nn.Linear(2 * d, d, bias=False)  # [s, e] → core input
        self.core = nn.ModuleList(Block(d, cfg.n_heads) for _ in range(cfg.core))
        self.core_norm = RMSNorm(d)  # keeps the state's scale fixed however often the core runs
        self.coda = nn.ModuleList(Block(d, cfg.n_heads) for _ in range(cfg.coda))
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, V, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    # -- the three stages ------------------------------------------------------------------
    def _stack(
        self,
        blocks: nn.ModuleList,
        x: torch.Tensor,
        mask: torch.Tensor,
        pos: torch.Tensor,
        past: list[KV] | None = None,
    ) -> tuple[torch.Tensor, list[KV]]:
        kvs = []
        for i, block in enumerate(blocks):
            x, kv = block(x, mask, pos, past[i] if past else None)
            kvs.append(kv)
        return x, kvs

    def embed_input(
        self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, past: list[KV] | None = None
    ) -> tuple[torch.Tensor, list[KV]]:
        """Prelude: ids [B, T] at positions pos [T] → e [B, T, D] (unit RMS) and its keys/values."""
        e, kvs = self._stack(self.prelude, self.embed(ids), mask, pos, past)
        return self.prelude_norm(e), kvs

    def step(
        self, s: torch.Tensor, e: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, past: list[KV] | None = None
    ) -> tuple[torch.Tensor, list[KV]]:
        """One core iteration: s, e: [B, T, D] → new s [B, T, D] and the core's keys/values."""
        x, kvs = self._stack(self.core, self.adapter(torch.cat([s, e], -1)), mask, pos, past)
        return self.core_norm(x), kvs

    def decode_state(
        self, s: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, past: list[KV] | None = None
    ) -> tuple[torch.Tensor, list[KV]]:
        x, kvs = self._stack(self.coda, s, mask, pos, past)
        return self.head(self.norm(x)), kvs  # logits: [B, T, V]

    def initial_state(self, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)

    # -- training: every position in parallel ------------------------------------------------
    def forward(
        self, ids: torch.Tensor, r: int, backprop_k: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """ids: [B, T] → logits [B, T, V] after r core iterations; gradients flow through the last
        ``backprop_k`` iterations only (truncated backpropagation, as in the paper)."""
        T = ids.shape[1]
        mask, pos = attention_mask(ids != 0, T, self.cfg.window), torch.arange(T, device=ids.device)
        e = self.embed_input(ids, pos, mask)[0]
        s = self.initial_state(e, generator)
        k = r if backprop_k is None else min(backprop_k, r)
        with torch.no_grad():
            for _ in range(r - k):
                s, _ = self.step(s, e, mask, pos)
        for _ in range(k):
            s, _ = self.step(s, e, mask, pos)
        return self.decode_state(s, mask, pos)[0]

    # -- inference: prefill, then one token at a time with adaptive exit ----------------------
    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new: int,
        max_r: int,
        rule: ExitRule = NeverExit(),
        temperature: float = 0.0,
        stop_id: int | None = 1,
        generator: torch.Generator | None = None,
    ) -> Decoded:
        """prompt: [B, P] left-padded ids. Returns the generated ids, their log-probs and the core
        iterations each token used (≤ max_r). Rows stop at ``stop_id`` (later tokens are padding)."""
        B, P = prompt.shape
        valid = prompt != 0
        mask, pos = attention_mask(valid, P, self.cfg.window), torch.arange(P, device=prompt.device)
        e, pre_kv = self.embed_input(prompt, pos, mask)
        s, core_kv, iters, logits = self._iterate(e, mask, pos, None, None, max_r, rule, generator)
        tokens, logps, used = [], [], []
        finished = torch.zeros(B, dtype=torch.bool, device=prompt.device)
        coda_kv = logits[1]
        for t in range(max_new):
            nxt, lp = _sample(logits[0][:, -1], temperature, generator)  # [B]
            nxt = torch.where(finished, torch.zeros_like(nxt), nxt)
            (
                tokens.append(nxt),
                logps.append(torch.where(finished, 0.0, lp)),
                used.append(torch.where(finished, 0, iters)),
            )
            if stop_id is not None:
                finished = finished | (nxt == stop_id)
            if bool(finished.all()) or t == max_new - 1:
                break
            valid = torch.cat([valid, torch.ones(B, 1, dtype=torch.bool, device=valid.device)], 1)
            mask, pos = attention_mask(valid, 1, self.cfg.window), torch.tensor([P + t], device=prompt.device)
            e_t, kv = self.embed_input(nxt[:, None], pos, mask, pre_kv)
            pre_kv = _append(pre_kv, kv)
            s, kv, iters, logits = self._iterate(e_t, mask, pos, core_kv, coda_kv, max_r, rule, generator)
            core_kv, coda_kv = _append(core_kv, kv), _append(coda_kv, logits[1])
        return Decoded(torch.stack(tokens, 1), torch.stack(logps, 1), torch.stack(used, 1))

    def _iterate(
        self,
        e: torch.Tensor,
        mask: torch.Tensor,
        pos: torch.Tensor,
        core_past: list[KV] | None,
        coda_past: list[KV] | None,
        max_r: int,
        rule: ExitRule,
        generator: torch.Generator | None,
    ):  # noqa: ANN202
        """Iterate the core over the new positions until ``rule`` says each row's last position
        is done (or max_r). Exited rows keep their state and keys/values; returns
        (state, core keys/values of each row's last iteration, iterations [B], (logits, coda kv))."""
        B = e.shape[0]
        s = self.initial_state(e, generator)
        active = torch.ones(B, dtype=torch.bool, device=e.device)
        iters = torch.zeros(B, dtype=torch.long, device=e.device)
        kv_keep: list[KV] | None = None
        prev = None
        for _ in range(max_r):
            s_new, kv = self.step(s, e, mask, pos, core_past)
            rows = active[:, None, None]
            s = torch.where(rows, s_new, s)
            keep = active[:, None, None, None]
            kv_keep = (
                kv
                if kv_keep is None
                else [(torch.where(keep, k, ko), torch.where(keep, v, vo)) for (k, v), (ko, vo) in zip(kv, kv_keep)]
            )
            iters = iters + active.long()
            if rule.needs_logits:
                cur = F.log_softmax(self.decode_state(s, mask, pos, coda_past)[0][:, -1].float(), -1)
            else:
                cur = s[:, -1]
            if prev is not None:
                active = active & ~rule.done(prev, cur)
            prev = cur
            if not bool(active.any()):
                break
        return s, kv_keep, iters, self.decode_state(s, mask, pos, coda_past)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _append(past: list[KV], new: list[KV]) -> list[KV]:
    return [(torch.cat([pk, nk], 2), torch.cat([pv, nv], 2)) for (pk, pv), (nk, nv) in zip(past, new)]


def _sample(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: [B, V] → (ids [B], log p of each [B]); temperature 0 is greedy."""
    if temperature <= 0:
        logp = F.log_softmax(logits.float(), -1)
        ids = logp.argmax(-1)
    else:
        logp = F.log_softmax(logits.float() / temperature, -1)
        ids = torch.multinomial(logp.exp(), 1, generator=generator)[:, 0]
    return ids, logp.gather(-1, ids[:, None])[:, 0]


def sample_r(mean_r: float, max_r: int, generator: torch.Generator, sigma: float = 0.5) -> int:
    """Training depth r ~ 1 + Poisson(exp(N(log(mean_r - 1) - σ²/2, σ))), capped (paper's scheme)."""
    tau = torch.normal(math.log(max(mean_r - 1, 1e-3)) - sigma**2 / 2, sigma, (1,), generator=generator)
    r = 1 + int(torch.poisson(tau.exp(), generator=generator).item())
    return min(r, max_r)
