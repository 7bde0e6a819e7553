"""Adaptive depth vs full depth, side by side in one run (issue 5).

For each tier and each GSM8K test question (greedy, up to --new-tokens new tokens) the same
process runs, one after the other on the same prompt: full depth (the transformers forward pass
the worker serves by default), self-speculation (lossless: drafts from exit heads, prompt lookup,
the learned draft head — spec:head, spec:lookup+head — when the tier has one) and confident early
exit at several gate thresholds (lossy); --modes picks a subset. Every mode runs once on a short
prompt first (warm-up, not timed). Reported per mode: generated tokens/s and its ratio to full depth,
decoder-layer passes per generated token (sequential layer invocations: on a memory-bound decode
step, reading a layer's weights once serves every position it processes), mean / p50 / p95 depth
per token (see workers/adaptive_depth.py for what depth means in each mode), identical outputs (share of prompts whose whole output equals full
depth), token match rate (position by position), GSM8K final-answer accuracy vs the gold answers,
and for speculation the acceptance rate and tokens per verification. The default early-exit
threshold is the fastest one within 1 point of full-depth accuracy. Writes
benchmarks/results/adaptive_depth.json and adaptive_depth_<tier>.png (exit-depth histograms).

    .venv/bin/python benchmarks/adaptive_depth.py --data ../shared/data [--tiers small,medium]
        [--prompts 100 | --prompts 25,10] [--new-tokens 128] [--thresholds 0.6,0.8,0.9,0.95] [--dtype float32]
        [--modes spec:lookup,spec:head,spec:lookup+head[@T,...]] [--device cuda] [--out FILE.json]

Per domain (issue 34): the head drafter on math, code and chat prompts, its chain threshold chosen
on prompts other than the reported ones (``run_domains``), written to adaptive_depth_domains.json:

    .venv/bin/python benchmarks/adaptive_depth.py --domains gsm8k,code,chat [--select 4]
        [--prompts-per-domain 8] [--head-thresholds 0.2,0.4,0.6] [--head-widths 1,2] [--tiers small]

A head mode may name a draft-tree width after its threshold, ``spec:lookup+head@0.4/w2`` (the
head expands its two best nodes per depth, two children each); with ``--head-widths`` the selection
sweeps thresholds × widths, and when a tree wins, the fastest chain is reported beside it per domain.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from ladder.offline.draft_corpus import HELD_OUT_PER_DOMAIN
from ladder.workers.layerwise import KERNEL_RULES, set_kernel_rule

RESULTS = Path(__file__).parent / "results"
# Full depth on Ladder's layer runner with the kernels it tuned for this machine (one row included):
# a second baseline beside the served forward pass ("full"); the faster of the two is the reference
FULL_TUNED = "full:tuned"


class Bench:
    """One tier loaded for measuring: its transformers worker, layer runner, exit heads, draft head."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        from ladder.cluster.compose import materialize, weights_id
        from ladder.cluster.settings import load_config
        from ladder.workers.draft_head import DraftHead, bundled_draft_head
        from ladder.workers.exit_heads import ExitHeads, bundled_heads
        from ladder.workers.layerwise import LayerwiseModel
        from ladder.workers.transformer import DeviceConfig, TransformersWorker, _eos_ids

        cfg = load_config()
        tier = cfg.tier(name)
        dev = DeviceConfig(device=args.device, dtype=args.dtype, threads=args.threads)
        self.name, self.args = name, args
        self.worker = TransformersWorker(name, materialize(cfg, tier), dev).load()
        self.lw = LayerwiseModel(self.worker.model)
        dtype = getattr(torch, args.dtype)
        self.heads = ExitHeads.load(bundled_heads(name), weights_id(tier)).to(device=args.device, dtype=dtype)
        head_dir = bundled_draft_head(name)
        self.draft = (
            DraftHead.load(head_dir, weights_id(tier)).to(device=args.device, dtype=dtype)
            if (head_dir / "draft.safetensors").is_file()
            else None
        )
        self.info = json.loads((bundled_heads(name) / "heads.json").read_text())
        self.draft_layer = args.draft_layer or self.info.get("draft_layer") or self.heads.layers[1]
        self.eos = _eos_ids(self.worker.model, self.worker.tokenizer)
        self.lw.verify_costs(max(args.max_draft, args.head_max_draft) + 1)  # tunes the kernels (FULL_TUNED)
        self.drafters = {
            "spec:exit_head": (self.heads, False),
            "spec:lookup": (None, True),
            "spec:lookup+exit_head": (self.heads, True),
        }
        self.head_drafters = {"spec:head": False, "spec:lookup+head": True} if self.draft is not None else {}

    def modes(self, wanted: list[str] | None) -> list[str]:
        modes = ["full", *self.drafters, *self.head_drafters] + [f"early_exit@{t}" for t in self.args.thresholds]
        if wanted:  # a head drafter may carry its own chain threshold: spec:lookup+head@0.25
            swept = [m for m in wanted if "@" in m and m.partition("@")[0] in self.head_drafters]
            modes = [m for m in modes if m == "full" or m in wanted] + swept
        return modes

    def measure(self, prompts: list[tuple[str, float | None]], modes: list[str], desc: str) -> dict:
        """Every mode on every (prompt, GSM8K gold or None), one after the other per prompt. The
        table rows, speculation statistics and drafter choices."""
        from ladder.offline import gsm8k
        from ladder.types import Query
        from ladder.workers.adaptive_depth import (
            DraftChoice,
            SpecStats,
            early_exit,
            full_depth,
            head_speculative,
            self_speculative,
        )

        args, lw, worker = self.args, self.lw, self.worker

        def greedy(logits: torch.Tensor) -> tuple[int, float]:
            lp = torch.log_softmax(logits.float(), -1)
            t = int(lp.argmax())
            return t, float(lp[t])

        def timed(steps, limit: int = args.new_tokens) -> tuple[list[int], list[int], float, int]:  # noqa: ANN001
            tokens, depths = [], []
            calls0 = lw.layer_calls
            t0 = time.perf_counter()
            for token, _, depth in steps:
                if token in self.eos:
                    break
                tokens.append(token)
                depths.append(depth)
                if len(tokens) == limit:
                    break
            steps.close()
            seconds = time.perf_counter() - t0
            calls = (
                lw.layer_calls - calls0 if lw.layer_calls > calls0 else len(tokens) * lw.n_layers
            )  # HF path: L per token
            return tokens, depths, seconds, calls

        rows = {
            m: {"tokens": 0, "seconds": 0.0, "calls": 0, "depths": [], "identical": 0, "match": [], "correct": 0}
            for m in modes
        }
        drafters, head_drafters = self.drafters, self.head_drafters
        stats = {m: SpecStats() for m in modes if m.partition("@")[0] in {**drafters, **head_drafters}}
        choices = {m: DraftChoice() for m in modes if m.partition("@")[0] in head_drafters}

        def run_mode(m: str, ids: list[int], max_len: int, st: dict):  # noqa: ANN202
            if m == "full":
                return worker._full_depth(ids, greedy)
            if m == FULL_TUNED:
                return full_depth(lw, ids, max_len, greedy)
            if m in drafters:
                h, lookup = drafters[m]
                return self_speculative(
                    lw,
                    h,
                    ids,
                    max_len,
                    greedy,
                    self.draft_layer,
                    args.max_draft,
                    args.draft_threshold,
                    st.get(m),
                    lookup,
                )
            base, _, setting = m.partition("@")
            threshold, _, width = setting.partition("/w")
            if base in head_drafters:
                return head_speculative(
                    lw,
                    self.draft,
                    ids,
                    max_len,
                    greedy,
                    args.head_max_draft,
                    float(threshold) if threshold else args.head_threshold,
                    st.get(m),
                    head_drafters[base],
                    choices.get(m) if st else None,
                    int(width) if width else 1,
                )
            return early_exit(lw, self.heads, ids, max_len, greedy, float(m.split("@")[1]))

        with torch.inference_mode():  # warm-up (kernels, caches, allocator), not timed
            ids = worker.encode(Query.of(prompts[0][0], max_tokens=16))
            for m in modes:
                timed(run_mode(m, ids, len(ids) + 40, {}), limit=16)
        for text, gold in tqdm(prompts, desc=desc, unit="prompt"):
            ids = worker.encode(Query.of(text, max_tokens=args.new_tokens))
            max_len = len(ids) + args.new_tokens + 1
            outputs = {}
            with torch.inference_mode():
                for m in modes:
                    outputs[m] = timed(run_mode(m, ids, max_len, stats))
            ref = outputs["full"][0]
            for m, (tokens, depths, seconds, calls) in outputs.items():
                r = rows[m]
                r["tokens"] += len(tokens)
                r["seconds"] += seconds
                r["calls"] += calls
                r["depths"] += depths
                r["identical"] += tokens == ref
                n = max(len(tokens), len(ref))
                r["match"].append(sum(a == b for a, b in zip(tokens, ref)) / n if n else 1.0)
                if gold is not None:
                    r["correct"] += gsm8k.correct(worker.tokenizer.decode(tokens, skip_special_tokens=True), gold)
        # speed-ups are over the fastest full-depth decode measured (the served forward pass, or
        # Ladder's runner on the kernels it tuned), so a kernel gain is not credited to speculation
        full_tps = max(r["tokens"] / r["seconds"] for m, r in rows.items() if m in ("full", FULL_TUNED))
        table = []
        for m, r in rows.items():
            d = np.array(r["depths"])
            tps = r["tokens"] / r["seconds"]
            table.append(
                {
                    "mode": m,
                    "tokens_per_s": round(tps, 2),
                    "speedup": round(tps / full_tps, 3),
                    "layer_passes_per_token": round(r["calls"] / r["tokens"], 2),
                    "mean_depth": round(float(d.mean()), 2),
                    "p50_layers": float(np.percentile(d, 50)),
                    "p95_layers": float(np.percentile(d, 95)),
                    "identical_outputs": r["identical"] / len(prompts),
                    "token_match": round(float(np.mean(r["match"])), 4),
                    "accuracy": r["correct"] / len(prompts) if prompts[0][1] is not None else None,
                    "tokens": r["tokens"],
                }
            )
        return {
            "rows": table,
            "depths": {m: rows[m]["depths"] for m in modes if m not in ("full", FULL_TUNED)},
            "stats": stats,
            "choices": choices,
        }


