"""Recurrent-depth worker: accuracy vs core iterations by difficulty, and adaptive exit vs fixed r.

    .venv/bin/python benchmarks/recurrent_depth.py [--checkpoint src/ladder/data/recurrent-arith] [--per-level 100]

All in one run, on held-out left-to-right arithmetic (seeds never used in training):
1. Fixed r in 1, 2, 4, 8, 16, 32: answer accuracy per difficulty level (1..12 operations).
2. Adaptive exit (KL between successive output distributions, max r = 32) at several thresholds:
   mean core iterations per generated token and accuracy. The default threshold is chosen on a
   validation set (the largest whose accuracy is within 1 point of fixed r = 32) and reported on
   a separate test set.
3. Tokens/s of single requests through the worker at each setting (this CPU, 2 threads).
Writes benchmarks/results/recurrent_depth.json and recurrent_depth.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ladder.offline.arithmetic import MAX_OPS, ArithItem, make_items
from ladder.types import Query
from ladder.workers.exits import ExitKind, ExitRule, make_exit
from ladder.workers.recurrent_worker import CharTokenizer, DepthBudget, RecurrentWorker, load_checkpoint

RESULTS = Path(__file__).parent / "results"
DEFAULT_CKPT = Path(__file__).parents[1] / "src" / "ladder" / "data" / "recurrent-arith"
FIXED_R = (1, 2, 4, 8, 16, 32)
THRESHOLDS = (3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
LEVELS = range(1, MAX_OPS + 1)


def run(model, tok: CharTokenizer, items: list[ArithItem], max_r: int, rule: ExitRule, batch: int = 200) -> dict:  # noqa: ANN001
    """Greedy answers for every item: per-level accuracy, mean iterations per generated token and
    per answer token, and the histogram of the answer token's iterations."""
    correct, iters_all, iters_answer = [], [], []
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        prompts = torch.tensor([tok.encode_prompt(it.prompt) for it in chunk])
        out = model.generate(prompts, 2, max_r, rule, generator=torch.Generator().manual_seed(0))
        for b, it in enumerate(chunk):
            toks = out.tokens[b].tolist()
            n = toks.index(1) + 1 if 1 in toks else len(toks)
            correct.append(tok.vocab[toks[0]] == it.answer)
            iters_all.extend(out.iterations[b, :n].tolist())
            iters_answer.append(int(out.iterations[b, 0]))
    by_level = {lvl: sum(c for c, it in zip(correct, items) if it.ops == lvl) /
                max(1, sum(1 for it in items if it.ops == lvl)) for lvl in LEVELS}  # fmt: skip
    return {"accuracy": sum(correct) / len(correct), "by_level": by_level,
            "iters_per_token": sum(iters_all) / len(iters_all),
            "iters_answer_token": sum(iters_answer) / len(iters_answer),
            "answer_iters_hist": [iters_answer.count(k) for k in range(max_r + 1)]}  # fmt: skip


def tokens_per_s(worker: RecurrentWorker, items: list[ArithItem], budget: DepthBudget) -> float:
    worker.budget = budget
    tokens, t0 = 0, time.perf_counter()
    for it in items:
        tokens += worker.generate_sync(Query.of(it.prompt, max_tokens=4)).completion_tokens
    return tokens / (time.perf_counter() - t0)


