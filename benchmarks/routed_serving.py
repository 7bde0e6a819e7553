"""The whole ladder served, against each tier pinned, in one run (issue 28: does the ladder pay?).

    .venv/bin/python benchmarks/routed_serving.py [--config configs/default.yaml] [--clients 16]
        [--systems ladder,large,medium,small] [--limit N] [--mmlu-pro 48] [--data ../shared/data]

The real app (``ladder serve``: default tiers, default policy, Redis, Ray), one stack for every
system, closed loop of ``--clients`` clients over a graded workload the policy never saw:
- the held-out part of the committed outcomes (HumanEval + GSM8K; the test part of
  ``offline.pipeline.three_way``, the one split every fit and calibration uses: the bundled policy
  was fitted and calibrated on the other parts), asked exactly as they were collected (same
  prompt, same token budget), graded by HumanEval's tests in the sandbox / GSM8K's gold number;
- ``--mmlu-pro N`` multiple-choice questions (letter graded; the N with the smallest id hash),
  when ``--data`` holds MMLU-Pro. Since session 16 the bundled policy is fitted on MMLU-Pro too,
  on questions after the first 48 by that hash (``data/outcomes/mmlu-pro.jsonl``, collected with
  ``--skip 48``): these 48 stay unseen.
Systems: ``ladder`` (routed) and each tier pinned (``model: <tier>``) on the ladder's stack, and
``large-alone``: the large tier served by itself with every core (a second stack started after
the first stops: what a user who always asks the largest model would run instead, so the
baseline is not slowed by the ladder's core layout, nor by what the ladder's stack gives up for
memory — bfloat16, eager mode: alone it runs compiled, in the dtype the machine computes natively). Each over the same questions, greedy. Per system: graded quality with a 95% interval (Wilson), answers/s (questions /
wall time of the closed loop), completion tokens/s, p50/p95 latency, CPU-seconds per answer (the
machine's busy time from /proc/stat over the run, less this client's own), and for the routed run
the rung mix, escalations and the share of generated tokens thrown away by escalation. Routed vs
large: the answers/s ratio and the paired quality difference with a bootstrap 95% interval.
Writes benchmarks/results/routed_serving.json, stamped with commit, policy version and command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
from engine import start_ladder, stop, wait_ready
from harness.meta import write_results
from tqdm import tqdm

from ladder.cluster.redis_server import free_port
from ladder.offline.datasets import (
    MC_SYSTEM,
    humaneval_problems,
    load_dataset,
    score_gsm8k,
    score_humaneval_with,
    score_letter,
)
from ladder.offline.pipeline import three_way
from ladder.outcomes.io import read_jsonl, read_rows

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
OUTCOMES = [ROOT / "data" / "outcomes" / "humaneval.jsonl", ROOT / "data" / "outcomes" / "gsm8k.jsonl"]
MAX_TOKENS = {"humaneval": 384, "gsm8k": 320, "mmlu-pro": 3}  # as collected (offline.datasets)


@dataclass(frozen=True)
class Item:
    id: str
    dataset: str
    messages: tuple[dict, ...]
    gold: str
    max_tokens: int
    stop: tuple[str, ...] = ()


def workload(data: Path | None, mmlu_pro: int, limit: int | None) -> list[Item]:
    rows = [row for p in OUTCOMES for row in read_rows(p)]
    pooled = Path(tempfile.mkdtemp(prefix="ladder-routed-")) / "code-math.jsonl"  # as the policy was fitted
    pooled.write_text("".join(p.read_text() for p in OUTCOMES))
    outcomes = read_jsonl(pooled)
    held = set(three_way(outcomes, np.zeros(len(outcomes), bool)).test.ids)
    items = [
        Item(
            r["id"], r["dataset"], ({"role": "user", "content": r["query"]},), str(r["gold"]), MAX_TOKENS[r["dataset"]]
        )
        for r in rows
        if r["id"] in held
    ][:limit]
    if mmlu_pro and data is not None and (data / "mmlu_pro" / "outcomes.parquet").is_file():
        ds = load_dataset("mmlu-pro", data, mmlu_pro)
        system = {"role": "system", "content": MC_SYSTEM}
        items += [
            Item(it.id, "mmlu-pro", (system, {"role": "user", "content": it.prompt}), it.gold, ds.max_tokens, ds.stop)
            for it in ds.items
        ]
    return items


def grader():  # noqa: ANN201 (dataset, answer, gold) -> float
    humaneval = score_humaneval_with(humaneval_problems())
    table = {"gsm8k": score_gsm8k, "humaneval": humaneval, "mmlu-pro": score_letter}
    return lambda dataset, answer, gold: float(table[dataset](answer, gold))


def busy_seconds() -> float:
    """CPU-seconds the whole machine has been busy (all cores), from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


