"""Early-exit heads: read a token's distribution off an intermediate layer of a frozen decoder.

Head e maps the hidden state after the first e layers through the model's own final norm, a small
residual low-rank adapter (x + U·D·x, U zero-initialised so an untrained head is the plain "logit
lens") and the shared LM head. Only the adapters are trained (self-distillation against the final
layer, ``ladder.offline.exit_head_training``), so a tier's heads are a few MB of safetensors that
name the weights they were fitted to: loading them onto other weights is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ladder.workers.head_files import read_bound

FORMAT = "ladder-exit-heads/1"


def bundled_heads(tier: str) -> Path:
    """Where the heads trained for a default tier ship (package data; ``ladder depth train``'s default)."""
    return Path(__file__).parents[1] / "data" / "exit-heads" / tier


class ExitHeads(nn.Module):
    def __init__(self, layers: tuple[int, ...], hidden: int, rank: int = 128) -> None:
        super().__init__()
        if not layers or list(layers) != sorted(set(layers)) or layers[0] < 1:
            raise ValueError(f"exit layers must be increasing and ≥ 1, got {layers}")
        self.layers = tuple(layers)
        self.hidden, self.rank = hidden, rank
        self.info: dict = {}  # heads.json: how they were trained, calibrated operating points
        self.down = nn.ModuleList(nn.Linear(hidden, rank, bias=False) for _ in layers)
        self.up = nn.ModuleList(nn.Linear(rank, hidden, bias=False) for _ in layers)
        # Exit gates: P(this head's top token == the final layer's), from the normed hidden state.
        # One dot product per check, where a max-probability check costs a full LM-head product.
        self.gate = nn.ModuleList(nn.Linear(hidden, 1) for _ in layers)
        for up in self.up:
            nn.init.zeros_(up.weight)

    def index(self, layer: int) -> int:
        try:
            return self.layers.index(layer)
        except ValueError:
            raise ValueError(f"no exit head after layer {layer}; heads: {self.layers}") from None

    def adapt(self, i: int, normed: torch.Tensor) -> torch.Tensor:
        return normed + self.up[i](self.down[i](normed))

    def confidence(self, i: int, normed: torch.Tensor) -> torch.Tensor:
        """Gate i's probability that head i already agrees with the full model ([...] float32)."""
        return torch.sigmoid(self.gate[i](normed).float())[..., 0]

    def logits(self, i: int, h: torch.Tensor, norm: nn.Module, lm_head: nn.Module) -> torch.Tensor:
        """float32 logits of head i for hidden states h [..., D] (after layers[i] layers)."""
        return lm_head(self.adapt(i, norm(h))).float()

    # -- files -----------------------------------------------------------------------------
    def save(self, folder: Path, model_sha256: str, info: dict) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in self.state_dict().items()}
        meta = {
            "format": FORMAT,
            "layers": json.dumps(self.layers),
            "hidden": str(self.hidden),
            "rank": str(self.rank),
            "model_sha256": model_sha256,
        }
        save_file(tensors, folder / "heads.safetensors", metadata=meta)
        (folder / "heads.json").write_text(
            json.dumps({**info, "layers": self.layers, "rank": self.rank, "model_sha256": model_sha256}, indent=2)
            + "\n"
        )
        return folder

    @staticmethod
    def load(folder: Path, model_sha256: str | None = None) -> ExitHeads:
        meta, tensors = read_bound(
            Path(folder) / "heads.safetensors", FORMAT, model_sha256, "exit heads", "ladder depth train"
        )
        heads = ExitHeads(tuple(json.loads(meta["layers"])), int(meta["hidden"]), int(meta["rank"]))
        heads.load_state_dict({k: v.float() for k, v in tensors.items()})
        info = Path(folder) / "heads.json"
        heads.info = json.loads(info.read_text()) if info.is_file() else {}
        return heads.eval()
