from dataengine.checks.code_answer import parse_code_answer

GOOD = """### Problem
Write `add(a, b)` that returns the sum of two numbers.

### Solution
```python
def add(a, b):
    return a + b
```

### Tests
```python
assert add(1, 2) == 3
assert add(-1, 1) == 0
```
"""


def test_well_formed_answer():
    parsed = parse_code_answer(GOOD)
    assert parsed.ok
    assert parsed.problem.startswith("Write `add(a, b)`")
    assert parsed.solution == "def add(a, b):\n    return a + b"
    assert parsed.tests.splitlines() == ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]


def test_heading_variants_are_accepted():
    text = (
        GOOD.replace("### Problem", "**Problem:**")
        .replace("### Solution", "## Solution")
        .replace("### Tests", "Unit tests:")
    )
    parsed = parse_code_answer(text)
    assert parsed.ok, parsed.parse_error
    assert "return a + b" in parsed.solution


def test_missing_fence_uses_section_text():
    text = "### Problem\nSum.\n### Solution\ndef add(a, b):\n    return a + b\n### Tests\nassert add(1, 1) == 2\n"
    parsed = parse_code_answer(text)
    assert parsed.ok and parsed.solution.startswith("def add")


def test_unclosed_fence_at_end_still_parses():
    parsed = parse_code_answer(GOOD.rstrip().removesuffix("```"))
    assert parsed.ok and parsed.tests.endswith("== 0")


def test_missing_sections_are_named():
    parsed = parse_code_answer("```python\ndef f():\n    pass\n```")
    assert not parsed.ok and parsed.parse_error == "missing section(s): problem, solution, tests"
    parsed = parse_code_answer(GOOD.split("### Tests")[0])
    assert parsed.parse_error == "missing section(s): tests"
    assert parsed.solution is not None


def test_syntax_error_is_reported_with_line():
    parsed = parse_code_answer(GOOD.replace("return a + b", "return a +"))
    assert not parsed.ok and parsed.parse_error.startswith("solution does not parse") and "line 2" in parsed.parse_error


def test_tests_without_assert():
    parsed = parse_code_answer(GOOD.replace("assert add(1, 2) == 3\nassert add(-1, 1) == 0", "print(add(1, 2))"))
    assert parsed.parse_error == "tests contain no assert"


def test_empty_sections():
    parsed = parse_code_answer("### Problem\n\n### Solution\n```python\n```\n### Tests\nassert True\n")
    assert not parsed.ok and "problem" in parsed.parse_error


def test_the_structured_output_layout_is_what_the_parser_reads():
    import re

    from dataengine.checks.code_answer import layout_regex

    LAYOUT_REGEX = layout_regex(512)

    good = (
        "### Problem\nWrite add(a, b) that returns the sum.\n\n"
        "### Solution\n```python\ndef add(a, b):\n    return a + b\n```\n\n"
        "### Tests\n```python\nassert add(1, 2) == 3\nassert add(0, 0) == 0\n```"
    )
    assert re.fullmatch(LAYOUT_REGEX, good)
    parsed = parse_code_answer(good)
    assert parsed.ok and parsed.solution.startswith("def add") and parsed.tests.count("assert") == 2
    # what the regex keeps out: the request's placeholder as the problem, prose as the solution, no assert
    assert not re.fullmatch(LAYOUT_REGEX, good.replace("Write add(a, b)", "<the task in two sentences>"))
    assert not re.fullmatch(LAYOUT_REGEX, good.replace("def add(a, b):\n", "The function adds.\n"))
    assert not re.fullmatch(LAYOUT_REGEX, good.replace("assert add(1, 2) == 3\nassert add(0, 0) == 0\n", "add(1, 2)\n"))
    # each part is bounded by the answer's token cap: a problem that rambles on does not fit a small cap
    rambling = good.replace("Write add(a, b) that returns the sum.", "Write add(a, b). " * 20)
    assert re.fullmatch(LAYOUT_REGEX, rambling) and not re.fullmatch(layout_regex(128), rambling)


def test_the_exact_layout_wins_over_heading_like_text_in_the_problem():
    text = (
        "### Problem\n**Problem: Write double(x).\n**Solution:\n\n"
        "### Solution\n```python\ndef double(x):\n    return 2 * x\n```\n\n"
        "### Tests\n```python\nassert double(2) == 4\n```"
    )
    parsed = parse_code_answer(text)
    assert parsed.ok, parsed.parse_error
    assert parsed.solution == "def double(x):\n    return 2 * x" and parsed.tests.strip() == "assert double(2) == 4"
    assert parsed.problem.startswith("**Problem: Write double(x).")
