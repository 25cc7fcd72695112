"""A scheduled run over a fixed prompt file asks only the prompts the published dataset has no answer to."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dataengine.generate.seeds import PromptSeed
from dataengine.generate.stage import GenerateStage, _Skipped
from dataengine.recipe import parse_recipe
from dataengine.target.existing import answered_prompts, prompt_hash
from tests.conftest import MINIMAL


def _published(folder: Path, prompts: list[str]) -> None:
    data = folder / "data" / "default"
    data.mkdir(parents=True)
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "a"}]} for p in prompts]
    pq.write_table(pa.Table.from_pylist(rows), data / "train-00000-of-00001.parquet")


def _recipe(tmp_path: Path, extra: str = "", append: str = "true"):
    (tmp_path / "p.jsonl").write_text('{"prompt": "old?"}\n{"prompt": "new?"}\n')
    text = MINIMAL + f"  sources: [{{path: p.jsonl}}]\n{extra}curate: {{}}\npublish: {{to: out, append: {append}}}\n"
    return parse_recipe(text.replace("name: t", "name: t\npipeline: curate"), base_dir=tmp_path)


def test_the_prompts_a_target_answers_are_read_from_its_rows(tmp_path):
    _published(tmp_path / "out", ["old?", " spaced? "])
    recipe = _recipe(tmp_path)
    answered = answered_prompts(recipe.publish, tmp_path, tmp_path / "cache")
    assert answered == {prompt_hash("old?"), prompt_hash("spaced?")}
    assert (
        answered_prompts(recipe.publish.model_copy(update={"to": str(tmp_path / "empty")}), tmp_path, tmp_path) == set()
    )


def test_answered_source_prompts_are_skipped_and_counted(tmp_path):
    skipped = _Skipped({prompt_hash("old?")})
    seeds = [
        PromptSeed("chat", "answer", "en", None, "old?", 1),
        PromptSeed("chat", "answer", "en", None, "new?", 1),
        PromptSeed("chat", "instruct_answer", "en", "topic", "old?", 1),  # a meta-prompt is never skipped
    ]
    assert [s.prompt for s in skipped.filter(seeds)] == ["new?", "old?"]
    assert skipped.prompts == 1


def test_only_an_appending_run_with_prompt_files_looks(tmp_path):
    from dataengine.stage import RunContext

    _published(tmp_path / "out", ["old?"])
    ctx = RunContext(None, tmp_path, tmp_path / "run", None, "r", None)
    assert GenerateStage(_recipe(tmp_path), tmp_path)._answered(ctx) == {prompt_hash("old?")}
    assert GenerateStage(_recipe(tmp_path, append="false"), tmp_path)._answered(ctx) == set()
    again = _recipe(tmp_path, extra="  answer_again: true\n")
    assert GenerateStage(again, tmp_path)._answered(ctx) == set()
