"""Checking generated Python: extract the code from a chat answer, build the program that runs the
prompt's own examples (``>>>`` lines and ``assert`` lines a user of the endpoint wrote or saw,
never hidden tests), and run it in the sandbox (``ladder.sandbox``).

``python_examples(prompt, answer)`` is the verifier signal of the IDK step (``verifier:
python_examples`` on a rung): whether the answer's code parses, how many examples the prompt
holds, and the share of them the code passes — a self-verification probability in AutoMix's
sense, computed by execution rather than by asking the model. Offline it is a feature of
collected outcomes; online the tier computes it next to the answer (``Generation.signals``).
Stdlib only, like the sandbox.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass

from ladder.sandbox import SandboxLimits, run_python

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(answer: str) -> str:
    """The first fenced code block of a chat answer (the whole text when there is none)."""
    m = _FENCE.search(answer)
    return (m.group(1) if m else answer).strip("\n") + "\n"


def complete_program(prompt: str, answer: str, entry_point: str | None) -> str:
    """The prompt's code (imports, helpers, signature) followed by the answer's: a whole function
    from the answer redefines the prompt's, a bare body continues it."""
    code = extract_code(answer)
    if entry_point and re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        return prompt.rstrip() + "\n    pass\n\n" + code
    if not entry_point and parses(code) and re.search(r"^\s*def\s", code, re.MULTILINE):
        return code  # online: the user's prompt is chat text; the answer's code must stand alone
    return prompt + code


def parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def docstring_examples(prompt: str) -> list[tuple[str, str]]:
    """(source, expected output) of every ``>>>`` example in the prompt's text. Read line by line
    (doctest's own parser gives up on a chat prompt whose code fence closes at column 0): an
    example is a ``>>>`` line plus ``...`` continuations, its output the following lines at the
    same indentation up to a blank line, the next example, or the docstring's closing quotes."""
    lines, out, i = prompt.splitlines(), [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)>>> ?(.*)$", lines[i])
        if not m:
            i += 1
            continue
        indent, source = m.group(1), [m.group(2)]
        i += 1
        while i < len(lines) and re.match(rf"^{re.escape(indent)}\.\.\. ?", lines[i]):
            source.append(re.sub(rf"^{re.escape(indent)}\.\.\. ?", "", lines[i]))
            i += 1
        want = []
        while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
            text = lines[i][len(indent) :]
            if text.lstrip().startswith((">>>", '"""', "'''", "```")):
                break
            want.append(text)
            i += 1
        if want:
            out.append(("\n".join(source) + "\n", "\n".join(want) + "\n"))
    return out


_ASSERT = re.compile(r"^\s*(assert\s+.+?)\s*$")


def assert_examples(prompt: str) -> list[tuple[str, None]]:
    """(statement, None) of every ``assert`` line the prompt shows (MBPP-style "Your code should
    pass these tests: assert f(3) == 9"): an example that passes when it runs without error.
    Lines that do not parse alone (an assert split across lines) are left out."""
    out = []
    for line in prompt.splitlines():
        m = _ASSERT.match(line)
        if m and parses(m.group(1)):
            out.append((m.group(1) + "\n", None))
    return out


_RUNNER = """
import doctest, json, sys
_examples = json.loads({examples!r})
_passed = 0
_checker = doctest.OutputChecker()
for _src, _want in _examples:
    if _want is None:  # an assert line: passes when it runs
        try:
            exec(compile(_src, "<assert>", "exec"), globals())
            _passed += 1
        except BaseException:
            pass
        continue
    try:
        _value = eval(compile(_src, "<example>", "eval"), globals())
    except Exception:
        continue
    if _checker.check_output(_want, repr(_value) + "\\n", doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE):
        _passed += 1
        continue
    try:  # the docstring may quote a value another way ("21" for '21'): compare as literals
        import ast as _ast
        _passed += _ast.literal_eval(_want.strip()) == _value
    except Exception:
        pass
print("LADDER-EXAMPLES " + json.dumps([_passed, len(_examples)]))
"""


@dataclass(frozen=True)
class VerifierSignals:
    code_parses: float  # 1.0 / 0.0
    examples: float  # how many examples the prompt shows (``>>>`` lines and ``assert`` lines)
    examples_passed: float  # share passed (0.0 when there are none or the code does not run)
    seconds: float  # wall time of the check (sandbox start included)

    def as_dict(self) -> dict[str, float]:
        return {
            "code_parses": self.code_parses,
            "examples": self.examples,
            "examples_passed": self.examples_passed,
            "verify_s": self.seconds,
        }


def python_examples(
    prompt: str,
    answer: str,
    entry_point: str | None = None,
    limits: SandboxLimits = SandboxLimits(timeout_s=5, cpu_s=3),
) -> VerifierSignals:
    program = complete_program(prompt, answer, entry_point)
    ok = parses(program)
    examples = docstring_examples(prompt) + assert_examples(prompt)
    if not ok or not examples:
        return VerifierSignals(float(ok), float(len(examples)), 0.0, 0.0)
    result = run_python(program + "\n" + _RUNNER.format(examples=json.dumps(examples)), limits)
    passed = 0.0
    for line in result.stdout.splitlines():
        if line.startswith("LADDER-EXAMPLES "):
            n, total = json.loads(line[16:])
            passed = n / total if total else 0.0
    return VerifierSignals(1.0, float(len(examples)), passed, result.seconds)


# Verifiers a rung may opt into (``verifier:`` in a tier's config) and collected outcomes record:
# name -> (query text, answer text) -> signals.
VERIFIERS = {
    "python_examples": lambda prompt, answer: python_examples(prompt, answer).as_dict(),
}
