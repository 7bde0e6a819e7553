"""The IDK step (Wang et al. 2017): after a rung answers, accept or escalate from the answer itself.

Signals are computed from what any rung returns — the text, per-token log-probabilities when the
backend reports them, and the router's prior score — and a fitted logistic model turns them into
P(this answer is as good as the next rung's). Signals a training set lacks (the RouteLLM data has
no log-probabilities) are constant there, so the fitted weight on them is zero and they do no harm.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ladder.answers import final_number, marked_finals
from ladder.policies.linear import LinearScorer

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_HEDGES = (
    "however",
    "assume",
    "approximately",
    "cannot",
    "can't",
    "not possible",
    "unclear",
    "round",
    "actually",
    "wait",
    "mistake",
    "re-evaluate",
    "recalculate",
    "but since",
)


_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")  # GSM8K-style calculator marks <<3*4=12>>
_EQUATION = re.compile(
    r"((?:\d[\d,]*\.?\d*|\(|\))(?:\s*(?:[-+*/x×÷]|\(|\))\s*(?:\$?\d[\d,]*\.?\d*|\(|\)))+)\s*=\s*\$?(-?\d[\d,]*\.?\d*)"
)
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.USub: operator.neg,
}


def _evaluate(node: ast.AST) -> float:
    """Arithmetic only (numbers, + - * /, parentheses): anything else raises."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.operand))
    raise ValueError("not arithmetic")


def arithmetic_check(text: str) -> tuple[int, int]:
    """(wrong, right) equations the answer writes out, e.g. "16 - 3 = 13" or <<9*2=18>>."""
    pieces = [f"{a} = {b}" for a, b in _ANNOTATION.findall(text)] + [_ANNOTATION.sub("", text)]
    wrong = right = 0
    for match in (m for p in pieces for m in _EQUATION.finditer(p)):
        expr = match.group(1).replace(",", "").replace("$", "")
        expr = expr.replace("x", "*").replace("×", "*").replace("÷", "/")
        try:
            value = _evaluate(ast.parse(expr, mode="eval").body)
            claimed = float(match.group(2).replace(",", "").rstrip("."))
        except (ValueError, SyntaxError, ZeroDivisionError, OverflowError):
            continue
        if abs(value - claimed) <= 1e-2 * max(1.0, abs(claimed)):
            right += 1
        else:
            wrong += 1
    return wrong, right


@dataclass(frozen=True)
class AnswerView:
    text: str
    logprobs: tuple[float, ...] = ()
    prior: float = 0.5  # the router's P(this rung is good enough)
    verified: tuple[tuple[str, float], ...] = ()  # the rung's verifier signals (Generation.signals)

    def signal(self, name: str) -> float:
        return dict(self.verified).get(name, 0.0)


def _mean_lp(a: AnswerView) -> float:
    return float(np.mean(a.logprobs)) if a.logprobs else 0.0


def _min_lp(a: AnswerView) -> float:
    return float(np.min(a.logprobs)) if a.logprobs else 0.0


def _p10_lp(a: AnswerView) -> float:
    return float(np.percentile(a.logprobs, 10)) if a.logprobs else 0.0


# An answer that is an option letter ("C", "(C)", "C. text"): a multiple-choice reply, whose
# first token's log-probability is the confidence in the choice. A separate signal (not only
# first_logprob) because a linear IDK model mixes domains: the first token of code or of a
# worked solution says little, of a letter nearly everything.
_CHOICE = re.compile(r"^\s*\(?[A-J]\)?(?:[.:)](?:\s|$)|$)")


def _choice(a: AnswerView) -> float:
    return float(bool(_CHOICE.match(a.text)))


def _integer_answer(a: AnswerView) -> float:
    x = final_number(a.text)
    return float(x is not None and abs(x - round(x)) < 1e-9)


SIGNALS: dict[str, Callable[[AnswerView], float]] = {
    # The first token carries a multiple-choice answer's letter: its log-probability is the
    # model's confidence in the choice itself.
    "first_logprob": lambda a: float(a.logprobs[0]) if a.logprobs else 0.0,
    "choice_answer": _choice,
    "choice_logprob": lambda a: float(a.logprobs[0]) * _choice(a) if a.logprobs else 0.0,
    "mean_logprob": _mean_lp,
    "min_logprob": _min_lp,
    "p10_logprob": _p10_lp,
    "log_chars": lambda a: math.log1p(len(a.text)),
    "log_lines": lambda a: math.log1p(a.text.count("\n")),
    "has_marked_final": lambda a: float(bool(marked_finals(a.text))),
    "has_number": lambda a: float(final_number(a.text) is not None),
    "integer_answer": _integer_answer,
    "negative_answer": lambda a: float((final_number(a.text) or 0) < 0),
    "log_numbers": lambda a: math.log1p(len(_NUMBER.findall(a.text))),
    "distinct_final_claims": lambda a: float(len(set(marked_finals(a.text)))),
    "hedges": lambda a: float(sum(a.text.lower().count(h) for h in _HEDGES)),
    "wrong_equations": lambda a: float(arithmetic_check(a.text)[0]),
    "right_equations": lambda a: math.log1p(arithmetic_check(a.text)[1]),
    # The python_examples verifier (ladder.verify): the answer's code parses; the prompt has >>>
    # examples; the share of them the code passes, and whether it fails any.
    "code_parses": lambda a: a.signal("code_parses"),
    "has_examples": lambda a: float(a.signal("examples") > 0),
    "examples_passed": lambda a: a.signal("examples_passed"),
    "examples_failed": lambda a: float(a.signal("examples") > 0 and a.signal("examples_passed") < 1),
    "prior": lambda a: a.prior,
    "prior_logit": lambda a: math.log(max(a.prior, 1e-6) / max(1 - a.prior, 1e-6)),
}


def signal_matrix(answers: Sequence[AnswerView], names: Sequence[str]) -> np.ndarray:
    return np.array([[SIGNALS[n](a) for n in names] for a in answers], dtype=np.float64)


@dataclass(frozen=True)
class IdkModel:
    """P(accept) for one rung's answers."""

    signals: tuple[str, ...]
    scorer: LinearScorer

    def proba(self, answers: Sequence[AnswerView]) -> np.ndarray:
        return self.scorer.proba(signal_matrix(answers, self.signals))


VERIFIER_SIGNALS = ("code_parses", "has_examples", "examples_passed", "examples_failed")
# what a rung's verifier must report for those signals (the names in Generation.signals)
VERIFIER_INPUTS = ("code_parses", "examples", "examples_passed")
