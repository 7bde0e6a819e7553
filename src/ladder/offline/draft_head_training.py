"""Train a tier's draft head by self-distillation (``ladder depth train --drafter head``, issue 22).

1. The frozen tier answers N prompts greedily — GSM8K training questions (the exit heads'
   recipe) or equal parts of math, code and everyday chat (``offline/draft_corpus``, issue 34):
   the head must imitate the model on the text it writes itself, on the traffic it will draft.
2. One teacher pass per sequence keeps every position's feature (final normed hidden state) and
   the model's greedy next token.
3. The head is fitted on (f_t, x_{t+1}) -> f_{t+1}: cross-entropy of its draft-vocabulary logits
   against the model's greedy token (what acceptance is) plus a small feature regression (EAGLE),
   over ``unroll`` chained steps in one pass — step s feeds the head its own prediction from step
   s-1 and attends to the true pairs before it and to its own earlier predictions, exactly the
   cache a draft chain sees at inference (EAGLE-3's training-time test). Without it the head is
   trained only on true features and its second draft of a chain is much worse.
4. Held-out sequences report acceptance per chain step (top-1 agreement with the model, given the
   earlier drafts were right) — the number the decode loop lives on — overall and per domain.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ladder.offline.exit_head_training import (
    HeadSpec,
    chat_ids,
    corpus_key,
    frozen_teacher,
    teacher_corpus,
    training_questions,
)
from ladder.offline.draft_corpus import domain_counts, mixed_prompts
from ladder.outcomes.io import read_rows
from ladder.workers.draft_head import DraftHead


@dataclass(frozen=True)
class DraftSpec:
    prompts: int = 512  # questions the tier answers itself (the held-out part comes from these)
    reference: int = 768  # more questions with their GSM8K reference solutions (teacher-forced, no generation)
    new_tokens: int = 128
    draft_vocab: int = 4096  # most frequent greedy tokens of the corpus (+ each prompt's tokens at inference)
    intermediate: int | None = None  # the head's MLP width; None: 2 × hidden
    unroll: int = 3  # chained steps trained per position
    epochs: int = 5  # at most; the epoch with the best held-out agreement is kept
    batch_sequences: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.01
    noise: float = 0.1  # Gaussian noise on the input features, relative to their RMS (EAGLE's regulariser)
    reg_weight: float = 0.1  # feature regression beside the token cross-entropy
    gen_batch: int = 16
    holdout: float = 0.1
    seed: int = 0
    threads: int = 2
    max_minutes: float = 25.0  # fitting stops at this wall-clock budget (the 30-minute target)
    # () : GSM8K questions only (the issue-22 heads); else these domains, "name" or "name:N"
    # (offline/draft_corpus.domain_counts)
    domains: tuple[str, ...] = ()
    input_norm: bool = False  # True: the issue-22 layer shape, which vLLM's EAGLE layer cannot load


def teacher_features(model, seqs: list[list[int]], batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:  # noqa: ANN001
    """Per sequence: [T, D] features (final normed hidden states, float32) and [T] greedy next
    tokens. Batched with right padding (causal attention: a position never sees the padding)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths: little padding
    done: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for s in tqdm(range(0, len(order), batch), desc="teacher pass", unit="batch"):
        idx = order[s : s + batch]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, : len(seqs[i])] = 1
        with torch.inference_mode():
            f = model.model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).last_hidden_state
            nxt = model.lm_head(f).argmax(-1)
        for r, i in enumerate(idx):
            n = len(seqs[i])
            done[i] = (f[r, :n].float().cpu(), nxt[r, :n].cpu())
    return [done[i] for i in range(len(seqs))]


def reference_corpus(tokenizer, data: Path, exclude: set[str], n: int, seed: int) -> list[list[int]]:  # noqa: ANN001
    """Chat-formatted GSM8K training questions with their reference solutions (calculator
    annotations removed), for questions not in ``exclude``: more text to fit on at the cost of a
    teacher pass only. The targets are still the tier's own features and greedy tokens."""
    rows = read_rows(data / "routellm" / "gsm8k" / "train.jsonl", "GSM8K training file")
    rows = [r for r in rows if r["question"] not in exclude]
    seqs = []
    for r in random.Random(seed + 1).sample(rows, min(n, len(rows))):
        solution = re.sub(r"<<[^>]*>>", "", r["answer"]).replace("####", "The answer is")
        seqs.append(chat_ids(tokenizer, r["question"]) + tokenizer(solution, add_special_tokens=False)["input_ids"])
    return seqs


def choose_vocab(teacher: list[tuple[torch.Tensor, torch.Tensor]], size: int) -> tuple[list[int], float]:
    """The ``size`` tokens the model picks most often, and the share of its picks they cover."""
    counts = Counter()
    for _, nxt in teacher:
        counts.update(nxt.tolist())
    top = [t for t, _ in counts.most_common(size)]
    covered = sum(counts[t] for t in top) / max(1, sum(counts.values()))
    return sorted(top), covered


