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


def chat_prompts(n: int, seed: int) -> list[str]:
    """``n`` distinct everyday instructions (task × topic), sampled with ``seed``."""
    every = [task.format(t=topic) for task in _TASKS for topic in _TOPICS]
    return random.Random(seed).sample(every, min(n, len(every)))


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
    domains: tuple[str, ...], data: Path, per_domain: int, seed: int, gsm8k_questions: list[str]
) -> list[tuple[str, str]]:
    """(domain, prompt) pairs, ``per_domain`` of each (fewer where a domain has fewer), shuffled
    with ``seed`` so that any leading slice — the trainer holds out the first tenth — mixes them.
    ``gsm8k_questions``: as for ``domain_prompts`` (the caller sampled them once)."""
    pairs = [(d, p) for d in domains for p in domain_prompts(d, data, per_domain, seed, gsm8k_questions)]
    random.Random(seed).shuffle(pairs)
    return pairs
