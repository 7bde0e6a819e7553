"""``ladder judge``: grade collected answers that have no reference or tests with an LLM judge.

Any OpenAI-compatible endpoint judges (a hosted large model, or Ladder's own top tier:
``--judge-url http://127.0.0.1:8000/v1 --judge-model large``), through the official ``openai``
client. Single grading: the judge rates each rung's answer on a 1..scale scale with a versioned
prompt (``PROMPT_VERSION``, recorded in every row); the grade becomes quality (g - 1) / (scale - 1)
and is kept raw in the rung's signals (``judge_grade``). Answers are cached by a hash of (prompt
version, judge model, request, answer), so a re-run, or a second file with the same answers,
costs nothing. A judge that times out or answers something without a rating is retried, then the
answer stays ungraded (quality null, the reason under ``judge_errors``) — never a crash; training
leaves such rows out. Where a row also has a gold grade (reference or tests), ``--also-labelled``
asks the judge too and reports how often it agrees (gold quality stays what it was).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ladder.errors import LadderError
from ladder.outcomes.io import jsonl_lines, read_rows

PROMPT_VERSION = "single-v1"
PROMPT = """You are grading an AI assistant's answer to a user's request. Rate how well the answer \
fulfils the request (correct, complete and helpful) on a scale of 1 to {scale}: 1 means wrong or \
useless, {scale} means fully correct and helpful.

[Request]
{question}

[Answer]
{answer}

Reply with the rating only, in the form "Rating: <a whole number from 1 to {scale}>"."""
_RATING = re.compile(r"rating\s*[:=]?\s*\**\s*(\d{1,2})", re.IGNORECASE)
_FIRST_NUMBER = re.compile(r"\b(\d{1,2})\b")


@dataclass(frozen=True)
class Judge:
    url: str
    model: str
    api_key: str = "unused"
    scale: int = 10
    timeout_s: float = 120.0
    retries: int = 2  # extra tries after the first
    concurrency: int = 8
    max_tokens: int = 16
    price: tuple[float, float] = (0.0, 0.0)  # USD per 1M tokens (input, output)


def parse_rating(reply: str, scale: int) -> int | None:
    """The rating a judge wrote ("Rating: 7", "**Rating:** 7/10", or a bare "7"); None when absent
    or out of range."""
    m = _RATING.search(reply) or _FIRST_NUMBER.search(reply)
    if m is None:
        return None
    value = int(m.group(1))
    return value if 1 <= value <= scale else None


def cache_key(judge: Judge, question: str, answer: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in (PROMPT_VERSION, str(judge.scale), judge.model, question, answer):
        h.update(part.encode() + b"\x1f")
    return h.hexdigest()


@dataclass
class JudgeSummary:
    rows: int = 0
    asked: int = 0  # answers sent to the judge (cache misses)
    cached: int = 0
    graded: int = 0  # answers whose quality now comes from the judge
    failed: int = 0
    agreement: float | None = None  # with gold grades, where rows had both
    agreement_n: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd: float = 0.0
    wall_s: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)


async def _ask(client, judge: Judge, question: str, answer: str, summary: JudgeSummary) -> int:  # noqa: ANN001
    """The judge's rating, or raises ``LadderError`` with the last reason after the retries."""
    reason = ""
    for attempt in range(judge.retries + 1):
        try:
            r = await client.chat.completions.create(
                model=judge.model,
                temperature=0,
                max_tokens=judge.max_tokens,
                messages=[
                    {"role": "user", "content": PROMPT.format(scale=judge.scale, question=question, answer=answer)}
                ],
            )
        except Exception as exc:  # timeouts, 5xx, refused connections: retried, then reported
            reason = f"{type(exc).__name__}: {str(exc)[:200]}"
            await asyncio.sleep(min(4.0, 0.5 * 2**attempt))
            continue
        if r.usage:
            summary.prompt_tokens += r.usage.prompt_tokens
            summary.completion_tokens += r.usage.completion_tokens
        reply = r.choices[0].message.content or ""
        rating = parse_rating(reply, judge.scale)
        if rating is not None:
            return rating
        reason = f"no rating in the judge's reply {reply[:80]!r}"
    raise LadderError(reason)


def judge_outcomes(
    path: Path, out: Path, judge: Judge, also_labelled: bool = False, cache_path: Path | None = None
) -> JudgeSummary:
    import openai
    from tqdm import tqdm

    rows = read_rows(path)
    cache_path = cache_path or out.with_name(out.name + ".judge-cache.jsonl")
    cache: dict[str, int] = {}
    if cache_path.exists():
        for line in jsonl_lines(cache_path):
            if line.strip():
                entry = json.loads(line)
                cache[entry["key"]] = int(entry["rating"])
    summary = JudgeSummary(rows=len(rows))
    jobs = []  # (row, rung, gold or None)
    for row in rows:
        for rung, q in row.get("quality", {}).items():
            if q is None or also_labelled:
                jobs.append((row, rung, q))
    t0 = time.perf_counter()
    agree: list[bool] = []

    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=judge.url, api_key=judge.api_key, timeout=judge.timeout_s, max_retries=0)
        gate = asyncio.Semaphore(judge.concurrency)
        with cache_path.open("a") as cache_file, tqdm(total=len(jobs), desc="judge", unit="answer") as bar:

            async def one(row: dict, rung: str, gold: float | None) -> None:
                answer = row.get("response", {}).get(rung, "")
                key = cache_key(judge, row["query"], answer)
                try:
                    if key in cache:
                        rating = cache[key]
                        summary.cached += 1
                    else:
                        async with gate:
                            summary.asked += 1
                            rating = await _ask(client, judge, row["query"], answer, summary)
                        cache[key] = rating
                        cache_file.write(json.dumps({"key": key, "rating": rating}) + "\n")
                        cache_file.flush()
                except LadderError as exc:
                    summary.failed += 1
                    row.setdefault("judge_errors", {})[rung] = str(exc)
                    kind = str(exc).split(":", 1)[0]
                    summary.failures[kind] = summary.failures.get(kind, 0) + 1
                    return
                finally:
                    bar.update(1)
                row.setdefault("signals", {}).setdefault(rung, {})["judge_grade"] = float(rating)
                graded = (rating - 1) / (judge.scale - 1)
                if gold is None:
                    row["quality"][rung] = graded
                    summary.graded += 1
                else:
                    agree.append((graded >= 0.5) == (gold >= 0.5))
                row["judge"] = {"model": judge.model, "prompt_version": PROMPT_VERSION, "scale": judge.scale}

            await asyncio.gather(*(one(*job) for job in jobs))
            await client.close()

    asyncio.run(run())
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary.agreement = sum(agree) / len(agree) if agree else None
    summary.agreement_n = len(agree)
    summary.usd = (summary.prompt_tokens * judge.price[0] + summary.completion_tokens * judge.price[1]) / 1e6
    summary.wall_s = time.perf_counter() - t0
    return summary