def unrolled(head: DraftHead, rotary, feats: torch.Tensor, embeds: torch.Tensor, steps: int) -> list[torch.Tensor]:  # noqa: ANN001
    """Predictions of ``steps`` chained draft steps for every base position t, in one pass each.

    feats [B, T, D] true features; embeds [B, T + steps, D] token embeddings (zero-padded).
    Step s reads (f_t if s == 0 else step s-1's prediction at t, x_{t+s+1}) at position t+s and
    predicts f_{t+s+1}; it attends to the true pairs ≤ t and to the predictions of steps 1..s-1 at
    t (a draft chain's cache). Returns one [B, T, D] prediction per step."""
    b, t, _ = feats.shape
    keys, values, preds = [], [], []
    tril = torch.ones(t, t, dtype=torch.bool, device=feats.device).tril()
    eye = torch.eye(t, dtype=torch.bool, device=feats.device)
    inp = feats
    for s in range(steps):
        x = head.fuse(inp, embeds[:, s + 1 : s + 1 + t])
        pos = torch.arange(s, s + t, device=feats.device)[None].expand(b, -1)
        cos, sin = rotary(x, pos)
        q, k, v = head.qkv(x, cos, sin)
        keys.append(k)
        values.append(v)
        mask = torch.cat([tril] + [eye] * s, 1)
        pred = head.finish(x, q, torch.cat(keys, 2), torch.cat(values, 2), mask)
        preds.append(pred)
        inp = pred
    return preds


