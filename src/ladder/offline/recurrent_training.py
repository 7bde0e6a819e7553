"""Train a recurrent-depth model from scratch on left-to-right arithmetic (``ladder recurrent train``).

Each step draws a fresh batch from the seeded generator (1..12 operations evenly, or 1..the
curriculum's current maximum, which rises by one whenever the model answers items at that maximum
with ≥ 80% accuracy at r = max_train_r, checked every 100 steps), samples the number of
core iterations r from the paper's log-normal Poisson, runs the first r-k iterations without
gradients and backpropagates through the last k. The loss covers the answer digit and the end
token, plus dense intermediate targets: at each operand the running result so far (the operands
themselves are random and not worth predicting); the answer at "=" still needs every step.
(A first task, variable-chain programs that need content-based lookups, stayed at chance for
1,000 steps here — too slow to learn within the CPU budget.) Writes a checkpoint
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

from ladder.offline.arithmetic import (
    END,
    MAX_OPS,
    OPERATORS,
    PROMPT_LEN,
    VOCAB,
    ArithItem,
    make_item,
)
from ladder.workers.recurrent import RecurrentConfig, RecurrentDepthModel, sample_r
from ladder.workers.recurrent_worker import CharTokenizer, weights_sha256


@dataclass(frozen=True)
class TrainSpec:
    steps: int = 4000
    batch: int = 64
    lr: float = 7e-4
    warmup: int = 100
    seed: int = 0
    threads: int = 2
    d_model: int = 128
    core: int = 2
    mean_r: float = 6.0
    max_train_r: int = 16
    backprop_k: int = 4
    eval_every: int = 250
    operators: str = OPERATORS
    window: int | None = None  # sliding attention window (RecurrentConfig.window)
    curriculum: bool = False
    # "cosine": warm-up then cosine decay to 0 over ``steps``; "constant": warm-up then flat; "wsd":
    # warm-up, flat, then linear decay to 0 over the last 20% of steps. Runs here learned the
    # addition table and the chain only with a long flat 1e-3 phase (a cosine starts cooling before
    # the slow phase change of a from-scratch run has happened); the final decay settles the weights.
    schedule: str = "cosine"
    max_minutes: float | None = None  # stop (and save) once this much wall time has passed
    device: str = "cpu"  # "cuda" on a GPU machine (a batch-64 forward at r = 32: ~0.1 s on an H100, 0.4 s here)


def encode_batch(items: list[ArithItem], tok: CharTokenizer, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, seq_len] (prompt left-padded, then answer digit, end, padding) and targets [B, seq_len]:
    the running result at each operand, the answer digit at "=", the end token after it; else -100."""
    ids = torch.zeros(len(items), seq_len, dtype=torch.long)
    targets = torch.full((len(items), seq_len), -100, dtype=torch.long)
    P = tok.prompt_len
    for b, item in enumerate(items):
        ids[b, :P] = torch.tensor(tok.encode_prompt(item.prompt))
        first = P - len(item.prompt)
        for k, value in enumerate(item.values):  # operand k sits at text index 2k + 2
            targets[b, first + 2 * k + 2] = tok.ids[value]
        ids[b, P], ids[b, P + 1] = tok.ids[item.answer], END
        targets[b, P - 1], targets[b, P] = tok.ids[item.answer], END
    return ids, targets


def evaluate(model: RecurrentDepthModel, items: list[ArithItem], r: int, tok: CharTokenizer) -> float:
    """Answer-digit accuracy with r iterations (teacher-forced; same as greedy for the first token)."""
    device = next(model.parameters()).device
    ids, targets = (t.to(device) for t in encode_batch(items, tok, model.cfg.seq_len))
    with torch.no_grad():
        logits = model(ids, r, generator=torch.Generator(device=device).manual_seed(0))
    P = tok.prompt_len
    return float((logits[:, P - 1].argmax(-1) == targets[:, P - 1]).float().mean())


SCHEDULES = ("cosine", "constant", "wsd")