def speculation(stats: dict) -> dict:
    return {
        m: {
            "acceptance": round(s.acceptance, 4),
            "drafted": s.drafted,
            "accepted": s.accepted,
            "verifications": s.verifications,
            "branch_rounds": s.branch_rounds,
            "tokens_per_verification": round((s.accepted + s.verifications) / max(1, s.verifications), 3),
        }
        for m, s in stats.items()
    }


def run_tier(name: str, n_prompts: int, args: argparse.Namespace) -> dict:
    """The GSM8K run (no --domains): every mode on the first ``n_prompts`` test questions."""
    from ladder.offline import gsm8k

    bench = Bench(name, args)
    problems = gsm8k.load(Path(args.data) / "routellm" / "gsm8k" / "test.jsonl", limit=n_prompts)
    modes = bench.modes(args.modes)
    got = bench.measure([(p.question, p.gold) for p in problems], modes, f"{name}: prompts")
    table = got["rows"]
    full_acc = next(r for r in table if r["mode"] == "full")["accuracy"]
    default = choose_default(table, full_acc)
    plot(name, bench.lw.n_layers, got["depths"], Path(args.out).with_name(f"{Path(args.out).stem}_{name}.png"))
    return {
        "tier": name,
        "layers": bench.lw.n_layers,
        "exit_layers": list(bench.heads.layers),
        "draft_layer": bench.draft_layer,
        "max_draft": args.max_draft,
        "draft_threshold": args.draft_threshold,
        "prompts": len(problems),
        "head_max_draft": args.head_max_draft,
        "head_threshold": args.head_threshold,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "draft_head": bench.draft.info.get("heldout") if bench.draft is not None else None,
        "drafter_choice": {
            m: {"lookup_rounds": c.lookup_rounds, "head_rounds": c.head_rounds} for m, c in got["choices"].items()
        },
        "new_tokens": args.new_tokens,
        "dtype": args.dtype,
        "rows": table,
        "default_early_exit": default,
        "calibrated_threshold": bench.info.get("early_exit_threshold"),
        "speculation": speculation(got["stats"]),
    }


