"""Seeded generator of left-to-right arithmetic: a verifiable answer and a knob for difficulty.

An item is a chain of single-digit operations evaluated from left to right, mod 10::

    7+3=          → 0                       (1 operation)
    7+3*9-4+8=    → ((((7+3)*9)-4)+8) % 10 = 4   (4 operations)

Each operation depends on the result of the one before, so an item with n operations needs n
sequential steps: more operations need more computation, which a recurrent-depth model can buy
with more core iterations. Multiplication is by 3, 7 or 9 only (units mod 10), so no operation
erases what came before. ``values`` holds the running result after every operation (dense
training targets). Everything here is pure and seeded; it knows nothing about models.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

VOCAB = "_.0123456789+-*="  # 0 = padding, 1 = end of answer
PAD, END = 0, 1
MAX_OPS = 12
PROMPT_LEN = 2 * MAX_OPS + 2  # first digit, MAX_OPS × (op digit), "="
OPERATORS = "+-*"


@dataclass(frozen=True)
class ArithItem:
    prompt: str
    answer: str  # one digit
    ops: int  # difficulty: the number of operations
    values: str  # running result after each operation, one digit each


def make_item(rng: random.Random, ops: int, operators: str = OPERATORS) -> ArithItem:
    """One item with ``ops`` operations drawn from ``operators`` (a subset of "+-*"; "+" alone is
    a running sum mod 10, the easiest table to learn)."""
    if not 1 <= ops <= MAX_OPS:
        raise ValueError(f"ops must be in 1..{MAX_OPS}, got {ops}")
    if not operators or set(operators) - set(OPERATORS):
        raise ValueError(f"operators must be a non-empty subset of {OPERATORS!r}, got {operators!r}")
    value = rng.randrange(10)
    text, values = [str(value)], []
    for _ in range(ops):
        op = rng.choice(operators)
        digit = rng.choice((3, 7, 9)) if op == "*" else rng.randrange(10)
        value = {"+": value + digit, "-": value - digit, "*": value * digit}[op] % 10
        text.append(f"{op}{digit}")
        values.append(str(value))
    return ArithItem("".join(text) + "=", str(value), ops, "".join(values))


def make_items(
    seed: int, n: int, levels: range | list[int] = range(1, MAX_OPS + 1), operators: str = OPERATORS
) -> list[ArithItem]:
    """``n`` items, difficulty levels spread evenly (round-robin), reproducible from ``seed``."""
    rng = random.Random(seed)
    levels = list(levels)
    return [make_item(rng, levels[i % len(levels)], operators) for i in range(n)]
