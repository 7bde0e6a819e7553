"""Recurrent-depth worker: accuracy vs core iterations by difficulty, and adaptive exit vs fixed r.

    .venv/bin/python benchmarks/recurrent_depth.py [--checkpoint src/ladder/data/recurrent-arith] [--per-level 100]

All in one run, on held-out left-to-right arithmetic (seeds never used in training):
1. Fixed r in 1, 2, 4, 8, 16, 32: answer accuracy per difficulty level (1..12 operations).
2. Adaptive exit, max r = 32, with each exit rule (KL between successive output distributions;
   relative change of the latent state) at several thresholds: mean core iterations per generated
   token and accuracy. Each rule's threshold is chosen on a validation set (the loosest whose
   accuracy is within 1 point of fixed r = 32) and reported on a separate test set.
3. A depth cascade on one checkpoint: a cheap fixed r, climbing to the adaptive rung when the
   answer's mean log-prob is low (what configs/recurrent.yaml serves).
4. Tokens/s of single requests through the worker at each setting (this CPU, 2 threads).
Writes benchmarks/results/recurrent_depth.json and recurrent_depth.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ladder.offline.arithmetic import MAX_OPS, ArithItem, make_items
from ladder.types import Query
from ladder.workers.exits import ExitKind, ExitRule, make_exit
from ladder.workers.recurrent_worker import (
    CharTokenizer,
    DepthBudget,
    RecurrentWorker,
    load_checkpoint,
)

RESULTS = Path(__file__).parent / "results"
DEFAULT_CKPT = Path(__file__).parents[1] / "src" / "ladder" / "data" / "recurrent-arith"
FIXED_R = (1, 2, 4, 8, 16, 32)
MAX_R = 32
FLOORS = (-0.05, -0.1, -0.3, -0.7, -1.5)  # the depth cascade's confidence floors
# Both exit rules the worker offers, each swept over thresholds: KL(p_i || p_i-1) of successive
# output distributions (the paper's), and the relative change of the answer position's latent state.
THRESHOLDS = {ExitKind.KL: (3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4), ExitKind.LATENT: (1e-1, 5e-2, 2e-2, 1e-2, 5e-3, 2e-3)}
LEVELS = range(1, MAX_OPS + 1)


def run(model, tok: CharTokenizer, items: list[ArithItem], max_r: int, rule: ExitRule, batch: int = 200) -> dict:  # noqa: ANN001
    """Greedy answers for every item: per-level accuracy, mean iterations per generated token and
    per answer token, the histogram of the answer token's iterations, and per item (for the
    cascade; not written to JSON) whether it was right, its mean token log-prob (what the
    cascade's confidence rule reads) and its core iterations summed over its tokens."""
    correct, iters_all, iters_answer, mean_lp, item_iters = [], [], [], [], []
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
            mean_lp.append(float(out.logprobs[b, :n].mean()))
            item_iters.append(int(out.iterations[b, :n].sum()))
    by_level = {
        lvl: sum(c for c, it in zip(correct, items) if it.ops == lvl) / max(1, sum(1 for it in items if it.ops == lvl))
        for lvl in LEVELS
    }
    answer_by_level = {
        lvl: sum(n for n, it in zip(iters_answer, items) if it.ops == lvl)
        / max(1, sum(1 for it in items if it.ops == lvl))
        for lvl in LEVELS
    }
    return {
        "accuracy": sum(correct) / len(correct),
        "by_level": by_level,
        "answer_iters_by_level": answer_by_level,
        "iters_per_token": sum(iters_all) / len(iters_all),
        "iters_answer_token": sum(iters_answer) / len(iters_answer),
        "answer_iters_hist": [iters_answer.count(k) for k in range(max_r + 1)],
        "per_item": {"correct": correct, "mean_logprob": mean_lp, "iterations": item_iters},
    }


def depth_cascade(cheap: dict, expensive: dict, floor: float) -> dict:
    """Two rungs of one checkpoint: answer with the cheap budget, climb to the expensive one when
    the answer's mean token log-prob is below ``floor`` (the FixedPolicy rule configs/recurrent.yaml
    uses). Cost = core iterations summed over the item's tokens, both rungs when it climbed."""
    c, e = cheap["per_item"], expensive["per_item"]
    climb = [lp < floor for lp in c["mean_logprob"]]
    right = [ec if up else cc for up, cc, ec in zip(climb, c["correct"], e["correct"])]
    cost = [ci + (ei if up else 0) for up, ci, ei in zip(climb, c["iterations"], e["iterations"])]
    n = len(right)
    return {
        "floor": floor,
        "accuracy": sum(right) / n,
        "climbed": sum(climb) / n,
        "iterations_per_item": sum(cost) / n,
        "expensive_alone_iterations_per_item": sum(e["iterations"]) / n,
    }


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "per_item"}