def domain_prompts(domain: str, args: argparse.Namespace, limit: int, skip: int) -> tuple[list, list[str], list]:
    """(prompts as (text, gold or None), their ids, rejected rows) of a domain: ``gsm8k`` (test
    questions), ``code`` (HumanEval, as ``ladder collect humaneval`` asks it), ``chat`` (the
    project's own everyday prompts, benchmarks/prompts/chat.jsonl) or a prompts file (rows as
    ``ladder collect`` takes them; a bad row is skipped and named by its line). The same hash
    order as every dataset (``offline.datasets.subset``): the first ``skip`` are left out."""
    from ladder.offline.datasets import load_dataset

    name = {"code": "humaneval", "chat": str(CHAT_PROMPTS)}.get(domain, domain)
    ds = load_dataset(name, Path(args.data), limit=limit, skip=skip)

    def gold(item) -> float | None:  # noqa: ANN001 — GSM8K's final number, graded as gsm8k.correct does
        return float(item.gold.replace(",", "")) if domain == "gsm8k" else None

    return [(it.prompt, gold(it)) for it in ds.items], [it.id for it in ds.items], list(ds.rejected)


CHAT_PROMPTS = Path(__file__).parent / "prompts" / "chat.jsonl"


def run_domains(name: str, args: argparse.Namespace) -> dict:
    """Per domain, on prompts no choice saw: the head drafter's chain threshold is chosen once, on
    the first ``--select`` prompts of every domain (the fastest of ``--head-thresholds``: every one
    is lossless), and reported with full depth on the next ``--prompts`` of each domain."""
    bench = Bench(name, args)
    if bench.draft is None:
        raise SystemExit(f"tier {name} has no draft head (ladder depth train --drafter head)")
    base = args.domain_mode
    swept = [f"{base}@{t}" + (f"/w{w}" if w > 1 else "") for w in args.head_widths for t in args.head_thresholds]
    selection, selection_ids = [], {}
    for d in args.domains:
        prompts, ids, rejected = domain_prompts(d, args, args.select, 0)
        for line, why in rejected:
            print(f"{d}: line {line} skipped: {why}")
        selection += prompts
        selection_ids[d] = ids
    chosen = bench.measure(selection, ["full", FULL_TUNED, *swept], f"{name}: choosing the threshold")
    by_speed = sorted(
        (r for r in chosen["rows"] if r["mode"] in swept), key=lambda r: (r["identical_outputs"], r["speedup"])
    )
    mode = by_speed[-1]["mode"]
    # the fastest chain (width 1) too, reported beside a chosen tree: what the tree adds
    chains = [r["mode"] for r in by_speed if "/w" not in r["mode"]]
    chain = chains[-1] if "/w" in mode and chains else None
    out = {
        "tier": name,
        "mode": mode,
        "chain": chain,
        "selection": {"prompt_ids": selection_ids, "rows": chosen["rows"]},
        "domains": {},
    }
    for d in args.domains:
        prompts, ids, _ = domain_prompts(d, args, args.prompts_per_domain, args.select)
        got = bench.measure(prompts, ["full", FULL_TUNED, mode, *([chain] if chain else [])], f"{name}: {d}")
        rows, spec = {r["mode"]: r for r in got["rows"]}, speculation(got["stats"])
        entry = {
            "prompt_ids": ids,
            "speedup": rows[mode]["speedup"],
            "acceptance": spec[mode]["acceptance"],  # per verified node: a tree's leaves count too
            "tokens_per_verification": spec[mode]["tokens_per_verification"],
            "branch_rounds": spec[mode]["branch_rounds"],
            "identical_outputs": rows[mode]["identical_outputs"],
            "tokens_per_s": rows[mode]["tokens_per_s"],
            "full_tokens_per_s": max(rows["full"]["tokens_per_s"], rows[FULL_TUNED]["tokens_per_s"]),
            "full_depth_tokens_per_s": {m: rows[m]["tokens_per_s"] for m in ("full", FULL_TUNED)},
        }
        if chain:
            entry["chain"] = {
                "speedup": rows[chain]["speedup"],
                "tokens_per_verification": spec[chain]["tokens_per_verification"],
                "identical_outputs": rows[chain]["identical_outputs"],
            }
        out["domains"][d] = entry
    return out


