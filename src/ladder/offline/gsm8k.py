"""GSM8K as the project reads it: questions, gold final answers (after ``####``), and scoring of a
free-text answer by its final number."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ladder.answers import final_number


@dataclass(frozen=True)
class Problem:
    question: str
    gold: float


def load(path: Path, limit: int | None = None) -> list[Problem]:
    """The problems of one GSM8K jsonl file (``question``, ``answer`` ending in ``#### N``), in file order."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"GSM8K file {path} not found (point --data at ../shared/data)")
    out = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            gold = final_number(row["answer"].split("####")[-1])
            if gold is not None:
                out.append(Problem(row["question"], gold))
            if limit and len(out) >= limit:
                break
    return out


def correct(text: str, gold: float) -> bool:
    x = final_number(text)
    return x is not None and abs(x - gold) < 1e-6