async def ask(client: httpx.AsyncClient, url: str, model: str, item: Item) -> dict:
    body = {"model": model, "messages": list(item.messages), "max_tokens": item.max_tokens, "temperature": 0}
    if item.stop:
        body["stop"] = list(item.stop)
    t0 = time.perf_counter()
    try:
        r = await client.post(url, json=body)
        latency = time.perf_counter() - t0
        if r.status_code != 200:
            return {"id": item.id, "status": r.status_code, "latency_s": latency, "text": ""}
        data = r.json()
        return {
            "id": item.id,
            "status": 200,
            "latency_s": latency,
            "text": data["choices"][0]["message"]["content"],
            "completion_tokens": data["usage"]["completion_tokens"],
            "ladder": data.get("ladder", {}),
        }
    except httpx.HTTPError as exc:
        return {"id": item.id, "status": None, "latency_s": time.perf_counter() - t0, "text": "", "error": str(exc)}


async def closed_loop(url: str, model: str, items: list[Item], clients: int) -> tuple[list[dict], float]:
    queue: asyncio.Queue[Item] = asyncio.Queue()
    for it in items:
        queue.put_nowait(it)
    out: list[dict] = []
    bar = tqdm(total=len(items), desc=model, unit="answer", leave=False)
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=900, limits=limits) as client:

        async def user() -> None:
            while not queue.empty():
                item = queue.get_nowait()
                out.append(await ask(client, url + "/v1/chat/completions", model, item))
                bar.update()

        t0 = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(clients)))
        wall = time.perf_counter() - t0
    bar.close()
    return out, wall


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(centre - half, 4), round(centre + half, 4))


def summarise(system: str, rows: list[dict], wall: float, cpu_s: float, grades: dict[str, float]) -> dict:
    ok = [r for r in rows if r["status"] == 200]
    lat = np.array([r["latency_s"] for r in ok]) if ok else np.zeros(1)
    quality = float(np.mean([grades[r["id"]] for r in rows]))
    summary = {
        "system": system,
        "answers": len(rows),
        "errors": len(rows) - len(ok),
        "quality": round(quality, 4),
        "quality_ci95": wilson(sum(grades[r["id"]] for r in rows), len(rows)),
        "answers_per_s": round(len(ok) / wall, 4),
        "completion_tokens_per_s": round(sum(r.get("completion_tokens", 0) for r in ok) / wall, 2),
        "p50_s": round(float(np.percentile(lat, 50)), 2),
        "p95_s": round(float(np.percentile(lat, 95)), 2),
        "wall_s": round(wall, 1),
        "cpu_s_per_answer": round(cpu_s / max(len(ok), 1), 3),
    }
    if system.startswith("ladder"):
        mix: dict[str, int] = {}
        generated = thrown = escalations = 0
        kinds: dict[str, int] = {}
        for r in ok:
            lad = r["ladder"]
            mix[lad["tier"]] = mix.get(lad["tier"], 0) + 1
            escalations += lad["escalations"]
            for a in lad["rungs_tried"]:
                generated += a["completion_tokens"]
                thrown += 0 if a["accepted"] else a["completion_tokens"]
                if a.get("non_answer"):
                    kinds[a["non_answer"]] = kinds.get(a["non_answer"], 0) + 1
        summary |= {
            "mix": {t: round(c / len(ok), 3) for t, c in sorted(mix.items())},
            "escalations_per_answer": round(escalations / len(ok), 3),
            "thrown_away_token_share": round(thrown / max(generated, 1), 3),
            "non_answers_escalated": kinds,
        }
    return summary


def paired_diff(a: np.ndarray, b: np.ndarray, seed: int = 0, n: int = 5000) -> tuple[float, tuple[float, float]]:
    """mean(a - b) and its bootstrap 95% interval (the same questions in both)."""
    rng = np.random.default_rng(seed)
    d = a - b
    boots = d[rng.integers(0, len(d), (n, len(d)))].mean(axis=1)
    return float(d.mean()), (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)))


