"""Run an exported draft head through vLLM's own EAGLE model code on CPU and print how far its
outputs are from Ladder's head on the same inputs (one JSON line). A separate process: vLLM's
model code needs its distributed state and current config set process-wide.

vLLM's CPU engine cannot run speculative decoding, so the engine itself never drafts here; what
runs is vLLM's config path (SpeculativeConfig reads the export as the draft model and names its
architecture), its model class and weight loader (``EagleLlamaForCausalLM.load_weights``: the
q/k/v and gate/up stacking), and its forward — fc, rotary embedding from the exported config,
projections, norms, MLP, residual. Only the attention kernel, which needs the engine's scheduler
metadata, is swapped for causal scaled-dot-product attention over the same q/k/v.

    python tests/workers/vllm_eagle_probe.py TARGET_DIR EXPORT_DIR HEAD_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


class CausalAttention(torch.nn.Module):
    """vLLM's Attention(q, k, v) for one sequence: [n, H*hd] in, [n, H*hd] out."""

    def __init__(self, n_heads: int, n_kv: int, head_dim: int) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = n_heads, n_kv, head_dim

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n = q.shape[0]
        q = q.view(n, self.n_heads, self.head_dim).transpose(0, 1)
        k = k.view(n, self.n_kv, self.head_dim).transpose(0, 1)
        v = v.view(n, self.n_kv, self.head_dim).transpose(0, 1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv != self.n_heads)
        return out.transpose(0, 1).reshape(n, -1)


def vllm_drafter(target_dir: Path, export_dir: Path):  # noqa: ANN201
    from vllm.config import CompilationConfig, ModelConfig, ParallelConfig, SpeculativeConfig, VllmConfig
    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.model_executor.model_loader.utils import get_model_architecture

    target = ModelConfig(model=str(target_dir), dtype="float32")
    parallel = ParallelConfig()
    spec = SpeculativeConfig(
        method="eagle",
        model=str(export_dir),
        num_speculative_tokens=3,
        target_model_config=target,
        target_parallel_config=parallel,
    )
    spec.draft_model_config.dtype = torch.float32
    config = VllmConfig(
        model_config=target,
        parallel_config=parallel,
        speculative_config=spec,
        compilation_config=CompilationConfig(mode=0),
    )
    with set_current_vllm_config(config):
        # a file rendezvous: no port to pick, nothing listening
        init_distributed_environment(1, 0, f"file://{export_dir}/dist-init", 0, "gloo")
        initialize_model_parallel(1, 1)
        cls, arch = get_model_architecture(spec.draft_model_config)
        torch.set_default_dtype(torch.float32)
        model = cls(vllm_config=config, prefix="draft")
    return model, arch, config


def main() -> None:
    target_dir, export_dir, head_dir = map(Path, sys.argv[1:4])
    from ladder.workers.draft_head import DraftHead

    from vllm.config import set_current_vllm_config

    model, arch, config = vllm_drafter(target_dir, export_dir)
    weights = load_file(str(export_dir / "model.safetensors"))
    model.load_weights((k, v.float()) for k, v in weights.items())
    target = load_file(str(target_dir / "model.safetensors"))
    embed = target["model.embed_tokens.weight"].float()
    lm_head = target.get("lm_head.weight", embed).float()
    model.model.embed_tokens.weight.data.copy_(embed)  # the engine shares the target's (no own copy)
    from vllm.model_executor.model_loader.utils import process_weights_after_loading

    with set_current_vllm_config(config):  # what vLLM's loader does next: the CPU kernels pick their weights' layout
        process_weights_after_loading(model, config.speculative_config.draft_model_config, torch.device("cpu"))
    layer = model.model.layers[0]
    att = layer.self_attn
    att.attn = CausalAttention(att.num_heads, att.num_kv_heads, att.head_dim)

    head = DraftHead.load(head_dir)
    gen = torch.Generator().manual_seed(0)
    n = 12
    ids = torch.randint(0, embed.shape[0], (n,), generator=gen)
    feats = torch.randn(n, head.hidden, generator=gen) * 2.0
    positions = torch.arange(n)
    with torch.no_grad(), set_current_vllm_config(config):
        theirs, _ = model(ids, positions, feats)
        from transformers import AutoConfig
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        rotary = LlamaRotaryEmbedding(AutoConfig.from_pretrained(target_dir))
        cos, sin = rotary(feats[None], positions[None])
        head.reset(n, torch.device("cpu"), torch.float32)
        ours = head.step(feats[None], embed[ids][None], 0, (cos, sin))[0]
        rows = lm_head[head.vocab]
        ours_logits, their_logits = ours @ rows.T, theirs @ rows.T
        full_argmax = (theirs @ lm_head.T).argmax(-1)
    scale = ours.abs().max().item()
    print(
        json.dumps(
            {
                "architecture": arch,
                "feature_max_abs_diff": (ours - theirs).abs().max().item(),
                "feature_scale": scale,
                "logit_max_abs_diff": (ours_logits - their_logits).abs().max().item(),
                "logit_scale": ours_logits.abs().max().item(),
                "same_draft_tokens": bool(
                    (head.vocab[ours_logits.argmax(-1)] == head.vocab[their_logits.argmax(-1)]).all()
                ),
                "full_vocab_argmax_in_draft_vocab": float(torch.isin(full_argmax, head.vocab).float().mean()),
            }
        )
    )


if __name__ == "__main__":
    main()