def learning_rate(spec: TrainSpec, step: int) -> float:
    warm = spec.lr * min(1.0, (step + 1) / spec.warmup)
    if spec.schedule == "constant":
        return warm
    if spec.schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * step / spec.steps))
    if spec.schedule == "wsd":
        return warm * min(1.0, (spec.steps - step) / (0.2 * spec.steps))
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {spec.schedule!r}")


def train(spec: TrainSpec, out: Path, command: str, progress: bool = True) -> dict:
    torch.manual_seed(spec.seed)
    torch.set_num_threads(spec.threads)
    rng = random.Random(spec.seed)
    cfg = RecurrentConfig(
        vocab=VOCAB,
        prompt_len=PROMPT_LEN,
        d_model=spec.d_model,
        core=spec.core,
        mean_r=spec.mean_r,
        max_train_r=spec.max_train_r,
        backprop_k=spec.backprop_k,
        window=spec.window,
    )
    device = torch.device(spec.device)
    model = RecurrentDepthModel(cfg).to(device)
    tok = CharTokenizer(cfg.vocab, cfg.prompt_len)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.95))
    gen = torch.Generator(device=device).manual_seed(spec.seed)
    # r is drawn on the CPU; on the CPU one generator serves both (the shipped checkpoint's stream)
    r_gen = gen if device.type == "cpu" else torch.Generator().manual_seed(spec.seed)
    held_out = [make_item(random.Random(10_000 + i), 1 + i % MAX_OPS, spec.operators) for i in range(480)]
    level = 2 if spec.curriculum else MAX_OPS  # the most operations a training item may have
    started, log = time.perf_counter(), []
    bar = tqdm(range(spec.steps), desc="recurrent train", disable=not progress)
    ema = None
    for step in bar:
        lr = learning_rate(spec, step)
        for group in opt.param_groups:
            group["lr"] = lr
        items = [make_item(rng, 1 + rng.randrange(level), spec.operators) for _ in range(spec.batch)]
        ids, targets = (t.to(device) for t in encode_batch(items, tok, cfg.seq_len))
        r = sample_r(spec.mean_r, spec.max_train_r, r_gen)
        logits = model(ids, r, spec.backprop_k, gen)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if spec.curriculum and level < MAX_OPS and (step + 1) % 100 == 0:
            probe = [make_item(rng, level, spec.operators) for _ in range(128)]
            if evaluate(model.eval(), probe, spec.max_train_r, tok) >= 0.8:
                level += 1
            model.train()
        out_of_time = spec.max_minutes is not None and time.perf_counter() - started > 60 * spec.max_minutes
        if step % spec.eval_every == 0 or step == spec.steps - 1 or out_of_time:
            acc1, acc = evaluate(model.eval(), held_out, 1, tok), evaluate(model, held_out, 16, tok)
            model.train()
            log.append(
                {
                    "step": step,
                    "loss": round(ema, 4),
                    "acc_r1": round(acc1, 4),
                    "acc_r16": round(acc, 4),
                    "max_ops": level,
                    "minutes": round((time.perf_counter() - started) / 60, 2),
                }
            )
            bar.set_postfix(loss=f"{ema:.3f}", acc1=f"{acc1:.3f}", acc16=f"{acc:.3f}", max_ops=level)
        if out_of_time:
            break
    return save(model.eval(), out, spec, command, log, time.perf_counter() - started)


def save(model: RecurrentDepthModel, out: Path, spec: TrainSpec, command: str, log: list[dict], seconds: float) -> dict:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    weights = out / "model.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, weights)
    meta = {
        "format": 1,
        "model": model.cfg.to_dict(),
        "task": f"left-to-right arithmetic mod 10 (ladder.offline.arithmetic), 1..{MAX_OPS} operations",
        "operators": spec.operators,
        "train": asdict(spec),
        "command": command,
        "train_minutes": round(seconds / 60, 2),
        "steps_done": log[-1]["step"] + 1 if log else 0,
        "parameters": model.num_parameters(),
        "log": log,
        "sha256": weights_sha256(weights),
    }
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