def versus(name: str, base: str | None, rs: dict, answers: dict, ids: list[str]) -> dict:
    """A routed system against always-large: ratios, paired quality difference, the target."""
    if base is None:
        return {}
    lad = np.array([answers[name][i] for i in ids])
    big = np.array([answers[base][i] for i in ids])
    diff, ci = paired_diff(lad, big)
    me, ref = rs[name], rs[base]
    return {
        "always_large_is": base,
        "policy_version": me.get("policy_version"),
        "answers_per_s_ratio_vs_large": round(me["answers_per_s"] / ref["answers_per_s"], 3),
        "tokens_per_s_ratio_vs_large": round(me["completion_tokens_per_s"] / ref["completion_tokens_per_s"], 3),
        "cpu_s_per_answer_ratio_vs_large": round(me["cpu_s_per_answer"] / ref["cpu_s_per_answer"], 3),
        "quality_diff_vs_large": round(diff, 4),
        "quality_diff_ci95": [round(ci[0], 4), round(ci[1], 4)],
        "target": "answers/s >= 1.3x large, quality >= large - 0.02",
        "met": bool(me["answers_per_s"] >= 1.3 * ref["answers_per_s"] and me["quality"] >= ref["quality"] - 0.02),
    }


def push_policy(url: str, config: Path, path: Path) -> str:
    """Swap the running app's policy for the file at ``path`` (PUT /admin/policy); its version."""
    from ladder.cluster.secrets import admin_key
    from ladder.cluster.settings import load_config
    from ladder.policies.store import policy_files
    from ladder.serving.live_policy import PolicyFiles

    files = PolicyFiles(*policy_files(path))
    key = admin_key(load_config(config))
    r = httpx.put(url + "/admin/policy", content=files.encode(), headers={"authorization": f"Bearer {key}"}, timeout=60)
    r.raise_for_status()
    return r.json()["version"]


def stacks(config: Path, systems: list[str]) -> list[tuple[Path, list[tuple[str, str]]]]:
    """(config file, [(model asked, system name)]): the ladder's stack, then large alone on every core."""
    out = [(config, [(m, m) for m in systems if m != "large-alone"])]
    if "large-alone" in systems:
        import yaml

        from ladder.cluster.settings import load_config, native_dtype

        full = load_config(config)
        large = full.tiers[-1]
        alone = full.model_copy(
            update={
                # every core, the dtype this machine computes natively and a compiled graph: what
                # the ladder's stack may give up to fit beside the other tiers, large alone need not
                "tiers": [
                    large.model_copy(
                        update={
                            "vllm": large.vllm.model_copy(update={"cores": None, "enforce_eager": False}),
                            "dtype": native_dtype(large.device),
                        }
                    )
                ],
                "policy": full.policy.model_copy(update={"kind": "fixed", "file": None}),
            }
        )
        path = Path(tempfile.mkdtemp(prefix="ladder-large-alone-")) / "large-alone.yaml"
        path.write_text(yaml.safe_dump(alone.model_dump(mode="json")))
        out.append((path, [("large", "large-alone")]))
    return [(c, m) for c, m in out if m]


