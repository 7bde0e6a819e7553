"""Train a recurrent-depth model from scratch on variable-chain programs (``ladder recurrent train``).

Each step draws a fresh batch from the seeded generator (levels 1..8 evenly), samples the number of
core iterations r from the paper's log-normal Poisson, runs the first r-k iterations without
gradients and backpropagates through the last k. The loss covers the answer digit and the end
token, plus dense intermediate targets: at each statement's ";" the model is asked for that
statement's value (the program text itself is random and not worth predicting). Without them the
answer-only loss sat at chance for 750 steps; with them every hop is supervised, and the query's
answer still needs one lookup per link. Writes a checkpoint
folder the ``RecurrentWorker`` loads (weights as safetensors, metadata and the exact command).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ladder.offline.chains import END, PROMPT_LEN, VOCAB, ChainItem, make_item
from ladder.workers.recurrent import RecurrentConfig, RecurrentDepthModel, sample_r
from ladder.workers.recurrent_worker import CharTokenizer, weights_sha256


@dataclass(frozen=True)
class TrainSpec:
    steps: int = 3000
    batch: int = 64
    lr: float = 2e-3
    warmup: int = 100
    seed: int = 0
    threads: int = 2
    d_model: int = 128
    core: int = 2
    mean_r: float = 6.0
    max_train_r: int = 16
    backprop_k: int = 4


def encode_batch(items: list[ChainItem], tok: CharTokenizer, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, seq_len] (prompt left-padded, then answer digit, end, padding) and targets [B, seq_len]:
    each statement's value at its ";", the answer digit at "?", the end token after it; else -100."""
    ids = torch.zeros(len(items), seq_len, dtype=torch.long)
    targets = torch.full((len(items), seq_len), -100, dtype=torch.long)
    P = tok.prompt_len
    for b, item in enumerate(items):
        prompt = tok.encode_prompt(item.prompt)
        ids[b, :P] = torch.tensor(prompt)
        semis = [i for i, t in enumerate(prompt) if t == tok.ids[";"]]
        for pos, value in zip(semis, item.values):
            targets[b, pos] = tok.ids[value]
        ids[b, P], ids[b, P + 1] = tok.ids[item.answer], END
        targets[b, P - 1], targets[b, P] = tok.ids[item.answer], END
    return ids, targets


def evaluate(model: RecurrentDepthModel, items: list[ChainItem], r: int, tok: CharTokenizer) -> float:
    """Answer-digit accuracy with r iterations (teacher-forced; same as greedy for the first token)."""
    ids, targets = encode_batch(items, tok, model.cfg.seq_len)
    with torch.no_grad():
        logits = model(ids, r, generator=torch.Generator().manual_seed(0))
    P = tok.prompt_len
    return float((logits[:, P - 1].argmax(-1) == targets[:, P - 1]).float().mean())


def train(spec: TrainSpec, out: Path, command: str, progress: bool = True) -> dict:
    torch.manual_seed(spec.seed)
    torch.set_num_threads(spec.threads)
    rng = random.Random(spec.seed)
    cfg = RecurrentConfig(vocab=VOCAB, prompt_len=PROMPT_LEN, d_model=spec.d_model, core=spec.core,
                          mean_r=spec.mean_r, max_train_r=spec.max_train_r, backprop_k=spec.backprop_k)  # fmt: skip
    model = RecurrentDepthModel(cfg)
    tok = CharTokenizer(cfg.vocab, cfg.prompt_len)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(spec.seed)
    held_out = [make_item(random.Random(10_000 + i), 1 + i % 8) for i in range(512)]
    started, log = time.perf_counter(), []
    bar = tqdm(range(spec.steps), desc="recurrent train", disable=not progress)
    ema = None
    for step in bar:
        lr = spec.lr * min(1.0, (step + 1) / spec.warmup) * 0.5 * (1 + math.cos(math.pi * step / spec.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        items = [make_item(rng, 1 + rng.randrange(8)) for _ in range(spec.batch)]
        ids, targets = encode_batch(items, tok, cfg.seq_len)
        r = sample_r(spec.mean_r, spec.max_train_r, gen)
        logits = model(ids, r, spec.backprop_k, gen)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 250 == 0 or step == spec.steps - 1:
            acc = evaluate(model.eval(), held_out, 16, tok)
            model.train()
            log.append({"step": step, "loss": round(ema, 4), "acc_r16": round(acc, 4),
                        "minutes": round((time.perf_counter() - started) / 60, 2)})  # fmt: skip
            bar.set_postfix(loss=f"{ema:.3f}", acc16=f"{acc:.3f}")
    return save(model.eval(), out, spec, command, log, time.perf_counter() - started)


def save(model: RecurrentDepthModel, out: Path, spec: TrainSpec, command: str, log: list[dict], seconds: float) -> dict:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    weights = out / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    meta = {
        "format": 1,
        "model": model.cfg.to_dict(),
        "task": "variable-chain programs mod 10 (ladder.offline.chains), levels 1..8",
        "train": asdict(spec),
        "command": command,
        "train_minutes": round(seconds / 60, 2),
        "parameters": model.num_parameters(),
        "log": log,
        "sha256": weights_sha256(weights),
    }
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
