from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dataengine.recipe import load_recipe

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


# every curation filter off: what the teacher writes reaches dedup, where the incremental tests look
FILTERS_OFF = (
    "{truncated: {enabled: false}, length: {enabled: false}, refusal: {enabled: false}, question: {enabled: false}, "
    "repetition: {enabled: false}, language: {enabled: false}, prose_quality: {enabled: false}}"
)

TINY = """
name: tiny
teacher:
  model: builtin:smollm2-moe
  {endpoint}
  vllm: {{enforce_eager: true, max_model_len: 1024}}
generate:
  sampling: {{max_tokens: 40, temperature: {temperature}, frequency_penalty: {penalty}}}
  chat:
    languages:
      - {{code: en, quota: {quota}}}
      - {{code: fr, quota: {quota}}}
      - {{code: zh, quota: {quota}}}
    question_max_tokens: 32
    rollouts: 2
  code: {{count: {code}, max_tokens: 64}}
  max_concurrent_requests: {concurrency}
  records_per_chunk: {chunk}
"""


def tiny_recipe(
    folder: Path,
    endpoint: str | None = None,
    quota: int = 2,
    code: int = 2,
    concurrency: int = 16,
    chunk: int = 4,
    temperature: float = 0.8,
    penalty: float = 0.0,
    extra: str = "",
) -> Path:
    text = TINY.format(
        endpoint=f"endpoint: {endpoint}" if endpoint else "",
        quota=quota,
        code=code,
        concurrency=concurrency,
        chunk=chunk,
        temperature=temperature,
        penalty=penalty,
    )
    path = folder / "tiny.yaml"
    path.write_text(textwrap.dedent(text) + textwrap.dedent(extra))
    return path


@pytest.fixture(scope="session")
def teacher_server(tmp_path_factory):
    """One vLLM server with the builtin teacher, shared by the end-to-end tests that use `endpoint`."""
    from dataengine.teacher.server import TeacherServer

    folder = tmp_path_factory.mktemp("server")
    recipe = load_recipe(tiny_recipe(folder))
    with TeacherServer(recipe.teacher, folder / "server.log") as server:
        yield server
