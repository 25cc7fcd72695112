"""Rows you bring (`ingest`): read as if generated, checked at validate, curated, published and trained on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dataengine.errors import RecipeError
from dataengine.ingest.stage import IngestStage, to_row
from dataengine.pipeline import build_pipeline, check_pipeline
from dataengine.recipe import RowSource, parse_recipe

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "dataengine" / "data" / "conversations.jsonl"
INGEST = """
name: t
pipeline: curate
teacher: {model: builtin:smollm2-moe}
ingest:
  sources: [{path: rows.jsonl, language_field: lang}]
curate: {}
"""


def test_a_recipe_gives_generate_or_ingest():
    with pytest.raises(RecipeError, match="give `generate` .* or `ingest`"):
        parse_recipe("name: t\nteacher: {model: builtin:smollm2-moe}\n")
    both = INGEST + "generate: {chat: {languages: [{code: en, quota: 1}]}}\n"
    with pytest.raises(RecipeError, match="one of them"):
        parse_recipe(both.replace("path: rows.jsonl", "dataset: org/rows"))


def test_the_pipeline_reads_ingested_rows_instead_of_generating(tmp_path):
    (tmp_path / "rows.jsonl").write_text(SHIPPED.read_text())
    recipe = parse_recipe(INGEST, base_dir=tmp_path)
    stages = build_pipeline(recipe, tmp_path).stages
    assert [s.name for s in stages] == ["ingest", "curate"]
    assert stages[1].inputs == {"rows": "ingested"}
    assert build_pipeline(recipe, tmp_path).next_round is None  # no quota to top up
    assert check_pipeline(recipe, tmp_path) == []
    generate_only = recipe.model_copy(update={"pipeline": "generate"})
    assert "pipeline generate needs a `generate` block" in " ".join(check_pipeline(generate_only, tmp_path))


def test_validate_reads_the_columns_it_will_need(tmp_path):
    (tmp_path / "rows.jsonl").write_text(json.dumps({"q": "Hi?", "a": "Hello there, how can I help?"}) + "\n")
    recipe = parse_recipe(
        INGEST.replace("language_field: lang", "prompt_field: q, answer_field: answer"), base_dir=tmp_path
    )
    assert IngestStage.check(recipe, tmp_path) == [
        "ingest.sources[0].answer_field: no column 'answer' in rows.jsonl (columns: q, a)"
    ]
    with pytest.raises(RecipeError, match="ingest.sources\\[0\\].path: not found"):
        parse_recipe(INGEST.replace("rows.jsonl", "missing.jsonl"), base_dir=tmp_path)


def test_rows_are_mapped_with_their_provenance_or_given_one():
    source = RowSource(path="rows.jsonl", prompt_field="q", answer_field="a", language="fr", model="m")
    row = to_row({"q": "Pourquoi ?", "a": "Parce que."}, source, 3, "run-1", "now")
    assert row["messages"] == [
        {"role": "user", "content": "Pourquoi ?"},
        {"role": "assistant", "content": "Parce que."},
    ]
    assert (row["language"], row["kind"], row["task"], row["teacher_model"], row["run_id"]) == (
        "fr",
        "chat",
        "ingested",
        "m",
        "run-1",
    )
    assert to_row({"q": "Pourquoi ?", "a": "  "}, source, 3, "run-1", "now") == "no_answer"
    # a row this engine published keeps its id and provenance
    ours = {**row, "id": "abc", "teacher_model": "builtin:smollm2-moe", "run_id": "run-0", "seed": 7}
    kept = to_row(ours, RowSource(path="x.jsonl", language_field="language"), 0, "run-1", "later")
    assert (kept["id"], kept["teacher_model"], kept["run_id"], kept["seed"], kept["task"]) == (
        "abc",
        "builtin:smollm2-moe",
        "run-0",
        7,
        "ingested",
    )
    turns = RowSource(path="x.jsonl")
    assert to_row({"messages": [{"role": "user", "content": "hi"}]}, turns, 0, "r", "t") == "no_conversation"


def _cli(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "dataengine.cli", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_the_shipped_curate_and_train_from_published_recipes_run_end_to_end(tmp_path):
    """recipes/curate-rows.yaml over the conversations the package ships, then
    recipes/train-from-published.yaml on what it published; no teacher server starts."""
    from datasets import load_dataset

    from dataengine.manifest import Manifest
    from dataengine.rows import read_rows

    published = tmp_path / "published"
    for name in ("curate-rows", "train-from-published"):
        text = (ROOT / "recipes" / f"{name}.yaml").read_text()
        text = text.replace("../dataengine/data/conversations.jsonl", str(SHIPPED))
        (tmp_path / f"{name}.yaml").write_text(text.replace("../runs/curate-rows/dataset", str(published)))

    shown = _cli("run", "curate-rows.yaml", cwd=tmp_path)
    run = tmp_path / "runs" / "curate-rows"
    ingested, curated = Manifest.read(run / "ingested"), Manifest.read(run / "curated")
    assert (ingested.rows_in, ingested.rows_out, ingested.drops) == (18, 17, {"no_answer": 1})
    assert curated.rows_in == 17 and curated.drops == {"exact_duplicate": 1, "wrong_language": 1, "refusal": 1}
    assert "starting vLLM" not in shown
    rows = load_dataset("parquet", data_dir=str(published / "data" / "default"))
    assert sum(len(split) for split in rows.values()) == curated.rows_out == 14
    assert "Conversations from" in (published / "README.md").read_text()

    shown = _cli("run", "train-from-published.yaml", cwd=tmp_path)
    trained = tmp_path / "runs" / "train-from-published"
    again = read_rows(trained / "ingested")
    # the published rows keep their ids and their provenance through a second ingest
    assert {r["id"] for r in again} == {r["id"] for split in rows.values() for r in split}
    assert {r["teacher_model"] for r in again} == {"hand-written"}
    assert (trained / "students" / "from-published" / "config.json").is_file()
    assert json.loads((trained / "eval" / "metrics.json").read_text())
    assert "Converting and de-quantizing" not in shown and "starting vLLM" not in shown
    assert _cli("run", "train-from-published.yaml", cwd=tmp_path).count("already done") == 4
