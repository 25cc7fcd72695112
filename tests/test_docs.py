"""The README and recipe reference stay true."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dataengine.reference import render

ROOT = Path(__file__).resolve().parent.parent


def test_recipe_reference_matches_schema():
    assert (ROOT / "docs" / "recipe-reference.md").read_text() == render(), (
        "run: dataengine reference > docs/recipe-reference.md"
    )


def test_every_schema_block_is_documented():
    text = render()
    for block in ("teacher", "teacher.vllm", "teacher.builtin", "generate.chat", "generate.code", "generate.sources[]"):
        assert f"## `{block}`" in text


def test_readme_commands_exist():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    help_text = subprocess.run(
        [sys.executable, "-m", "dataengine.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("validate", "plan", "run", "teacher", "reference"):
        assert f"dataengine {command}" in readme
        assert command in help_text
