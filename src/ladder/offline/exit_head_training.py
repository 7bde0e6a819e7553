"""Train a tier's early-exit heads by self-distillation (``ladder depth train --tier small``).

1. The frozen tier answers N GSM8K training questions greedily (batched ``generate``, left
   padding): the heads must imitate the model on the text it writes itself.
2. One teacher pass per answered sequence keeps, at every position, the hidden state after each
   exit layer and the final (normed) hidden state.
3. Each head's adapter is fitted to KL(final ‖ head) over all positions, every head in the same
   step (they are independent; the frozen LM head is shared). Held-out positions report each
   head's agreement with the final layer's greedy token, the number the self-speculative mode
   lives on.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ladder.offline import gsm8k
from ladder.workers.exit_heads import ExitHeads


@dataclass(frozen=True)
class HeadSpec:
    prompts: int = 192
    new_tokens: int = 128
    every: int = 4  # an exit head after every 4th layer
    rank: int = 128
    epochs: int = 3
    batch_positions: int = 512
    lr: float = 2e-3
    gen_batch: int = 16
    holdout: float = 0.1  # of the sequences, for the agreement report
    seed: int = 0
    threads: int = 2
    budget: float = 0.02  # early exit: at most 2% of tokens may disagree with full depth (held out)


def exit_layers(n_layers: int, every: int) -> tuple[int, ...]:
    return tuple(range(every, n_layers, every))


def chat_ids(tokenizer, question: str) -> list[int]:  # noqa: ANN001
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def generate_corpus(model, tokenizer, questions: list[str], spec: HeadSpec) -> Iterator[list[list[int]]]:  # noqa: ANN001
    """Prompt + the model's own greedy answer, as token ids: one list of them per batch of
    ``spec.gen_batch`` questions, in order (the caller keeps each batch as it comes)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    bar = tqdm(total=len(questions), desc="generate (teacher answers)", unit="q")
    for i in range(0, len(questions), spec.gen_batch):
        prompts = [chat_ids(tokenizer, q) for q in questions[i : i + spec.gen_batch]]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=spec.new_tokens, do_sample=False, pad_token_id=pad
            )
        seqs = []
        for p, row in zip(prompts, out[:, width:].tolist()):
            answer = []
            for t in row:
                if t in eos:
                    break
                answer.append(t)
            seqs.append(p + answer)
        bar.update(len(prompts))
        yield seqs
    bar.close()


