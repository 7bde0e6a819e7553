"""Reading the answer a text commits to: one parser for training labels, collection and the IDK
step, so all three grade an answer the same way (stdlib only; imports nothing from the package)."""

from __future__ import annotations

import math
import re

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
# A marked final answer: GSM8K's "#### 72", "the answer is 72", "Answer: $72", LaTeX's \boxed{72}.
MARKED = re.compile(r"(?:####|answer is|answer:|\\boxed\{)\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)


def final_number(text: str) -> float | None:
    """The marked final answer (the last one), else the last number in the text; None when there
    is none or it is not finite (a run of hundreds of digits parses to inf)."""
    marked = MARKED.findall(text)
    raw = marked[-1] if marked else (NUMBER.findall(text) or [None])[-1]
    if raw is None:
        return None
    try:
        value = float(raw.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def marked_finals(text: str) -> list[str]:
    """Every marked final answer, as written (several distinct ones: the text hedges)."""
    return MARKED.findall(text)
