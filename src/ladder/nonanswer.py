"""Non-answers: texts that are not an answer to the question, whatever their log-probabilities say.

The IDK step's learned models were fitted on greedy answers to math and code questions; served on
everyday prompts they accepted a refusal ("I'm sorry, but I can't assist with that.") to "Who
wrote 'Pride and Prejudice'?", a question back, and — at the temperature of 1.0 that clients get
when they send none — "Alright, I'll see you in my next conversation…" to "What is 2+2?". A
confident non-answer is still a non-answer, so this rule runs before any learned model and the
cascade never accepts one from a rung that may escalate (the top rung's answer stands: nothing is
above it). The same rule runs in serving (``ladder.router``) and in the offline replay that
calibrates thresholds, so both see the same decisions.

The kinds, each a plain test on the text (stdlib only, so it is cheap enough to run per request):
- ``empty``: nothing but whitespace and punctuation;
- ``refusal``: the answer opens by declining ("I'm sorry, but I can't…", "As an AI…");
- ``question_back``: a short answer that ends by asking the user a question;
- ``no_code``: the question asks for code (a function signature or "write a … function") and the
  answer holds none;
- ``no_number``: the question is arithmetic (digits with an operator, or "how many/much" with
  digits) and the answer is prose (three words or more) with no number at all.

Truncation (``finish_reason == "length"``) is deliberately not a kind: the client's ``max_tokens``
cuts every rung alike, so escalating truncated answers would send every short-budget request to
the top rung for an answer truncated the same way.
"""

from __future__ import annotations

import re

_REFUSAL = re.compile(
    r"^\W*(?:"
    r"(?:i'?m|i am)\s+(?:so\s+|very\s+)?sorry,?\s+(?:but\s+)?(?:i|as an ai)"
    r"|i\s+apologi[sz]e,?\s+(?:but\s+)?i"
    r"|i\s+(?:can(?:no|')t|cannot|won'?t|am\s+(?:not\s+able|unable))\s+(?:assist|help|provide|answer|comply|"
    r"do\s+that|fulfil|respond|engage|support)"
    r"|(?:i'?m|i am)\s+(?:not\s+able|unable)\s+to"
    r"|as\s+an\s+ai(?:\s+language\s+model)?\b"
    r"|sorry,?\s+(?:but\s+)?i\s+(?:can(?:no|')t|cannot|am\s+unable)"
    r")",
    re.IGNORECASE,
)
_CODE_ASKED = re.compile(
    r"(?:^|\n)\s*def\s+\w+\s*\(|```|\b(?:write|implement|complete|code)\s+(?:a|an|the|this)?\s*"
    r"(?:python\s+)?(?:function|class|program|script|method)\b",
    re.IGNORECASE,
)
_CODE_GIVEN = re.compile(r"```|\bdef\s+\w+\s*\(|\breturn\b|\bclass\s+\w+|\bimport\s+\w+|\bfor\s+\w+\s+in\b|=\s*\S")
_ARITHMETIC = re.compile(r"\d\s*[-+*/×÷^]\s*\d|\bhow\s+(?:many|much)\b[^?]*\d|\d[^?]*\bhow\s+(?:many|much)\b", re.I)
_NUMBER_WORDS = re.compile(
    r"\d|\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|"
    r"hundred|thousand|million|half|none)\b",
    re.IGNORECASE,
)
QUESTION_BACK_MAX_CHARS = 300  # a long answer that ends with "Anything else?" still answered


def non_answer(question: str, answer: str) -> str | None:
    """The kind of non-answer ``answer`` is to ``question`` (the module's list), or None for an answer."""
    text = answer.strip()
    if not re.search(r"\w", text):
        return "empty"
    if refuses(text):
        return "refusal"
    if len(text) <= QUESTION_BACK_MAX_CHARS and text.rstrip(" \"'*)…").endswith("?"):
        return "question_back"
    if _CODE_ASKED.search(question):  # (a code question's examples are arithmetic: no number rule)
        return None if _CODE_GIVEN.search(text) else "no_code"
    # (a bare word or letter — "Four.", a multiple-choice "C" — is let through: only prose that
    # avoids every number is a non-answer to arithmetic)
    if _ARITHMETIC.search(question) and len(text.split()) >= 3 and not _NUMBER_WORDS.search(text):
        return "no_number"
    return None


def refuses(prefix: str) -> bool:
    """Whether the first tokens of an answer already decline (a streamed prefix can be judged on
    this much; the other kinds need the whole answer)."""
    return bool(_REFUSAL.match(prefix.strip()[:200]))