def choose_default(table: list[dict], full_acc: float) -> str | None:
    """The fastest early-exit point within 1 point of full-depth GSM8K accuracy — None when full
    depth itself scores 0 (the rule would then pick the fastest point, whatever its quality)."""
    if full_acc <= 0:
        return None
    ok = [r for r in table if r["mode"].startswith("early_exit") and r["accuracy"] >= full_acc - 0.01]
    return max(ok, key=lambda r: r["speedup"])["mode"] if ok else None


def plot(name: str, n_layers: int, depths: dict[str, list[int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(depths), figsize=(3.2 * len(depths), 3), sharey=True)
    bins = np.arange(-0.5, n_layers + 1.5)  # depth 0 = an accepted prompt-lookup draft
    for ax, (mode, d) in zip(np.atleast_1d(axes), depths.items()):
        ax.hist(d, bins=bins, weights=np.ones(len(d)) / max(1, len(d)))
        ax.set_title(f"{mode}\nmean {np.mean(d):.1f} / {n_layers}", fontsize=9)
        ax.set_xlabel("layers used by a token")
    np.atleast_1d(axes)[0].set_ylabel("share of tokens")
    fig.suptitle(f"{name} tier: exit depth per generated token")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--tiers", default="small,medium")
    ap.add_argument("--prompts", default="100", help="per tier, comma-separated (one value: every tier)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--thresholds", type=lambda s: [float(x) for x in s.split(",")], default=[0.6, 0.8, 0.9, 0.95])
    ap.add_argument("--draft-layer", type=int, default=None, help="default: the heads file's choice")
    ap.add_argument("--max-draft", type=int, default=6)
    ap.add_argument("--draft-threshold", type=float, default=0.3)
    ap.add_argument("--head-max-draft", type=int, default=6, help="draft head: longest chain per verification")
    ap.add_argument(
        "--head-threshold",
        type=float,
        default=0.4,  # configs/adaptive.yaml's draft_threshold
        help="draft head: stop a chain when the product of its draft probabilities falls below this",
    )
    ap.add_argument(
        "--modes",
        type=lambda s: s.split(","),
        default=None,
        help="comma-separated subset, e.g. spec:lookup,spec:head,spec:lookup+head (full always runs); "
        "a head drafter with @T uses chain threshold T (a sweep: spec:lookup+head@0.1,spec:lookup+head@0.25), "
        "@T/wN a draft tree of width N",
    )
    ap.add_argument(
        "--domains",
        type=lambda s: s.split(","),
        default=None,
        help="per domain instead of GSM8K's every mode: gsm8k, code, chat or a prompts .jsonl (see run_domains)",
    )
    ap.add_argument("--select", type=int, default=4, help="--domains: prompts per domain that choose the threshold")
    ap.add_argument("--prompts-per-domain", type=int, default=8, help="--domains: held-out prompts reported per domain")
    ap.add_argument("--head-thresholds", type=lambda s: [float(x) for x in s.split(",")], default=[0.2, 0.4, 0.6])
    ap.add_argument(
        "--head-widths",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1],
        help="--domains: draft-tree widths swept with the thresholds (1: a chain; w: the head's w best tokens per depth)",
    )
    ap.add_argument("--domain-mode", default="spec:lookup+head", help="--domains: the head drafter measured")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--kernel-rule",
        default="tuned",
        choices=KERNEL_RULES,
        help="how passes over 2..8 positions multiply (benchmarks/verify_cost.py); tuned is what Ladder runs",
    )
    ap.add_argument("--out", default=None, help="default: results/adaptive_depth.json (_domains.json with --domains)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    set_kernel_rule(args.kernel_rule)
    args.out = args.out or str(RESULTS / ("adaptive_depth_domains.json" if args.domains else "adaptive_depth.json"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tiers = args.tiers.split(",")
    if args.domains and "code" in args.domains and args.select + args.prompts_per_domain > HELD_OUT_PER_DOMAIN:
        # the draft heads' mixed corpus answers HumanEval problems after the first N of the hash order
        ap.exit(
            2,
            f"--select + --prompts-per-domain must be at most {HELD_OUT_PER_DOMAIN} with code: the "
            "draft heads are trained on the HumanEval problems after those (offline/draft_corpus)\n",
        )
    if args.domains:
        return report_domains([run_domains(t, args) for t in tiers], args)
    counts = [int(x) for x in args.prompts.split(",")]
    counts = counts * len(tiers) if len(counts) == 1 else counts
    results = [run_tier(t, n, args) for t, n in zip(tiers, counts)]
    Path(args.out).write_text(
        json.dumps({"command": "benchmarks/adaptive_depth.py", "args": vars(args), "tiers": results}, indent=2) + "\n"
    )
    for res in results:
        print(
            f"\n{res['tier']} ({res['prompts']} prompts x {res['new_tokens']} new tokens, {res['dtype']}, "
            f"{res['layers']} layers, draft layer {res['draft_layer']})"
        )
        print(
            f"{'mode':<22}{'tok/s':>7}{'x full':>8}{'passes':>7}{'depth':>6}{'p50':>5}{'p95':>5}{'identical':>10}{'match':>7}{'acc':>6}"
        )
        for r in res["rows"]:
            print(
                f"{r['mode']:<22}{r['tokens_per_s']:>7.2f}{r['speedup']:>8.2f}{r['layer_passes_per_token']:>7.1f}{r['mean_depth']:>6.1f}"
                f"{r['p50_layers']:>5.0f}{r['p95_layers']:>5.0f}{r['identical_outputs']:>10.2f}"
                f"{r['token_match']:>7.3f}{r['accuracy']:>6.2f}"
            )
        for m, s in res["speculation"].items():
            print(f"{m}: acceptance {s['acceptance']:.3f}, {s['tokens_per_verification']:.2f} tokens per verification")
        print(
            f"early exit: fastest point within 1 point of full-depth accuracy: {res['default_early_exit']}; "
            f"calibrated threshold (heads.json, 2% held-out disagreement): {res['calibrated_threshold']}"
        )


def report_domains(results: list[dict], args: argparse.Namespace) -> None:
    import sys

    from harness.meta import stamp  # benchmarks/ is on the path of a script run from it

    Path(args.out).write_text(json.dumps({**stamp(sys.argv), "args": vars(args), "tiers": results}, indent=2) + "\n")
    print(
        f"\n{args.domain_mode}, {args.new_tokens} new tokens, {args.dtype}; threshold chosen on {args.select} prompts per domain"
    )
    print(
        f"{'tier':<8}{'domain':<10}{'mode':<28}{'x full':>7}{'accept':>8}{'tok/verif':>10}{'identical':>10}"
        f"{'chain x':>9}{'full tok/s':>11}"
    )
    for res in results:
        for d, r in res["domains"].items():
            chain = f"{r['chain']['speedup']:>9.2f}" if "chain" in r else f"{'-':>9}"
            print(
                f"{res['tier']:<8}{d:<10}{res['mode']:<28}{r['speedup']:>7.2f}{r['acceptance']:>8.3f}"
                f"{r['tokens_per_verification']:>10.2f}{r['identical_outputs']:>10.2f}{chain}"
                f"{r['full_tokens_per_s']:>11.2f}"
            )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