def plot(fixed: dict, adaptive: dict, default: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hx) = plt.subplots(1, 2, figsize=(12, 4.5))
    cmap = plt.get_cmap("viridis")
    for lvl in LEVELS:
        ax.plot(FIXED_R, [fixed[r]["by_level"][lvl] for r in FIXED_R], marker="o", color=cmap((lvl - 1) / (MAX_OPS - 1)),
                label=f"{lvl} op{'s' if lvl > 1 else ''}")  # fmt: skip
    ax.plot([adaptive[t]["iters_answer_token"] for t in THRESHOLDS], [adaptive[t]["accuracy"] for t in THRESHOLDS],
            "k*--", label="adaptive (KL), all levels")  # fmt: skip
    ax.set_xscale("log", base=2), ax.set_xlabel("core iterations r (adaptive: mean for the answer token)")
    ax.set_ylabel("answer accuracy"), ax.set_title("fixed r by difficulty; adaptive exit"), ax.legend(fontsize=7)
    hist = adaptive[default]["answer_iters_hist"]
    hx.bar(range(len(hist)), hist)
    hx.set_xlabel(f"iterations used by the answer token (KL exit ≤ {default:g}, max 32)"), hx.set_ylabel("items")
    hx.set_title("adaptive depth histogram (test set)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CKPT)
    ap.add_argument("--per-level", type=int, default=100)
    ap.add_argument("--speed-items", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, meta = load_checkpoint(args.checkpoint)
    tok = CharTokenizer(model.cfg.vocab, model.cfg.prompt_len)
    n = args.per_level * len(LEVELS)
    ops = meta.get("operators", "+-*")  # the operator set the checkpoint was trained on
    val, test = make_items(777_001, n, operators=ops), make_items(888_002, n, operators=ops)  # training: seed 0, 10_000+
    never = make_exit(ExitKind.NEVER)
    fixed = {r: run(model, tok, test, r, never) for r in FIXED_R}
    for r in FIXED_R:
        print(f"fixed r={r:<3} acc {fixed[r]['accuracy']:.3f}  by level "
              + " ".join(f"{fixed[r]['by_level'][lvl]:.2f}" for lvl in LEVELS), flush=True)  # fmt: skip
    val_fixed = run(model, tok, val, 32, never)["accuracy"]
    val_adaptive = {t: run(model, tok, val, 32, make_exit(ExitKind.KL, t))["accuracy"] for t in THRESHOLDS}
    ok = [t for t in THRESHOLDS if val_adaptive[t] >= val_fixed - 0.01]
    default = max(ok) if ok else min(THRESHOLDS)
    adaptive = {t: run(model, tok, test, 32, make_exit(ExitKind.KL, t)) for t in THRESHOLDS}
    for t in THRESHOLDS:
        a = adaptive[t]
        print(f"KL<{t:<7g} acc {a['accuracy']:.3f}  iters/token {a['iters_per_token']:.2f}  "
              f"answer token {a['iters_answer_token']:.2f}", flush=True)  # fmt: skip
    worker = RecurrentWorker("recurrent", args.checkpoint).load()
    speed_items = test[: args.speed_items]
    speed = {f"fixed r={r}": tokens_per_s(worker, speed_items, DepthBudget(r, ExitKind.NEVER, None)) for r in FIXED_R}
    speed.update({f"KL<{t:g} (max 32)": tokens_per_s(worker, speed_items, DepthBudget(32, ExitKind.KL, t))
                  for t in THRESHOLDS})  # fmt: skip
    d, f32 = adaptive[default], fixed[32]
    saving = 1 - d["iters_per_token"] / 32
    summary = {"default_threshold": default, "chosen_on": "validation set, seed 777001",
               "fixed32_accuracy": f32["accuracy"], "adaptive_accuracy": d["accuracy"],
               "accuracy_delta_points": 100 * (d["accuracy"] - f32["accuracy"]),
               "iterations_saved_vs_fixed32": saving,
               "tokens_per_s_ratio_vs_fixed32": speed[f"KL<{default:g} (max 32)"] / speed["fixed r=32"],
               "target_met": saving >= 0.40 and d["accuracy"] >= f32["accuracy"] - 0.01}  # fmt: skip
    print(f"\n{'setting':<20}{'tok/s':>8}")
    for k, v in speed.items():
        print(f"{k:<20}{v:>8.1f}")
    print(json.dumps(summary, indent=1))
    RESULTS.mkdir(exist_ok=True)
    out = {"checkpoint": str(args.checkpoint.name), "checkpoint_sha256": meta.get("sha256"),
           "items_per_level": args.per_level, "fixed": {str(r): fixed[r] for r in FIXED_R},
           "adaptive_kl_max32": {f"{t:g}": adaptive[t] for t in THRESHOLDS},
           "validation": {"fixed32": val_fixed, **{f"{t:g}": val_adaptive[t] for t in THRESHOLDS}},
           "tokens_per_s": speed, "summary": summary}  # fmt: skip
    (RESULTS / "recurrent_depth.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(fixed, adaptive, default, RESULTS / "recurrent_depth.png")
    print(f"wrote {RESULTS / 'recurrent_depth.json'} and recurrent_depth.png")


if __name__ == "__main__":
    main()
