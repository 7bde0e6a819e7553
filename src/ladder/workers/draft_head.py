"""A learned draft head for lossless speculation (EAGLE-style, issue 22).

The head reads what the target model already computed — the final (normed) hidden state of
position t, the *feature* f_t — together with the embedding of the token that follows, x_{t+1},
and predicts f_{t+1}; the model's own LM head turns that into the next draft token x_{t+2}. It is
one decoder layer (attention over its own KV cache of earlier pairs, SwiGLU MLP) behind a linear
fusion of the two inputs, so a draft costs about one layer of the model plus a product with the
LM-head rows of a *draft vocabulary* (the tokens the model writes most, plus the prompt's own
tokens), not the whole vocabulary: on the small tier that is ~4% of a full decoding step where
the exit-head drafts cost 4 layers and the full LM head.

Drafting chains: the predicted feature is fed back with the drafted token. The head is trained
for that (``offline/draft_head_training``: a few unrolled steps on its own predictions, EAGLE-3's
training-time test). Every drafted token is still checked by the full model, so the head decides
speed only, never output. Files name the weights they were fitted to: loading them onto other
weights is refused, like exit heads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ladder.workers.head_files import read_bound

FORMAT = "ladder-draft-head/1"


def bundled_draft_head(tier: str) -> Path:
    """Where the draft head trained for a default tier ships (package data)."""
    return Path(__file__).parents[1] / "data" / "draft-heads" / tier


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, n, hd]; cos/sin [B, n, hd] as the model's rotary embedding returns them."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class DraftHead(nn.Module):
    def __init__(
        self,
        hidden: int,
        n_heads: int,
        n_kv: int,
        head_dim: int,
        intermediate: int,
        vocab: list[int],
        eps: float = 1e-6,
        qkv_bias: bool = False,
        input_norm: bool = False,
    ) -> None:
        super().__init__()
        self.hidden, self.n_heads, self.n_kv, self.head_dim = hidden, n_heads, n_kv, head_dim
        self.intermediate, self.eps, self.qkv_bias = intermediate, eps, qkv_bias
        self.info: dict = {}  # draft.json: how it was trained, held-out acceptance
        self.fc = nn.Linear(2 * hidden, hidden, bias=False)  # [feature ; next token's embedding] -> hidden
        # The first heads (issue 22) normalised the fused input; vLLM's EAGLE layer does not (its
        # first input_layernorm is an identity), and a norm cannot be folded into a linear map, so
        # heads are trained without it and export exactly (workers/draft_export). Old files load.
        self.in_norm = nn.Parameter(torch.ones(hidden)) if input_norm else None
        self.post_norm = nn.Parameter(torch.ones(hidden))
        self.q = nn.Linear(hidden, n_heads * head_dim, bias=qkv_bias)
        self.k = nn.Linear(hidden, n_kv * head_dim, bias=qkv_bias)
        self.v = nn.Linear(hidden, n_kv * head_dim, bias=qkv_bias)
        self.o = nn.Linear(n_heads * head_dim, hidden, bias=False)
        self.gate = nn.Linear(hidden, intermediate, bias=False)
        self.up = nn.Linear(hidden, intermediate, bias=False)
        self.down = nn.Linear(intermediate, hidden, bias=False)
        # The draft vocabulary: model token ids the head may propose (its softmax runs over these).
        self.register_buffer("vocab", torch.tensor(vocab, dtype=torch.long), persistent=True)
        self.kc: torch.Tensor | None = None  # inference KV cache [n_kv, T, hd]
        self.vc: torch.Tensor | None = None

    @classmethod
    def for_model(
        cls,
        config,  # noqa: ANN001
        vocab: list[int],
        intermediate: int | None = None,
        input_norm: bool = False,
    ) -> DraftHead:
        """A head shaped like one decoder layer of ``config`` (a transformers Llama/Qwen2 config)."""
        hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            hd,
            intermediate or 2 * config.hidden_size,
            vocab,
            float(config.rms_norm_eps),
            qkv_bias=config.model_type == "qwen2",
            input_norm=input_norm,
        )

    # -- the layer ---------------------------------------------------------------------------
    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # w.to: under the trainer's bf16 autocast x is bf16 while w stays float32, and torch's fused
        # rms_norm needs one dtype (a no-op at inference, where both are the tier's dtype)
        return F.rms_norm(x, (x.shape[-1],), w.to(x.dtype), self.eps)

    def fuse(self, features: torch.Tensor, next_embeds: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([features, next_embeds], -1))

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):  # noqa: ANN201
        """x [B, n, D] (fused input) -> rotated q [B, H, n, hd], k, v [B, Hkv, n, hd]."""
        b, n, _ = x.shape
        y = x if self.in_norm is None else self._norm(x, self.in_norm)
        q = self.q(y).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k(y).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v(y).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def finish(
        self, x: torch.Tensor, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention of q over keys/values, then the MLP: the predicted features [B, n, D]."""
        b, _, n, _ = q.shape
        att = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=self.n_kv != self.n_heads)
        h = x + self.o(att.transpose(1, 2).reshape(b, n, -1))
        y = self._norm(h, self.post_norm)
        return h + self.down(F.silu(self.gate(y)) * self.up(y))

    # -- inference (batch 1, own cache addressed by absolute position, like LayerwiseModel) ----
    def reset(self, max_len: int, device: torch.device, dtype: torch.dtype) -> None:
        if self.kc is None or self.kc.shape[1] < max_len or self.kc.device != device or self.kc.dtype != dtype:
            self.kc = torch.empty((self.n_kv, max_len, self.head_dim), device=device, dtype=dtype)
            self.vc = torch.empty_like(self.kc)

    def step(
        self,
        features: torch.Tensor,
        next_embeds: torch.Tensor,
        start: int,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pairs (f_p, x_{p+1}) for p = start..start+n-1 ([1, n, D] each) -> predicted f_{p+1} [1, n, D].
        Writes their K/V at cache slots start..start+n-1; attends to every earlier slot's, or, with
        ``mask`` [n, start + n] (a draft tree's rows: ``rope`` then gives each row its position),
        to the slots it allows."""
        x = self.fuse(features, next_embeds)
        q, k, v = self.qkv(x, *rope)
        n, end = x.shape[1], start + x.shape[1]
        self.kc[:, start:end] = k[0]
        self.vc[:, start:end] = v[0]
        if mask is None and n > 1:
            mask = torch.ones(n, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
        return self.finish(x, q, self.kc[None, :, :end], self.vc[None, :, :end], mask)

    # -- files -------------------------------------------------------------------------------
    def save(self, folder: Path, model_sha256: str, info: dict) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            k: (v.detach().to(torch.bfloat16) if v.is_floating_point() else v).contiguous()
            for k, v in self.state_dict().items()
        }
        shape = {
            "hidden": self.hidden,
            "n_heads": self.n_heads,
            "n_kv": self.n_kv,
            "head_dim": self.head_dim,
            "intermediate": self.intermediate,
            "eps": self.eps,
            "qkv_bias": self.qkv_bias,
            "input_norm": self.in_norm is not None,
        }
        meta = {"format": FORMAT, "shape": json.dumps(shape), "model_sha256": model_sha256}
        save_file(tensors, folder / "draft.safetensors", metadata=meta)
        (folder / "draft.json").write_text(
            json.dumps({**info, "shape": shape, "draft_vocab": len(self.vocab), "model_sha256": model_sha256}, indent=2)
            + "\n"
        )
        return folder

    @staticmethod
    def load(folder: Path, model_sha256: str | None = None) -> DraftHead:
        meta, tensors = read_bound(
            Path(folder) / "draft.safetensors", FORMAT, model_sha256, "draft head", "ladder depth train --drafter head"
        )
        shape = json.loads(meta["shape"])
        head = DraftHead(
            shape["hidden"],
            shape["n_heads"],
            shape["n_kv"],
            shape["head_dim"],
            shape["intermediate"],
            tensors["vocab"].tolist(),
            shape["eps"],
            shape["qkv_bias"],
            shape.get("input_norm", True),  # files written before the flag all had the norm
        )
        head.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
        info = Path(folder) / "draft.json"
        head.info = json.loads(info.read_text()) if info.is_file() else {}
        return head.eval()
