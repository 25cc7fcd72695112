from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

MINIMAL = """
name: t
teacher:
  model: builtin:smollm2-moe
generate:
  chat:
    languages:
      - {code: en, quota: 2}
"""


@pytest.fixture
def write_recipe(tmp_path: Path):
    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
