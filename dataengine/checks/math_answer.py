"""Reading and checking a math problem's final answer: the problem's own answer line, each solution's final answer,
and whether they agree, with Hugging Face's math-verify (which compares them as numbers, fractions, LaTeX
expressions and sets, not as strings).

Digits of other scripts (Arabic-Indic ١٢, Devanagari १२, full-width １２) are read as ASCII digits first, and in the
languages that write them, a decimal comma (0,5 in French or German) as a decimal point and a space between
thousands (1 500) as nothing, since math-verify reads none of them. Elsewhere a comma stays a comma: (1,2) is a
pair.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections.abc import Sequence
from typing import NamedTuple

# the last line of a written problem: its answer, labelled in one of the shipped languages
_ANSWER_LINE = re.compile(
    r"^\s*\**\s*(?:answer|final answer|réponse|respuesta|antwort|risposta|resposta|ответ|答案)\s*\**\s*[:：]"
    r"\s*\**\s*(.+?)\s*$",
    re.I | re.M,
)
# a comma between digits that is not a thousands separator (exactly three digits after it)
_DECIMAL_COMMA = re.compile(r"(?<=\d),(?=\d{1,2}(?!\d))")
# a space (plain, no-break, narrow no-break) between thousands: 1 500
_THOUSANDS_SPACE = re.compile(r"(?<=\d)[ \u00a0\u202f](?=\d{3}(?!\d))")
# the shipped languages that write a decimal comma
DECIMAL_COMMA = frozenset({"fr", "es", "de", "it", "pt", "ru"})


def ascii_digits(text: str, language: str = "en") -> str:
    """Decimal digits of any script as ASCII digits; in a language that writes them, a decimal comma as a point
    and thousands apart as one number."""
    text = "".join(str(unicodedata.decimal(c)) if c.isdecimal() and not c.isascii() else c for c in text)
    if language.split("-")[0].lower() in DECIMAL_COMMA:
        text = _DECIMAL_COMMA.sub(".", _THOUSANDS_SPACE.sub("", text))
    return text


def split_problem(text: str) -> tuple[str, str | None]:
    """A written problem as (the problem, its answer): the text before its last answer line, and that line's
    answer; (the text, None) without one."""
    lines = list(_ANSWER_LINE.finditer(text))
    if not lines:
        return text.strip(), None
    last = lines[-1]
    return text[: last.start()].strip(), last.group(1).strip()


class Check(NamedTuple):
    """One solution's final answer (as math-verify read it; None when it found none) and whether it is verified,
    with why."""

    final_answer: str | None
    verified: bool
    reason: str


def _timeout() -> int | None:
    """math-verify's timeout (its default, 5 s), on the main thread only: it is a signal.alarm, which other
    threads cannot set (there it is off, and the warning math-verify logs about it is not a user's concern)."""
    if threading.current_thread() is threading.main_thread():
        return 5
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return None


def _parse(text: str, language: str) -> list:
    from math_verify import parse

    return parse(ascii_digits(text, language), parsing_timeout=_timeout())


def _same(gold: list, answer: list) -> bool:
    from math_verify import verify

    return bool(verify(gold, answer, timeout_seconds=_timeout()))


def check_solutions(reference: str | None, solutions: Sequence[str], language: str = "en") -> list[Check]:
    """Each solution (written in `language`) checked against the problem's own answer; where that cannot be
    read, against the majority of the solutions (more than half of them agreeing, with at least two)."""
    finals = [_parse(s, language) for s in solutions]
    gold = _parse(reference, language) if reference else []
    shown = [str(f[-1]) if f else None for f in finals]
    if gold:
        return [
            Check(shown[i], True, "matches_reference")
            if f and _same(gold, f)
            else Check(shown[i], False, "differs_from_reference" if f else "no_final_answer")
            for i, f in enumerate(finals)
        ]
    agreeing = [sum(1 for g in finals if f and g and _same(f, g)) for f in finals]
    majority = max(agreeing, default=0)
    checks = []
    for i, f in enumerate(finals):
        if not f:
            checks.append(Check(None, False, "no_final_answer"))
        elif len(solutions) >= 2 and majority * 2 > len(solutions) and agreeing[i] == majority:
            checks.append(Check(shown[i], True, "matches_majority"))
        else:
            checks.append(Check(shown[i], False, "no_reference_or_majority"))
    return checks
