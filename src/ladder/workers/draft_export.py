"""A trained draft head as the checkpoint vLLM's EAGLE drafter loads (issue 34, ``ladder depth export``).

vLLM's EAGLE-1 drafter for Llama-family targets (``EagleLlamaForCausalLM``, model file
``llama_eagle.py``) is the same computation as Ladder's head when the head has no input norm:
``fc`` over the concatenation, one Llama decoder layer whose first input norm is an identity,
post-attention norm, SwiGLU MLP, the residual added back, and the *target's* LM head on the
result. Two layout differences are exact renamings: vLLM concatenates [embedding; feature] where
Ladder writes [feature; embedding] (the halves of ``fc`` swap), and Qwen2's q/k/v biases are the
``qkv_bias`` switch of vLLM's Llama attention (no o_proj bias). A head trained with the issue-22
input norm cannot be exported: a norm is not a linear map, so it is refused with the command
that trains one in the engine's shape.

What is not carried over: the head's *draft vocabulary* (Ladder proposes only the ~4K tokens its
tier writes most; vLLM's EAGLE-1 proposes over the whole vocabulary). The checkpoint has neither
``embed_tokens`` nor ``lm_head`` — vLLM then shares the target's, as Ladder's head does — so a
proposal differs only where the full vocabulary's best token lies outside the draft vocabulary.
That changes speed, never output: every proposal is verified by the target.

The checkpoint names the weights it was trained on (config ``ladder.model_sha256`` and the
safetensors metadata); a tier refuses a head bound to other weights when its config is read
(``options.exported_head_binding``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ladder.errors import LadderError
from ladder.workers.draft_head import DraftHead
from ladder.workers.options import EAGLE_EXPORT_FORMAT as EXPORT_FORMAT


def eagle_tensors(head: DraftHead, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """The head's weights under the names vLLM's EAGLE Llama checkpoint uses."""
    d = head.hidden
    fc = head.fc.weight.detach()
    out = {"fc.weight": torch.cat([fc[:, d:], fc[:, :d]], 1)}  # vLLM's input is [embedding; feature]
    layer = "layers.0."
    parts = {"self_attn.q_proj": head.q, "self_attn.k_proj": head.k, "self_attn.v_proj": head.v}
    parts |= {"self_attn.o_proj": head.o, "mlp.gate_proj": head.gate, "mlp.up_proj": head.up}
    parts["mlp.down_proj"] = head.down
    for name, linear in parts.items():
        out[f"{layer}{name}.weight"] = linear.weight.detach()
        if linear.bias is not None:
            out[f"{layer}{name}.bias"] = linear.bias.detach()
    out[f"{layer}post_attention_layernorm.weight"] = head.post_norm.detach()
    return {k: v.to(dtype).contiguous() for k, v in out.items()}


def eagle_config(head: DraftHead, target_config: dict, tier: str, model_sha256: str) -> dict:
    """A one-layer Llama config in the target's geometry (rope, vocabulary, positions): what
    vLLM's speculative config reads as the draft model's and turns into EagleLlamaForCausalLM."""
    keep = ("vocab_size", "max_position_embeddings", "rope_theta", "rope_scaling", "rope_parameters")
    keep += ("bos_token_id", "eos_token_id", "pad_token_id")
    cfg = {k: target_config[k] for k in keep if target_config.get(k) is not None}
    cfg |= {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": head.hidden,
        "num_attention_heads": head.n_heads,
        "num_key_value_heads": head.n_kv,
        "head_dim": head.head_dim,
        "intermediate_size": head.intermediate,
        "num_hidden_layers": 1,
        "rms_norm_eps": head.eps,
        "hidden_act": "silu",
        "attention_bias": False,
        "qkv_bias": head.qkv_bias,  # vLLM's Llama attention: biases on q/k/v only (Qwen2's layout)
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "ladder": {
            "format": EXPORT_FORMAT,
            "tier": tier,
            "model_sha256": model_sha256,
            "draft_vocab": len(head.vocab),
            "trained": {k: head.info.get(k) for k in ("command", "domains", "heldout") if k in head.info},
        },
    }
    return cfg


def export(head: DraftHead, target_dir: Path, out: Path, tier: str, model_sha256: str) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for vLLM's EAGLE drafter into ``out``."""
    if head.in_norm is not None:
        raise LadderError(
            f"tier {tier}: this draft head normalises its fused input (the issue-22 shape), which "
            f"vLLM's EAGLE layer cannot express; train one in the engine's shape first: "
            f"ladder depth train --tier {tier} --drafter head"
        )
    target = json.loads((Path(target_dir) / "config.json").read_text())
    if target.get("model_type") not in ("llama", "qwen2"):
        raise LadderError(
            f"tier {tier}: EAGLE export supports Llama and Qwen2 models, not {target.get('model_type')!r}"
        )
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": EXPORT_FORMAT, "tier": tier, "model_sha256": model_sha256}
    save_file(eagle_tensors(head), out / "model.safetensors", metadata=meta)
    (out / "config.json").write_text(json.dumps(eagle_config(head, target, tier, model_sha256), indent=2) + "\n")
    return out