def teacher_states(model, seqs: list[list[int]], layers: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """[N, H, D] hidden states after each exit layer and [N, D] final normed states, all positions."""
    exits, finals = [], []
    for seq in tqdm(seqs, desc="teacher pass", unit="seq"):
        with torch.inference_mode():
            out = model.model(input_ids=torch.tensor([seq]), output_hidden_states=True)
        hs = out.hidden_states  # [0] = embeddings, [e] = after e layers, [-1] = after the final norm
        exits.append(torch.stack([hs[e][0] for e in layers], 1).float())
        finals.append(out.last_hidden_state[0].float())
    return torch.cat(exits), torch.cat(finals)


def frozen_teacher(model_dir: Path, seed: int, threads: int):  # noqa: ANN201 (transformers objects)
    """The tier's model in float32 with gradients off, and its tokenizer: the teacher of every head."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def training_questions(data: Path, n: int, seed: int) -> list[str]:
    """The ``n`` GSM8K training questions a head's corpus answers (sampled with ``seed``). One rule,
    so that the draft-head trainer's reference solutions leave out exactly these."""
    problems = gsm8k.load(data / "routellm" / "gsm8k" / "train.jsonl")
    return [p.question for p in random.Random(seed).sample(problems, n)]


def corpus_key(tier: str, model_sha256: str, new_tokens: int) -> dict:
    """What makes a cached answer reusable (both head trainers): the same weights asked for the
    same number of new tokens. Which questions a run asks is not part of it: a run reads the
    answers the cache has and generates the rest."""
    return {"tier": tier, "model": model_sha256, "new_tokens": new_tokens}


def teacher_corpus(
    model,  # noqa: ANN001
    tokenizer,  # noqa: ANN001
    data: Path,
    corpus: Path,
    key: dict,
    spec: HeadSpec,
    questions: list[str] | None = None,
) -> list[list[int]]:
    """The model's own greedy answers to ``questions`` (default: ``spec.prompts`` GSM8K training
    questions sampled with ``spec.seed``), kept in ``corpus`` per question under ``key``. Answering
    is the slow part (0.8 s a question on the small tier, 2.1 s on the medium one, batched, here),
    so a rerun generates only the questions the file lacks — a bigger corpus costs only its new
    answers — and the file is rewritten after every batch, so an interrupted run keeps what it
    generated. The file lists this run's questions first, in the order asked: ``calibrate`` reads
    the held-out head of that order back."""
    cached = json.loads(corpus.read_text()) if corpus.is_file() else {}
    answers: dict[str, list[int]] = cached.get("answers", {}) if cached.get("key") == key else {}
    if questions is None:
        questions = training_questions(data, spec.prompts, spec.seed)
    missing = [q for q in dict.fromkeys(questions) if q not in answers]
    corpus.parent.mkdir(parents=True, exist_ok=True)
    if missing:
        done = 0
        for seqs in generate_corpus(model, tokenizer, missing, spec):
            answers.update(zip(missing[done : done + len(seqs)], seqs))
            done += len(seqs)
            corpus.write_text(json.dumps({"key": key, "answers": answers}))
    ordered = {q: answers[q] for q in questions} | answers
    if list(ordered) != list(answers):  # the batches above wrote the asked order already
        corpus.write_text(json.dumps({"key": key, "answers": ordered}))
    return [answers[q] for q in questions]


def train(tier: str, model_dir: Path, model_sha256: str, data: Path, out: Path, spec: HeadSpec, command: str) -> dict:
    t0 = time.perf_counter()
    model, tokenizer = frozen_teacher(model_dir, spec.seed, spec.threads)
    key = corpus_key(tier, model_sha256, spec.new_tokens)
    seqs = teacher_corpus(model, tokenizer, data, out / "corpus.json", key, spec)
    gen_s = time.perf_counter() - t0

    layers = exit_layers(model.config.num_hidden_layers, spec.every)
    n_val = max(1, int(len(seqs) * spec.holdout))
    tr_x, tr_f = teacher_states(model, seqs[n_val:], layers)
    va_x, va_f = teacher_states(model, seqs[:n_val], layers)
    norm, lm_head = model.model.norm, model.lm_head
    heads = ExitHeads(layers, model.config.hidden_size, spec.rank)
    opt = torch.optim.AdamW(heads.parameters(), lr=spec.lr, weight_decay=0.0)
    steps = spec.epochs * ((len(tr_x) + spec.batch_positions - 1) // spec.batch_positions)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=steps, pct_start=0.1)
    bar = tqdm(total=steps, desc="fit heads (KL to final layer)", unit="step")
    for _ in range(spec.epochs):
        order = torch.randperm(len(tr_x))
        for s in range(0, len(order), spec.batch_positions):
            idx = order[s : s + spec.batch_positions]
            with torch.no_grad():  # the KL is taken over the tokens the teacher ranks in its top 32
                full = lm_head(tr_f[idx])  # anywhere in the batch: the rest carries ~no mass, and
                vocab = full.topk(32, -1).indices.unique()  # a 49k-wide student softmax ×7 heads
                teacher = F.log_softmax(full[:, vocab], -1)  # made a step 10× slower
            rows = lm_head.weight[vocab]
            loss = sum(
                F.kl_div(
                    F.log_softmax(heads.adapt(i, norm(tr_x[idx, i])) @ rows.T, -1),
                    teacher,
                    log_target=True,
                    reduction="batchmean",
                )
                for i in range(len(layers))
            ) / len(layers)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(kl=f"{float(loss):.3f}")
    bar.close()
    fit_gates(heads, tr_x, tr_f, norm, lm_head, spec)
    report = agreement(heads, va_x, va_f, norm, lm_head)
    points = operating_points(heads, va_x, va_f, norm, lm_head, model.config.num_hidden_layers, spec.budget)
    info = {
        **points,
        "tier": tier,
        "spec": asdict(spec),
        "command": command,
        "sequences": len(seqs),
        "heldout_sequences": n_val,
        "train_positions": len(tr_x),
        "heldout_positions": len(va_x),
        "heldout": report,
        "generate_s": round(gen_s, 1),
        "total_s": round(time.perf_counter() - t0, 1),
    }
    heads.save(out, model_sha256, info)
    return info


def fit_gates(heads: ExitHeads, x: torch.Tensor, f: torch.Tensor, norm, lm_head, spec: HeadSpec) -> None:  # noqa: ANN001
    """Logistic regression per head: does the (trained) head's top token equal the final layer's?"""
    with torch.no_grad():
        target = torch.cat([lm_head(f[s : s + 2048]).argmax(-1) for s in range(0, len(f), 2048)])
        normed = [norm(x[:, i]) for i in range(len(heads.layers))]
        labels = [
            torch.cat(
                [
                    (heads.logits(i, x[s : s + 2048, i], norm, lm_head).argmax(-1) == target[s : s + 2048])
                    for s in range(0, len(x), 2048)
                ]
            ).float()
            for i in range(len(heads.layers))
        ]
    opt = torch.optim.Adam(heads.gate.parameters(), lr=1e-2)
    for _ in tqdm(range(300), desc="fit exit gates", unit="step"):
        loss = sum(
            F.binary_cross_entropy_with_logits(heads.gate[i](normed[i])[:, 0], labels[i])
            for i in range(len(heads.layers))
        )
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def agreement(heads: ExitHeads, x: torch.Tensor, f: torch.Tensor, norm, lm_head) -> dict:  # noqa: ANN001
    """Per exit layer, on held-out positions: top-1 agreement with the final layer, with and without
    the trained adapter (the plain logit lens), and the mean KL."""
    target = lm_head(f).argmax(-1)
    teacher = F.log_softmax(lm_head(f), -1)
    out = {}
    for i, layer in enumerate(heads.layers):
        trained = heads.logits(i, x[:, i], norm, lm_head)
        lens = lm_head(norm(x[:, i])).float()
        kl = F.kl_div(F.log_softmax(trained, -1), teacher, log_target=True, reduction="batchmean")
        out[str(layer)] = {
            "agree": round(float((trained.argmax(-1) == target).float().mean()), 4),
            "agree_logit_lens": round(float((lens.argmax(-1) == target).float().mean()), 4),
            "kl": round(float(kl), 4),
            "gate_mean": round(float(heads.confidence(i, norm(x[:, i])).mean()), 4),
        }
    return out


@torch.no_grad()
def operating_points(
    heads: ExitHeads,
    x: torch.Tensor,
    f: torch.Tensor,
    norm,
    lm_head,
    n_layers: int,  # noqa: ANN001
    budget: float,
    max_draft: int = 6,
) -> dict:
    """Choose, on held-out teacher-forced positions, (1) the early-exit gate threshold: the lowest
    on a grid whose tokens disagree with the final layer's top token at most ``budget`` of the
    time (the quality budget; lower thresholds exit earlier), and (2) the draft layer for
    self-speculation that maximises the expected speed-up under a simple cost model: a draft
    costs e/L of a full step, verification (L-e)/L, an agreement rate a gives
    (1 - a^(k+1)) / (1 - a) tokens per round (LayerSkip's accounting)."""
    target = lm_head(f).argmax(-1)
    n = len(f)
    conf, agree = [], []
    for i in range(len(heads.layers)):
        normed = norm(x[:, i])
        conf.append(heads.confidence(i, normed))
        agree.append(heads.logits(i, x[:, i], norm, lm_head).argmax(-1) == target)
    grid = [round(t, 3) for t in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99)]
    table = []
    for t in grid:
        exited = torch.zeros(n, dtype=torch.bool)
        wrong = torch.zeros(n, dtype=torch.bool)
        layers = torch.full((n,), float(n_layers))
        for i, layer in enumerate(heads.layers):
            here = ~exited & (conf[i] >= t)
            wrong |= here & ~agree[i]
            layers[here] = layer
            exited |= here
        table.append(
            {
                "threshold": t,
                "disagree": round(float(wrong.float().mean()), 4),
                "mean_layers": round(float(layers.mean()), 2),
            }
        )
    within = [row for row in table if row["disagree"] <= budget]
    threshold = min(within, key=lambda row: row["threshold"])["threshold"] if within else 1.0
    speedups = {}
    for i, layer in enumerate(heads.layers):
        a = float(agree[i].float().mean())
        tokens = (1 - a ** (max_draft + 1)) / (1 - a) if a < 1 else max_draft + 1
        speedups[layer] = round(tokens / ((max_draft * layer + n_layers - layer) / n_layers), 3)
    return {
        "early_exit_threshold": threshold,
        "quality_budget": budget,
        "threshold_table": table,
        "draft_layer": max(speedups, key=speedups.get),
        "draft_speedup_model": speedups,
    }


def calibrate(model_dir: Path, model_sha256: str, heads_dir: Path, budget: float, max_draft: int = 6) -> dict:
    """Recompute the operating points of trained heads (held-out part of their corpus) into heads.json."""
    from transformers import AutoModelForCausalLM

    info = json.loads((heads_dir / "heads.json").read_text())
    corpus = heads_dir / "corpus.json"
    if not corpus.is_file():
        raise FileNotFoundError(f"{corpus} is missing: calibration reads the corpus `ladder depth train` kept")
    # The training run's questions first, in the order it asked them (``teacher_corpus``): the
    # first ``heldout_sequences`` of them the heads never saw.
    seqs = list(json.loads(corpus.read_text())["answers"].values())
    heads = ExitHeads.load(heads_dir, model_sha256)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    n_val = (
        info["heldout_sequences"] if "heldout_sequences" in info else max(1, int(len(seqs) * info["spec"]["holdout"]))
    )
    va_x, va_f = teacher_states(model, seqs[:n_val], heads.layers)
    points = operating_points(
        heads, va_x, va_f, model.model.norm, model.lm_head, model.config.num_hidden_layers, budget, max_draft
    )
    info.update(points)
    (heads_dir / "heads.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
