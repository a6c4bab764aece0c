"""Verifiable rewards: pure functions of the generated text and the reference answer.

Gated by format like PRISM's: reward 1 when the completion has a closed reasoning block
``<think> ... </think>`` followed by exactly one ``Answer: X`` and X is correct, else 0.

- math: exact numeric equality (integers or decimals, compared exactly as Decimals);
- code_reasoning: the exact output string of the program;
- science: numeric within a relative tolerance (default 1%).

Only ASCII numerals count (an answer in full-width digits, U+FF10..U+FF19, is not the expected format); huge
numbers are compared exactly without overflow. Model output is never executed.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d+)?|\.\d+)$", re.A)


def extract_answer(completion: str) -> str | None:
    """The answer of a well-formed completion, else None.

    Well-formed: optional whitespace, ``<think>``, the reasoning (no second ``<think>``),
    ``</think>``, optional whitespace, the only ``Answer:`` of the text, spaces or tabs, the answer on
    that line, then nothing but whitespace. Read with string searches in time linear in the length
    of the completion (a regular expression with a lazy group took quadratic time on long ones).
    """
    if completion.count("Answer:") != 1:
        return None
    before, _, after = completion.partition("Answer:")
    block = before.strip()
    if not (block.startswith("<think>") and block.endswith("</think>") and len(block) >= 15):
        return None
    if "<think>" in block[len("<think>") : -len("</think>")]:
        return None
    line, newline, rest = after.lstrip(" \t").partition("\n")
    if newline and rest.strip():
        return None
    return line.rstrip()


def _number(s: str) -> Decimal | None:
    """Exact value of an ASCII decimal numeral (Decimal: exact, no digit limit, unlike int())."""
    s = s.strip()
    if not _NUMBER.match(s):
        return None
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


def is_correct(domain: str, answer: str, reference: str, rel_tol: float = 0.01) -> bool:
    if domain == "code_reasoning":
        return answer.strip() == reference.strip()
    a, r = _number(answer), _number(reference)
    if a is None or r is None:
        return False
    if domain == "science":
        return abs(a - r) <= Decimal(str(rel_tol)) * abs(r) if r != 0 else a == 0
    return a == r  # Decimal equality is exact whatever the context precision


def reward(domain: str, completion: str, reference: str, format_only: bool = False) -> float:
    """1.0 for a correct answer in the expected format, 0.0 otherwise (``format_only``: format alone)."""
    ans = extract_answer(completion)
    if ans is None:
        return 0.0
    if format_only:
        return 1.0
    return 1.0 if is_correct(domain, ans, reference) else 0.0