def step_loss(
    head: DraftHead,
    rotary,
    rows: torch.Tensor,
    batch: dict,
    spec: DraftSpec,  # noqa: ANN001
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Loss over the unrolled steps and, per step, (agreeing, counted) positions."""
    preds = unrolled(head, rotary, batch["feats"], batch["embeds"], spec.unroll)
    total, tally = 0.0, []
    for s, pred in enumerate(preds):
        target_f = batch["tfeats"][:, s + 1 : s + 1 + pred.shape[1]]
        target_t = batch["ttok"][:, s + 1 : s + 1 + pred.shape[1]]
        valid = batch["valid"][:, s + 1 : s + 1 + pred.shape[1]]
        logits = pred[valid] @ rows.T
        tgt = target_t[valid]
        ce = F.cross_entropy(logits.float(), tgt, ignore_index=-100)
        reg = F.smooth_l1_loss(pred[valid].float(), target_f[valid])
        total = total + ce + spec.reg_weight * reg
        known = tgt != -100
        tally.append((int((logits.argmax(-1) == tgt)[known].sum()), int(valid.sum())))
    return total / len(preds), tally


def make_batch(
    model,
    items: list[tuple[torch.Tensor, torch.Tensor, list[int]]],
    index: dict[int, int],  # noqa: ANN001
    steps: int,
) -> dict:
    """Right-padded tensors of a few sequences. ``ttok`` is the model's greedy token AFTER position
    t as a draft-vocabulary index (-100: outside it) and is read shifted like the features, so
    position t+s+1's entry is the token the step-s prediction should make."""
    t = max(len(seq) for _, _, seq in items)
    d = items[0][0].shape[1]
    b = len(items)
    feats = torch.zeros(b, t, d)
    ids = torch.zeros(b, t + steps + 1, dtype=torch.long)
    ttok = torch.full((b, t + steps + 1), -100, dtype=torch.long)
    valid = torch.zeros(b, t + steps + 1, dtype=torch.bool)
    for i, (f, nxt, seq) in enumerate(items):
        n = len(seq)
        feats[i, :n] = f
        ids[i, :n] = torch.tensor(seq)
        ttok[i, :n] = torch.tensor([index.get(x, -100) for x in nxt.tolist()])
        valid[i, 1:n] = True  # a target position needs a predecessor
    tfeats = torch.zeros(b, t + steps + 1, d)
    tfeats[:, :t] = feats
    with torch.no_grad():
        embeds = model.model.embed_tokens(ids).float()
    return {"feats": feats, "embeds": embeds, "tfeats": tfeats, "ttok": ttok, "valid": valid}


def train(
    tier: str,
    model_dir: Path,
    model_sha256: str,
    data: Path,
    out: Path,
    spec: DraftSpec,
    command: str,
    corpus_dir: Path | None = None,
) -> dict:
    t0 = time.perf_counter()
    model, tokenizer = frozen_teacher(model_dir, spec.seed, spec.threads)
    rng = random.Random(spec.seed)
    gen_spec = HeadSpec(prompts=spec.prompts, new_tokens=spec.new_tokens, gen_batch=spec.gen_batch, seed=spec.seed)
    if spec.domains:
        counts = domain_counts(spec.domains, spec.prompts)
        n_gsm8k = dict(counts).get("gsm8k", 0)
        own = training_questions(data, n_gsm8k, spec.seed) if n_gsm8k else []
        pairs = mixed_prompts(counts, data, spec.seed, own)
    else:
        own = training_questions(data, spec.prompts, spec.seed)
        pairs = [("gsm8k", q) for q in own]
    own_questions = set(own)  # the reference solutions leave these out
    key = corpus_key(tier, model_sha256, spec.new_tokens)
    questions = [q for _, q in pairs]
    seqs = teacher_corpus(model, tokenizer, data, (corpus_dir or out) / "corpus.json", key, gen_spec, questions)
    gen_s = time.perf_counter() - t0

    n_val = max(1, int(len(seqs) * spec.holdout))
    extra = reference_corpus(tokenizer, data, own_questions, spec.reference, spec.seed) if spec.reference else []
    teacher = teacher_features(model, seqs + extra)
    all_seqs = seqs + extra
    vocab, coverage = choose_vocab(teacher[n_val:], spec.draft_vocab)
    index = {tok: i for i, tok in enumerate(vocab)}
    rows = model.lm_head.weight[torch.tensor(vocab)].detach()
    head = DraftHead.for_model(model.config, vocab, spec.intermediate, spec.input_norm)
    with torch.no_grad():  # start from "the next feature is this one" (plus what the layer learns)
        head.fc.weight.zero_()
        head.fc.weight[:, : head.hidden].copy_(torch.eye(head.hidden))
    items = [(f, nxt, seq) for (f, nxt), seq in zip(teacher, all_seqs)]
    train_items, val_items = items[n_val:], items[:n_val]  # held out: the tier's own answers only
    rotary = model.model.rotary_emb
    opt = torch.optim.AdamW(head.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    per_epoch = (len(train_items) + spec.batch_sequences - 1) // spec.batch_sequences
    steps = spec.epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=steps, pct_start=0.1)
    bar = tqdm(total=steps, desc="fit draft head", unit="step")
    fit_start, done, stopped_early = time.perf_counter(), 0, False
    best, best_state, report, curve = -1.0, None, {}, []
    for _ in range(spec.epochs):  # batches of similar lengths (less padding), in random order
        order = sorted(range(len(train_items)), key=lambda i: (len(train_items[i][2]) // 32, rng.random()))
        batches = [order[i : i + spec.batch_sequences] for i in range(0, len(order), spec.batch_sequences)]
        rng.shuffle(batches)
        head.train()
        for idx in batches:
            batch = make_batch(model, [train_items[i] for i in idx], index, spec.unroll)
            if spec.noise:
                f = batch["feats"]
                batch["feats"] = f + torch.randn_like(f) * spec.noise * f.pow(2).mean(-1, keepdim=True).sqrt()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, tally = step_loss(head, rotary, rows, batch, spec)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            opt.step()
            sched.step()
            done += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", acc0=f"{tally[0][0] / max(1, tally[0][1]):.2f}")
            if (time.perf_counter() - fit_start) / 60 > spec.max_minutes:
                stopped_early = True
                break
        head.eval()
        score = evaluate(head, model, rotary, rows, val_items, index, spec)
        curve.append(score["agree_per_step"])
        if score["expected_tokens_per_verification"] > best:  # keep the epoch that generalises best
            best, report = score["expected_tokens_per_verification"], score
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        if stopped_early:
            break
    bar.close()
    head.load_state_dict(best_state)
    domains = [d for d, _ in pairs[:n_val]]
    per_domain_report = {  # the held-out answers of each domain (what the benchmark reads per domain)
        d: evaluate(head, model, rotary, rows, [it for it, dd in zip(val_items, domains) if dd == d], index, spec)
        for d in sorted(set(domains))
    }
    info = {
        "tier": tier,
        "spec": asdict(spec),
        "command": command,
        "sequences": len(seqs),
        "heldout_sequences": n_val,
        "draft_vocab_coverage": round(coverage, 4),
        "steps": done,
        "stopped_at_time_budget": stopped_early,
        "heldout": report,
        "heldout_per_domain": per_domain_report,
        "domains": list(spec.domains) or ["gsm8k"],
        "heldout_per_epoch": curve,
        "reference_sequences": len(extra),
        "generate_s": round(gen_s, 1),
        "total_s": round(time.perf_counter() - t0, 1),
    }
    head.save(out, model_sha256, info)
    return info


@torch.no_grad()
def evaluate(
    head: DraftHead,
    model,
    rotary,
    rows: torch.Tensor,
    items: list,
    index: dict[int, int],  # noqa: ANN001
    spec: DraftSpec,
) -> dict:
    """Held-out top-1 agreement with the model per chain step (step s given steps < s were right
    in their tokens; the feature fed back is the head's own), and the expected tokens per
    verification of a fixed chain of ``unroll`` drafts, 1 + a0 + a0·a1 + …"""
    hits = [0] * spec.unroll
    counted = [0] * spec.unroll
    for i in range(0, len(items), spec.batch_sequences):
        batch = make_batch(model, items[i : i + spec.batch_sequences], index, spec.unroll)
        _, tally = step_loss(head, rotary, rows, batch, spec)
        for s, (h, n) in enumerate(tally):
            hits[s] += h
            counted[s] += n
    acc = [h / max(1, n) for h, n in zip(hits, counted)]
    expected, reach = 1.0, 1.0
    for a in acc:
        reach *= a
        expected += reach
    return {
        "agree_per_step": [round(a, 4) for a in acc],
        "expected_tokens_per_verification": round(expected, 3),
        "positions": counted[0],
    }
