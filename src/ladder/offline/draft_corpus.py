"""The prompts a draft head's tier answers for its training corpus, over domains (issue 34).

A draft head learns to imitate its tier on the text the tier writes; trained on GSM8K answers
alone it drafts math well and chat badly. The mixed corpus asks the tier, in equal parts:

- ``gsm8k``: GSM8K *training* questions in the prompt format `ladder collect` uses (the same
  sample rule as the GSM8K-only heads, so the reference solutions still leave them out);
- ``code``: HumanEval problems as `ladder collect humaneval` asks them, **after** the first
  ``HELD_OUT_PER_DOMAIN`` in the datasets' hash order — those are the adaptive-depth
  benchmark's, which reads every domain from the start of the same order;
- ``chat``: everyday instructions composed here from task and topic lists. The benchmark's chat
  prompts (benchmarks/prompts/chat.jsonl) were written separately and none is composed here.

A domain may ask for its own number of prompts (``chat:470``); the rest share ``--prompts``
equally. Chat is the domain a head drafts worst (session 24: 0.35–0.41 acceptance against
0.56–0.75 on math and code), so it is the one worth more answers.

The tier's own greedy answers are the targets (never these prompts' references), so a prompt
needs no label.
"""

from __future__ import annotations

import random
from pathlib import Path

from ladder.offline.datasets import GSM8K_PROMPT, load_dataset

DOMAINS = ("gsm8k", "code", "chat")
HELD_OUT_PER_DOMAIN = 32  # the first N of a domain's hash order: the benchmark's, never a corpus's

_TASKS = (
    "Explain {t} to a friend who has never heard of it.",
    "Give me three practical tips about {t}.",
    "Write a short paragraph about {t} for a newsletter.",
    "What are the most common mistakes people make with {t}?",
    "Write a polite message to my neighbour about {t}.",
    "List the pros and cons of {t}.",
    "How would you describe {t} to a ten-year-old?",
    "Write a four-line poem about {t}.",
    "I have ten minutes to prepare a talk on {t}. Give me an outline.",
    "What questions should I ask before deciding on {t}?",
    "Summarize what a beginner should know about {t}.",
    "Write a short story opening that involves {t}.",
)
_TOPICS = (
    "saving money for a holiday",
    "keeping a vegetable garden",
    "adopting a cat",
    "learning to play the guitar",
    "working from home",
    "running a first marathon",
    "cooking rice properly",
    "moving to a new city",
    "choosing a used car",
    "reading more books",
    "starting a small online shop",
    "recycling at home",
    "planning a wedding on a budget",
    "taking better photos with a phone",
    "writing a cover letter",
    "teaching a dog new tricks",
    "drinking enough water",
    "travelling by train across Europe",
    "preparing for a job interview",
    "fixing a leaking tap",
    "volunteering at a food bank",
    "meditation for beginners",
    "organising a messy garage",
    "the history of the bicycle",
    "how tides work",
    "solar panels for a house",
    "making new friends as an adult",
    "baking bread without yeast",
    "a rainy weekend with children",
    "negotiating a salary",
)
# Added in session 25 (more chat answers for issue 34). The lists only grow, and the combinations
# of the first lists come first in ``chat_prompts``, so a corpus asked for more chat keeps every
# answer its cache already holds.
_MORE_TASKS = (
    "Write a short email to my manager about {t}.",
    "What is the very first step if I want to get started with {t}?",
    "Compare two different approaches to {t}.",
    "Give me a simple checklist for {t}.",
    "Why do people care about {t}? Answer briefly.",
    "Write a friendly text message inviting a friend to try {t} with me.",
    "Explain {t} in three sentences.",
    "Make a one-week plan for {t}.",
    "Write a short FAQ with three questions and answers about {t}.",
    "Tell me one fun fact and one common myth about {t}.",
    "Write a social media post about {t}.",
    "What do I need to buy or prepare for {t}?",
)
_MORE_TOPICS = (
    "choosing a laptop for university",
    "growing tomatoes on a balcony",
    "learning to swim as an adult",
    "brewing coffee at home",
    "reducing screen time",
    "hosting a dinner party",
    "caring for an elderly parent",
    "starting a podcast",
    "camping in a tent for the first time",
    "keeping a journal",
    "buying a first home",
    "composting kitchen scraps",
    "painting a bedroom",
    "learning basic first aid",
    "saving energy in winter",
    "planning a road trip",
    "looking after a goldfish",
    "writing a personal blog",
    "staying focused while studying",
    "packing lunches for work",
    "birdwatching in a city park",
    "learning to knit",
    "renting out a spare room",
    "training for a 5k run",
    "the history of chocolate",
    "how rainbows form",
    "electric cars",
    "visiting a museum with teenagers",
    "cleaning a kitchen oven",
    "learning to play chess",
)