def serve_and_measure(
    config: Path,
    models: list[str],
    items: list[Item],
    clients: int,
    grade,
    systems: list,
    answers: dict,  # noqa: ANN001
    variants: list[Path] = (),
) -> None:
    """Start ``ladder serve`` on ``config``, warm every engine, run each system's closed loop; then,
    when the stack serves the ladder, each policy of ``variants`` pushed in turn and run as
    ``ladder@<version>``."""
    by_id = {it.id: it for it in items}
    port, tmp = free_port(), Path(tempfile.mkdtemp(prefix="ladder-routed-"))
    from ladder.cluster.settings import load_config

    dtypes = {t.name: t.dtype for t in load_config(config).tiers}
    proc = start_ladder(config, port, tmp / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        ready_s = wait_ready(url + "/health", 1800, proc)
        while "Ladder is serving" not in (tmp / "serve.log").read_text():
            if proc.poll() is not None:
                raise RuntimeError(f"ladder serve exited; see {tmp / 'serve.log'}")
            time.sleep(1)
        print(f"ladder serve ({config.name}) ready after {ready_s:.0f} s", flush=True)
        warm = items[:: max(1, len(items) // 8)][:8]
        for model, _ in models:  # every engine's graphs compiled before anything is timed
            asyncio.run(closed_loop(url, model, warm, 4))
        me = psutil.Process()
        runs = [(model, name, None) for model, name in models]
        if any(m == "ladder" for m, _ in models):
            runs += [("ladder", None, v) for v in variants]
        for model, name, variant in runs:
            version = httpx.get(url + "/health").json()["policy_version"]
            if variant is not None:
                version = push_policy(url, config, variant)
                name = f"ladder@{version}"
            busy0, mine0 = busy_seconds(), sum(me.cpu_times()[:2])
            rows, wall = asyncio.run(closed_loop(url, model, items, clients))
            cpu = (busy_seconds() - busy0) - (sum(me.cpu_times()[:2]) - mine0)
            grades = {r["id"]: grade(by_id[r["id"]].dataset, r["text"], by_id[r["id"]].gold) for r in rows}
            s = summarise(name, rows, wall, cpu, grades)
            by_dataset = {}
            for d in MAX_TOKENS:
                ids = [r["id"] for r in rows if by_id[r["id"]].dataset == d]
                if ids:
                    by_dataset[d] = round(float(np.mean([grades[i] for i in ids])), 4)
            s["quality_by_dataset"] = by_dataset
            s["policy_version"] = version if model == "ladder" else None
            s["dtypes"] = dtypes  # per tier of the stack that served it (bfloat16 is emulated on an AVX2 CPU)
            s["grades"] = {i: grades[i] for i in sorted(grades)}  # per question, for paired analyses later
            if model == "ladder":  # per question, the rungs it reached (the last answered): mixes by dataset
                s["rungs_by_question"] = {
                    r["id"]: [a["tier"] for a in r["ladder"]["rungs_tried"]]
                    for r in sorted(rows, key=lambda r: r["id"])
                    if r["status"] == 200
                }
            systems.append(s)
            answers[name] = grades
            print(json.dumps(s), flush=True)
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--systems", default="ladder,large,medium,small,large-alone")
    ap.add_argument("--limit", type=int, default=None, help="the first N held-out rows only")
    ap.add_argument("--mmlu-pro", type=int, default=48, help="MMLU-Pro questions added (0: none)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument(
        "--policies",
        default="",
        help="comma-separated policy files, each also served as system 'ladder@<version>' on the same "
        "stack after the bundled one (pushed through the admin API: the product's hot swap)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "routed_serving.json")
    args = ap.parse_args()
    items = workload(args.data, args.mmlu_pro, args.limit)
    counts = {d: sum(it.dataset == d for it in items) for d in MAX_TOKENS}
    print(f"workload: {len(items)} questions {counts}", flush=True)
    grade = grader()

    systems, answers = [], {}
    variants = [Path(p) for p in args.policies.split(",") if p]
    for config, models in stacks(args.config, args.systems.split(",")):
        serve_and_measure(config, models, items, args.clients, grade, systems, answers, variants)

    ids = [it.id for it in items]
    rs = {s["system"]: s for s in systems}
    # always-large: the faster of large pinned on the ladder's stack and large alone on every core
    base = max((m for m in ("large", "large-alone") if m in rs), key=lambda m: rs[m]["answers_per_s"], default=None)
    compares = {name: versus(name, base, rs, answers, ids) for name in answers if name.startswith("ladder")}
    compare = compares.pop("ladder", None) or {}
    if compares:
        compare = {**compare, "variants": compares}
    print("\n| system | quality [95% CI] | answers/s | tokens/s | p50 / p95 s | CPU-s/answer | mix |")
    print("|---|---|---|---|---|---|---|")
    for s in systems:
        lo, hi = s["quality_ci95"]  # (table rows; per-question grades stay in the JSON)
        mix = "/".join(f"{v:.0%}" for v in s.get("mix", {}).values())
        print(
            f"| {s['system']} | {s['quality']:.3f} [{lo:.2f}, {hi:.2f}] | {s['answers_per_s']:.3f} | "
            f"{s['completion_tokens_per_s']:.1f} | {s['p50_s']} / {s['p95_s']} | {s['cpu_s_per_answer']} | {mix} |"
        )
    if compare:
        print(json.dumps(compare))
    write_results(
        args.out,
        sys.argv,
        args.config,
        clients=args.clients,
        workload={"questions": len(items), "by_dataset": counts, "held_out_from": "three_way(...).test"},
        systems=systems,
        routed_vs_large=compare,
    )


if __name__ == "__main__":
    main()
