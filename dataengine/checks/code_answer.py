"""Parse a teacher's structured code answer into problem, solution and tests.

Small teachers drift from the format (other heading levels, bold headings, a missing fence),
so parsing is lenient about the form (an answer in the exact layout, as structured outputs write it, is
read by its three headings alone) and strict about the content: each of the three parts must
be there and non-empty, otherwise `parse_error` says which part is wrong and curation drops the row.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

_HEADING = re.compile(
    r"^\s{0,3}(?:#{1,6}\s*|\*\*\s*)?(problem|solution|tests?|unit tests)\s*(?:\*\*)?\s*:?\s*(?:\*\*)?\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:\n```|\Z)", re.DOTALL | re.IGNORECASE)


# The layout parse_code_answer reads, as the regex vLLM's structured outputs hold a code answer to
# (generate.code.structured_output): a problem in prose (no backticks or headings) that is not the
# request's <placeholder>, a fenced solution that starts like Python, one to five assert lines. A finished
# answer always has the three parts; its code can still fail to parse or to pass, which curation checks.
# Each part is bounded by the answer's token cap (`max_tokens` x 3.5 characters: a quarter for the problem,
# half for the solution, 160-character asserts), so a small teacher that rambles in one part is made to move
# on instead of running into max_tokens: 5 of 8 quickstart code answers were cut off there before the bounds,
# 2 of 56 after.
CHARS_PER_TOKEN = 3.5


def layout_regex(max_tokens: int) -> str:
    chars = int(max_tokens * CHARS_PER_TOKEN)
    return (
        rf"### Problem\n[^\n`#<][^`#]{{0,{max(40, chars // 4)}}}\n\n"
        rf"### Solution\n```python\n(def |import |from )[^`]{{1,{max(80, chars // 2)}}}\n```\n\n"
        r"### Tests\n```python\n(assert [^\n`]{1,160}\n){1,5}```"
    )


@dataclass(frozen=True)
class CodeAnswer:
    problem: str | None
    solution: str | None
    tests: str | None
    parse_error: str | None

    @property
    def ok(self) -> bool:
        return self.parse_error is None


def _sections(text: str) -> dict[str, str]:
    found = list(_HEADING.finditer(text))
    sections: dict[str, str] = {}
    for i, match in enumerate(found):
        name = match.group(1).lower()
        name = "tests" if name.startswith(("test", "unit")) else name
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        sections.setdefault(name, text[match.end() : end].strip())
    return sections


def _code(section: str) -> str | None:
    """The fenced block of a section, or the section itself when the teacher forgot the fence."""
    fenced = _FENCE.search(section)
    code = fenced.group(1) if fenced else section
    code = code.strip("\n")
    return code if code.strip() else None


# the exact layout, as structured outputs write it: its three headings are the sections, whatever heading-like
# text (a bold "**Solution:") the problem itself holds
_EXACT = re.compile(
    r"### Problem\n(?P<problem>.*?)\n\n### Solution\n```python\n(?P<solution>.*?)\n```\n\n"
    r"### Tests\n```python\n(?P<tests>.*?)```\s*",
    re.DOTALL,
)


def parse_code_answer(text: str) -> CodeAnswer:
    exact = _EXACT.fullmatch(text.strip())
    if exact and exact["problem"].strip():
        problem = exact["problem"].strip()
        solution, tests = (exact[name].strip("\n") or None for name in ("solution", "tests"))
    else:
        sections = _sections(text)
        missing = [name for name in ("problem", "solution", "tests") if not sections.get(name)]
        if missing:
            return CodeAnswer(
                sections.get("problem") or None,
                _code(sections["solution"]) if sections.get("solution") else None,
                _code(sections["tests"]) if sections.get("tests") else None,
                f"missing section(s): {', '.join(missing)}",
            )
        problem, solution, tests = sections["problem"], _code(sections["solution"]), _code(sections["tests"])
    for name, code in (("solution", solution), ("tests", tests)):
        if code is None or not code.strip():
            return CodeAnswer(problem, solution, tests, f"{name} has no code")
        try:
            ast.parse(code)
        except SyntaxError as exc:
            return CodeAnswer(problem, solution, tests, f"{name} does not parse: {exc.msg} (line {exc.lineno})")
    if "assert" not in tests:
        return CodeAnswer(problem, solution, tests, "tests contain no assert")
    return CodeAnswer(problem, solution, tests, None)