def chat_prompts(n: int, seed: int) -> list[str]:
    """``n`` distinct everyday instructions (task × topic): the first lists' combinations in an
    order sampled with ``seed``, then the rest in theirs (so a larger ``n`` extends a smaller one)."""
    first = [task.format(t=topic) for task in _TASKS for topic in _TOPICS]
    rest = [
        task.format(t=topic)
        for task in _TASKS + _MORE_TASKS
        for topic in _TOPICS + _MORE_TOPICS
        if task in _MORE_TASKS or topic in _MORE_TOPICS
    ]
    every = random.Random(seed).sample(first, len(first)) + random.Random(seed).sample(rest, len(rest))
    return every[:n]


def domain_counts(domains: tuple[str, ...], prompts: int) -> list[tuple[str, int]]:
    """``("gsm8k", "code", "chat:470")`` -> [(domain, prompts)]: a domain with ``:N`` asks N, the
    others ``prompts // len(domains)`` each. ValueError, naming the entry, on a bad one."""
    if not domains:
        raise ValueError(f"no domain named; choose from {', '.join(DOMAINS)}")
    out = []
    for entry in domains:
        name, _, count = entry.partition(":")
        if name not in DOMAINS:
            raise ValueError(f"unknown domain {name!r} in {entry!r}; choose from {', '.join(DOMAINS)}")
        if count and not (count.isdigit() and int(count) > 0):
            raise ValueError(f"{entry!r}: the count after ':' must be a positive whole number")
        out.append((name, int(count) if count else prompts // len(domains)))
    if len({name for name, _ in out}) != len(out):
        raise ValueError(f"a domain is named twice in {','.join(domains)!r}")
    return out


def domain_prompts(domain: str, data: Path, n: int, seed: int, gsm8k_questions: list[str]) -> list[str]:
    """A domain's training prompts (up to ``n``). ``gsm8k_questions``: the sampled training
    questions (``exit_head_training.training_questions``), which the reference corpus leaves out."""
    if domain == "gsm8k":
        return [GSM8K_PROMPT.format(question=q.strip()) for q in gsm8k_questions[:n]]
    if domain == "code":
        items = load_dataset("humaneval", data, skip=HELD_OUT_PER_DOMAIN).items
        return [it.prompt for it in random.Random(seed).sample(list(items), min(n, len(items)))]
    if domain == "chat":
        return chat_prompts(n, seed)
    raise ValueError(f"unknown domain {domain!r}; choose from {', '.join(DOMAINS)}")


def mixed_prompts(
    counts: list[tuple[str, int]], data: Path, seed: int, gsm8k_questions: list[str]
) -> list[tuple[str, str]]:
    """(domain, prompt) pairs, ``n`` of each ``(domain, n)`` of ``counts`` (fewer where a domain
    has fewer), shuffled with ``seed`` so that any leading slice — the trainer holds out the first
    tenth — mixes them. ``gsm8k_questions``: as for ``domain_prompts`` (sampled once by the caller)."""
    pairs = [(d, p) for d, n in counts for p in domain_prompts(d, data, n, seed, gsm8k_questions)]
    random.Random(seed).shuffle(pairs)
    return pairs
