"""Seeded generator of variable-chain programs: arithmetic with a verifiable answer and a knob for
difficulty.

A program is a list of assignments over single-letter variables, mod 10, in an order where every
variable is defined before it is used, followed by a query::

    q=4;x=q*3;b=7;m=x+5;b?      → answer "7"  (1 hop)
    q=4;x=q*3;b=7;m=x+5;m?      → answer "7"  (3 hops: q → x → m)

The queried variable's chain has ``hops`` links; the other assignments are distractor chains
interleaved with it. Answering needs one lookup per link, so harder items need more sequential
computation — the property a recurrent-depth model must show (more core iterations help).
Everything here is pure and seeded; it knows nothing about models beyond the vocabulary.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

VOCAB = "_.abcdefghijklmnopqrstuvwxyz0123456789=+-*;?"  # 0 = padding, 1 = end of answer
PAD, END = 0, 1
STATEMENTS = 8  # assignments per program; the hardest item is one 8-link chain
PROMPT_LEN = STATEMENTS * 6 + 2  # "v=a+d;" × 8 + "v?"
_OPS = {"+": lambda a, b: (a + b) % 10, "-": lambda a, b: (a - b) % 10, "*": lambda a, b: (a * b) % 10}


@dataclass(frozen=True)
class ChainItem:
    prompt: str
    answer: str  # one digit
    hops: int
    values: str = ""  # the value of each statement, in prompt order (dense training targets)


def _chain(rng: random.Random, names: list[str], values: dict[str, int]) -> list[str]:
    """Assignments defining names[0] = const, names[i] = names[i-1] op digit."""
    out = []
    for i, name in enumerate(names):
        digit = rng.randrange(10)
        if i == 0:
            values[name] = digit
            out.append(f"{name}={digit}")
        else:
            op = rng.choice("+-*")
            if op == "*":  # multiply by a unit of Z/10 only, so no link short-circuits the chain
                digit = rng.choice((3, 7, 9))
            values[name] = _OPS[op](values[names[i - 1]], digit)
            out.append(f"{name}={names[i - 1]}{op}{digit}")
    return out


def make_item(rng: random.Random, hops: int) -> ChainItem:
    if not 1 <= hops <= STATEMENTS:
        raise ValueError(f"hops must be in 1..{STATEMENTS}, got {hops}")
    names = rng.sample("abcdefghijklmnopqrstuvwxyz", STATEMENTS)
    values: dict[str, int] = {}
    chains = [_chain(rng, names[:hops], values)]
    rest = names[hops:]
    while rest:  # distractor chains of random length
        n = rng.randint(1, len(rest))
        chains.append(_chain(rng, rest[:n], values))
        rest = rest[n:]
    order = [i for i, c in enumerate(chains) for _ in c]
    rng.shuffle(order)  # interleave, keeping each chain's own order
    cursors = [0] * len(chains)
    statements = []
    for i in order:
        statements.append(chains[i][cursors[i]])
        cursors[i] += 1
    target = names[hops - 1]
    per_statement = "".join(str(values[st[0]]) for st in statements)
    return ChainItem(";".join(statements) + f";{target}?", str(values[target]), hops, per_statement)


def make_items(seed: int, n: int, levels: range | list[int] = range(1, STATEMENTS + 1)) -> list[ChainItem]:
    """``n`` items, difficulty levels spread evenly (round-robin), reproducible from ``seed``."""
    rng = random.Random(seed)
    levels = list(levels)
    return [make_item(rng, levels[i % len(levels)]) for i in range(n)]


def answer_of(text: str) -> str | None:
    """The digit a model answered (its first character), or None."""
    text = text.strip()
    return text[0] if text and text[0].isdigit() else None