def tokens_per_s(worker: RecurrentWorker, items: list[ArithItem], budget: DepthBudget) -> float:
    worker.budget = budget
    tokens, t0 = 0, time.perf_counter()
    for it in items:
        tokens += worker.generate_sync(Query.of(it.prompt, max_tokens=4)).completion_tokens
    return tokens / (time.perf_counter() - t0)


def plot(fixed: dict, adaptive: dict, chosen: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hx, lx) = plt.subplots(1, 3, figsize=(17, 4.5))
    cmap = plt.get_cmap("viridis")
    for lvl in LEVELS:
        ax.plot(
            FIXED_R,
            [fixed[r]["by_level"][lvl] for r in FIXED_R],
            marker="o",
            color=cmap((lvl - 1) / (MAX_OPS - 1)),
            label=f"{lvl} op{'s' if lvl > 1 else ''}",
        )
    ax.plot(FIXED_R, [fixed[r]["accuracy"] for r in FIXED_R], "r-", lw=2.5, label="fixed r, all levels")
    for kind, style in ((ExitKind.KL, "k*--"), (ExitKind.LATENT, "bs:")):
        sweep = adaptive[kind]
        ax.plot(
            [sweep[t]["iters_answer_token"] for t in THRESHOLDS[kind]],
            [sweep[t]["accuracy"] for t in THRESHOLDS[kind]],
            style,
            label=f"adaptive ({kind.value}), all levels",
        )
    ax.set_xscale("log", base=2), ax.set_xlabel("core iterations r (adaptive: mean for the answer token)")
    (
        ax.set_ylabel("answer accuracy"),
        ax.set_title("fixed r by difficulty; adaptive exit"),
        ax.legend(fontsize=7, ncol=2),
    )
    for kind, color in ((ExitKind.KL, "k"), (ExitKind.LATENT, "tab:blue")):
        hist = adaptive[kind][chosen[kind]]["answer_iters_hist"]
        hx.bar(
            [i + (0.2 if kind is ExitKind.LATENT else -0.2) for i in range(len(hist))],
            hist,
            width=0.4,
            color=color,
            label=f"{kind.value} < {chosen[kind]:g}",
        )
    hx.set_xlabel(f"iterations used by the answer token (max {MAX_R})"), hx.set_ylabel("items"), hx.legend()
    hx.set_title("adaptive depth histogram (test set, thresholds chosen on validation)", fontsize=10)
    for kind, color in ((ExitKind.KL, "k"), (ExitKind.LATENT, "tab:blue")):
        by = adaptive[kind][chosen[kind]]["answer_iters_by_level"]
        lx.bar(
            [lvl + (0.2 if kind is ExitKind.LATENT else -0.2) for lvl in LEVELS],
            [by[lvl] for lvl in LEVELS],
            width=0.4,
            color=color,
            label=f"{kind.value} < {chosen[kind]:g}",
        )
    lx.set_xlabel("operations in the item (difficulty)"), lx.set_ylabel("mean iterations of the answer token")
    lx.set_title("adaptive depth by difficulty"), lx.legend()
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
    val, test = (
        make_items(777_001, n, operators=ops),
        make_items(888_002, n, operators=ops),
    )  # training: seed 0, 10_000+
    never = make_exit(ExitKind.NEVER)
    fixed = {r: run(model, tok, test, r, never) for r in tqdm(FIXED_R, desc="fixed r")}
    for r in FIXED_R:
        print(
            f"fixed r={r:<3} acc {fixed[r]['accuracy']:.3f}  iters/token {fixed[r]['iters_per_token']:.2f}  by level "
            + " ".join(f"{fixed[r]['by_level'][lvl]:.2f}" for lvl in LEVELS),
            flush=True,
        )
    val_fixed = run(model, tok, val, MAX_R, never)["accuracy"]
    adaptive, validation, chosen = {}, {}, {}
    for kind, thresholds in THRESHOLDS.items():
        validation[kind] = {t: run(model, tok, val, MAX_R, make_exit(kind, t))["accuracy"] for t in thresholds}
        ok = [t for t in thresholds if validation[kind][t] >= val_fixed - 0.01]
        chosen[kind] = max(ok) if ok else min(thresholds)
        adaptive[kind] = {
            t: run(model, tok, test, MAX_R, make_exit(kind, t)) for t in tqdm(thresholds, desc=kind.value)
        }
        for t in thresholds:
            a = adaptive[kind][t]
            print(
                f"{kind.value}<{t:<7g} acc {a['accuracy']:.3f}  iters/token {a['iters_per_token']:.2f}  "
                f"answer token {a['iters_answer_token']:.2f}{'  ← chosen on validation' if t == chosen[kind] else ''}",
                flush=True,
            )
        by = adaptive[kind][chosen[kind]]["answer_iters_by_level"]
        print(
            f"  {kind.value}<{chosen[kind]:g}: answer-token iterations by level "
            + " ".join(f"{by[lvl]:.1f}" for lvl in LEVELS),
            flush=True,
        )
    best = max(chosen, key=lambda k: -adaptive[k][chosen[k]]["iters_per_token"])  # the cheaper chosen rule
    expensive = adaptive[best][chosen[best]]
    cascades = {
        f"r={r} → {best.value}<{chosen[best]:g}": [depth_cascade(fixed[r], expensive, f) for f in FLOORS]
        for r in (1, 2, 4)
    }
    print(
        f"\ndepth cascade (cheap fixed r, climb to adaptive max {MAX_R} when mean log-prob < floor); "
        f"adaptive alone: acc {expensive['accuracy']:.3f}, {cascades[next(iter(cascades))][0]['expensive_alone_iterations_per_item']:.1f} iterations/item"
    )
    for name, rows in cascades.items():
        for row in rows:
            print(
                f"  {name:<22} floor {row['floor']:<6g} acc {row['accuracy']:.3f}  climbed {row['climbed']:.2f}  "
                f"iterations/item {row['iterations_per_item']:.1f}"
            )
    worker = RecurrentWorker("recurrent", args.checkpoint).load()
    speed_items = test[:: max(1, len(test) // args.speed_items)][: args.speed_items]  # every level
    speed = {f"fixed r={r}": tokens_per_s(worker, speed_items, DepthBudget(r, ExitKind.NEVER, None)) for r in FIXED_R}
    speed.update(
        {
            f"{k.value}<{t:g} (max {MAX_R})": tokens_per_s(worker, speed_items, DepthBudget(MAX_R, k, t))
            for k, t in chosen.items()
        }
    )
    f32 = fixed[MAX_R]
    summary = {"fixed32_accuracy": f32["accuracy"], "fixed32_iters_per_token": f32["iters_per_token"]}
    for kind, t in chosen.items():
        d = adaptive[kind][t]
        saving = 1 - d["iters_per_token"] / f32["iters_per_token"]
        summary[kind.value] = {
            "threshold": t,
            "chosen_on": "validation set, seed 777001",
            "accuracy": d["accuracy"],
            "accuracy_delta_points": 100 * (d["accuracy"] - f32["accuracy"]),
            "iters_per_token": d["iters_per_token"],
            "iterations_saved_vs_fixed32": saving,
            "tokens_per_s_ratio_vs_fixed32": speed[f"{kind.value}<{t:g} (max {MAX_R})"] / speed[f"fixed r={MAX_R}"],
            # 1e-9: "within 1 point" includes exactly 1 point (12 of 1,200 items), whatever the float rounding
            "target_met": saving >= 0.40 and d["accuracy"] >= f32["accuracy"] - 0.01 - 1e-9,
        }
    print(f"\n{'setting':<24}{'tok/s':>8}")
    for k, v in speed.items():
        print(f"{k:<24}{v:>8.1f}")
    print(json.dumps(summary, indent=1))
    RESULTS.mkdir(exist_ok=True)
    out = {
        "checkpoint": str(args.checkpoint.name),
        "checkpoint_sha256": meta.get("sha256"),
        "items_per_level": args.per_level,
        "fixed": {str(r): _public(fixed[r]) for r in FIXED_R},
        "adaptive_max32": {k.value: {f"{t:g}": _public(v) for t, v in sweep.items()} for k, sweep in adaptive.items()},
        "depth_cascade": cascades,
        "validation": {
            "fixed32": val_fixed,
            **{k.value: {f"{t:g}": v for t, v in accs.items()} for k, accs in validation.items()},
        },
        "tokens_per_s": speed,
        "summary": summary,
    }
    (RESULTS / "recurrent_depth.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(fixed, adaptive, chosen, RESULTS / "recurrent_depth.png")
    print(f"wrote {RESULTS / 'recurrent_depth.json'} and recurrent_depth.png")


if __name__ == "__main__":
    main()
