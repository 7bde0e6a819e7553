"""From one's own traffic to a live policy, end to end on this machine (issue 21).

    .venv/bin/python benchmarks/own_traffic.py [--prompts 200] [--labelled 32]

1. Writes prompts for the purpose (seeded templates: explanations, advice, short writing,
   translation, code to write, summaries — no gold answers) plus a few with a reference answer
   (arithmetic, capitals) to measure the judge against.
2. ``ladder collect`` runs every default rung on them (vLLM, 128 tokens).
3. ``ladder serve`` starts the default app; ``ladder judge`` grades every answer without a
   reference with Ladder's own top tier (``--judge-model large`` on that app), and the labelled
   ones too, for agreement.
4. ``ladder train`` + ``ladder calibrate`` (target ``large<=0.5``, the configured prices).
5. ``ladder policy push`` into the same running app while 4 clients keep sending routed
   requests: failed requests, and seconds from the push until responses carry the new version.
Writes benchmarks/results/own_traffic.json: ``{prompts, judge_agreement_on_labelled, swap:
{requests, failed, seconds_to_new_version}, steps_s: {collect, judge, train, calibrate, push},
held_out}`` plus details, stamped with commit, policy version and command. ``held_out``: the
calibrated policy replayed on the test part of the judged rows (neither its fit nor its
calibration read them): reach against the printed intervals, quality beside always-large's.
``calibrated.quality`` is the estimate on the validation rows that chose the thresholds. The judge
is the large tier, one of the judged tiers (``judge_is_a_judged_tier``: no other model runs here).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from engine import start_ladder, stop, wait_ready  # noqa: E402
from harness.meta import stamp  # noqa: E402

from ladder.cluster.redis_server import free_port  # noqa: E402
from ladder.cluster.settings import LadderConfig  # noqa: E402
from ladder.offline.held_out import held_out_check  # noqa: E402
from ladder.outcomes.io import read_jsonl  # noqa: E402
from ladder.policies.store import load_policy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
LADDER = str(Path(sys.executable).parent / "ladder")

CONCEPTS = [
    "recursion",
    "photosynthesis",
    "inflation",
    "a hash table",
    "gravity",
    "TCP handshakes",
    "vaccines",
    "compound interest",
    "the water cycle",
    "machine learning",
    "a binary search",
    "plate tectonics",
    "supply and demand",
    "DNS",
    "entropy",
    "a mutex",
    "the immune system",
    "public-key cryptography",
    "a neural network",
    "the greenhouse effect",
    "garbage collection",
    "big-O notation",
    "a blockchain",
    "the placebo effect",
    "version control",
]
ACTIVITIES = [
    "learning a new language",
    "running a first marathon",
    "saving money",
    "sleeping better",
    "writing clean code",
    "public speaking",
    "growing tomatoes",
    "studying for exams",
    "remote work",
    "cooking rice",
    "reading more books",
    "reviewing a pull request",
]
TOPICS = ["the sea", "autumn leaves", "a city at night", "coffee", "a lost key", "mountains", "a robot", "rain"]
PHRASES = ["good morning", "where is the station", "thank you very much", "I would like a coffee", "see you tomorrow"]
TASKS = [
    "reverses a string",
    "returns the largest of three numbers",
    "counts the vowels in a string",
    "checks whether a number is prime",
    "returns the factorial of n",
    "removes duplicates from a list",
    "computes the average of a list",
    "checks whether a string is a palindrome",
    "merges two sorted lists",
    "returns the n-th Fibonacci number",
]
TEXTS = [
    "The meeting was moved from Monday to Wednesday because the projector broke and the room was booked.",
    "Sales rose 12% in the third quarter, driven by new customers in Europe, while costs stayed flat.",
    "The library will close early on Friday for maintenance and reopen on Saturday at nine.",
]
CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Germany": "Berlin",
    "Egypt": "Cairo",
    "Canada": "Ottawa",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Greece": "Athens",
    "Poland": "Warsaw",
    "Chile": "Santiago",
    "Cuba": "Havana",
    "Austria": "Vienna",
    "Portugal": "Lisbon",
}


def write_prompts(path: Path, n: int, labelled: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    makers = [
        lambda: f"Explain {rng.choice(CONCEPTS)} in two sentences.",
        lambda: f"Give three practical tips for {rng.choice(ACTIVITIES)}.",
        lambda: f"Write a haiku about {rng.choice(TOPICS)}.",
        lambda: f"Translate '{rng.choice(PHRASES)}' into French and Spanish.",
        lambda: f"Write a Python function that {rng.choice(TASKS)}.",
        lambda: f"Summarize in one sentence: {rng.choice(TEXTS)}",
        lambda: f"What is the difference between {rng.choice(CONCEPTS)} and {rng.choice(CONCEPTS)}?",
    ]
    rows, seen = [], set()
    while len(rows) < n:
        prompt = rng.choice(makers)()
        if prompt not in seen:
            seen.add(prompt)
            rows.append({"id": f"own-{len(rows)}", "prompt": prompt, "group": "own"})
    for i in range(labelled):
        if i % 2:
            country = list(CAPITALS)[i // 2 % len(CAPITALS)]
            rows.append(
                {
                    "id": f"cap-{i}",
                    "prompt": f"What is the capital of {country}? Answer in one word.",
                    "reference": CAPITALS[country],
                    "group": "labelled",
                }
            )
        else:
            a, b = rng.randint(3, 40), rng.randint(3, 40)
            rows.append(
                {
                    "id": f"mul-{i}",
                    "prompt": f"What is {a} times {b}? Reply with the number only.",
                    "reference": a * b,
                    "group": "labelled",
                }
            )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run(cmd: list[str], log: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - t0, proc.stdout


def swap_under_load(url: str, policy: Path, clients: int = 4, before_s: float = 10, after_s: float = 15) -> dict:
    stop_flag, seen, failed = threading.Event(), [], []
    prompts = [
        "Explain recursion briefly.",
        "What is 7 times 8?",
        "Write a haiku about rain.",
        "Give one tip for sleep.",
    ]

    def client(k: int) -> None:
        with httpx.Client(timeout=300) as http:
            i = 0
            while not stop_flag.is_set():
                i += 1
                body = {
                    "model": "ladder",
                    "max_tokens": 4,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": f"{prompts[(i + k) % 4]} (#{k}.{i})"}],
                }
                try:
                    r = http.post(url + "/v1/chat/completions", json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    seen.append((time.time(), r.json()["ladder"]["policy_version"]))
                else:
                    failed.append(getattr(r, "status_code", None) if "r" in dir() else None)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(before_s)
    t_push = time.time()
    push_s, out = run([LADDER, "policy", "push", str(policy), "--url", url], policy.with_suffix(".push.log"))
    pushed = json.loads(out)
    new = pushed["version"]
    time.sleep(after_s)
    stop_flag.set()
    for t in threads:
        t.join()
    first_new = min((t for t, v in seen if v == new), default=None)
    # seconds_to_new_version: from the push request (what `ladder policy push` sent) to the first
    # response the new policy routed; the CLI's own start-up (Python, its local check of the file)
    # is reported apart, as cli_s.
    sent_at = pushed["swapped_at"] - pushed["seconds"]
    return {
        "requests": len(seen) + len(failed),
        "failed": len(failed),
        "new_version": new,
        "seconds_to_new_version": None if first_new is None else first_new - sent_at,
        "push_http_s": pushed["seconds"],
        "cli_s": push_s,
        "from_cli_start_s": None if first_new is None else first_new - t_push,
        "old_after_new": sum(1 for t, v in seen if first_new and t > first_new and v != new),
        "push_s": push_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--labelled", type=int, default=32)
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a new temporary one)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ladder-own-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"working in {work}", flush=True)
    prompts, collected = work / "prompts.jsonl", work / "collected.jsonl"
    write_prompts(prompts, args.prompts, args.labelled)
    steps_file = work / "steps.json"  # a rerun in the same folder keeps the collection it already has
    steps = json.loads(steps_file.read_text()) if steps_file.exists() else {}
    if "collect" not in steps:
        steps["collect"], _ = run(
            [LADDER, "collect", str(prompts), "-o", str(collected), "--max-tokens", "128", "--batch-size", "16"],
            work / "collect.log",
        )
        steps_file.write_text(json.dumps(steps))
    print(f"collected in {steps['collect']:.0f}s", flush=True)
    port = free_port()
    proc = start_ladder(ROOT / "configs" / "default.yaml", port, work / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.perf_counter()
        wait_ready(url + "/health", 900, proc)
        while "Ladder is serving" not in (work / "serve.log").read_text():
            if proc.poll() is not None:
                raise RuntimeError(f"ladder serve exited; see {work / 'serve.log'}")
            time.sleep(1)
        ready_s = time.perf_counter() - t0
        print(f"serving in {ready_s:.0f}s", flush=True)
        judged = work / "judged.jsonl"
        large = LadderConfig().tier("large").price
        steps["judge"], out = run(
            [
                LADDER,
                "judge",
                str(collected),
                "-o",
                str(judged),
                "--judge-url",
                url + "/v1",
                "--judge-model",
                "large",
                "--also-labelled",
                "--concurrency",
                "16",
                "--timeout",
                "600",
                "--judge-price",
                f"{large.input_per_1m}:{large.output_per_1m}",
            ],
            work / "judge.log",
        )
        judge = json.loads(out)
        print(f"judged in {steps['judge']:.0f}s: {judge}", flush=True)
        fitted, policy = work / "fitted.json", work / "own-policy.json"
        steps["train"], out = run(
            [LADDER, "train", str(judged), "-o", str(fitted), "--featurizer", "tfidf"], work / "train.log"
        )
        trained = json.loads(out)
        prices = [
            x
            for t in LadderConfig().tiers
            for x in ("--price", f"{t.name}={t.price.input_per_1m}:{t.price.output_per_1m}")
        ]
        steps["calibrate"], out = run(
            [LADDER, "calibrate", str(fitted), str(judged), "-t", "large<=0.5", *prices, "-o", str(policy)],
            work / "calibrate.log",
        )
        calibrated = json.loads(out)
        # the calibrated policy on the judged rows neither `ladder train` (fit part) nor `ladder
        # calibrate` (validation part) read: calibrated["quality"] is the validation estimate
        held = held_out_check(load_policy(policy), read_jsonl(judged))
        print(f"held out: {held}", flush=True)
        swap = swap_under_load(url, policy)
        steps["push"] = swap.pop("push_s")
    finally:
        stop(proc)
    rows = [json.loads(line) for line in judged.read_text().splitlines()]
    quality = {r: sum((row["quality"][r] or 0) for row in rows) / len(rows) for r in rows[0]["quality"]}
    result = {
        "prompts": args.prompts,
        "labelled": args.labelled,
        "judge_agreement_on_labelled": judge["agreement"],
        "judge_agreement_n": judge["agreement_n"],
        "swap": swap,
        "steps_s": steps,
        "serve_ready_s": ready_s,
        "judge": judge,
        # the judge is one of the judged tiers (Ladder's own large tier grades every rung, itself
        # included): no other model runs here. Its agreement with gold on the labelled rows is the
        # only check on it, and its grades of its own answers may be lenient.
        "judge_model": "large",
        "judge_is_a_judged_tier": True,
        "held_out": held,
        "mean_judged_quality": quality,
        "train": trained,
        "calibrated": {
            k: calibrated.get(k)
            for k in (
                "version",
                "target",
                "thresholds",
                "reach",
                "answer_mix",
                "quality",
                "quality_ci",
                "cost_per_1k",
                "prefix",
            )
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "own_traffic.json").write_text(json.dumps({**stamp(sys.argv), **result}, indent=1, default=float))
    print(json.dumps({k: result[k] for k in ("prompts", "judge_agreement_on_labelled", "swap", "steps_s")}, indent=1))


if __name__ == "__main__":
    main()
