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
    row = to_row({"q": "Pourquoi ?", "a": "Parce que."}, source, "rows.jsonl#3", "run-1", "now")
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
    assert to_row({"q": "Pourquoi ?", "a": "  "}, source, "rows.jsonl#3", "run-1", "now") == "no_answer"
    # a row this engine published keeps its id and provenance
    ours = {**row, "id": "abc", "teacher_model": "builtin:smollm2-moe", "run_id": "run-0", "seed": 7}
    kept = to_row(ours, RowSource(path="x.jsonl", language_field="language"), "x.jsonl#0", "run-1", "later")
    assert (kept["id"], kept["teacher_model"], kept["run_id"], kept["seed"], kept["task"]) == (
        "abc",
        "builtin:smollm2-moe",
        "run-0",
        7,
        "ingested",
    )
    turns = RowSource(path="x.jsonl")
    assert to_row({"messages": [{"role": "user", "content": "hi"}]}, turns, "x#0", "r", "t") == "no_conversation"


def _turns(*pairs: tuple) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in pairs]}


def test_turns_that_are_not_a_conversation_are_counted_drops_never_kept():
    source = RowSource(path="x.jsonl")
    assert to_row(_turns(("user", None), ("assistant", "a")), source, "x#0", "r", "t") == "malformed_turns"
    assert to_row(_turns(("bot", "q"), ("assistant", "a")), source, "x#0", "r", "t") == "malformed_turns"
    assert to_row(_turns(("system", "s"), ("assistant", "a")), source, "x#0", "r", "t") == "no_prompt"
    parts = [{"type": "text", "text": "What "}, {"type": "text", "text": "is it?"}]
    row = to_row(_turns(("user", parts), ("assistant", "A thing.")), source, "x#0", "r", "t")
    assert row["messages"][0]["content"] == "What is it?"
    # a code row without its tests would pass curation's code check unchecked
    code = {**_turns(("user", "q"), ("assistant", "def f(): pass")), "kind": "code"}
    assert to_row(code, source, "x#0", "r", "t") == "code_without_tests"
    # the id follows the row's file and place, not its rank among all files
    one = to_row(_turns(("user", "q"), ("assistant", "a")), source, "a.jsonl#0", "r", "t")["id"]
    assert one != to_row(_turns(("user", "q"), ("assistant", "a")), source, "b.jsonl#0", "r", "t")["id"]


def test_a_folder_of_files_with_other_columns_an_empty_file_and_repeated_rows(tmp_path):
    """Each file is read on its own, an empty one adds nothing, and a row seen twice (a published dataset's
    configs repeat its rows) is a counted drop."""
    from rich.console import Console

    from dataengine.rows import read_rows
    from dataengine.stage import RunContext

    folder = tmp_path / "rows"
    folder.mkdir()
    first = _turns(("user", "Why is the sky blue?"), ("assistant", "Because of Rayleigh scattering."))
    (folder / "a.jsonl").write_text(json.dumps({**first, "lang": "en"}) + "\n")
    (folder / "b.jsonl").write_text(json.dumps({**first, "lang": "en", "extra": 1}) + "\n")
    (folder / "c.jsonl").write_text("")
    ours = {**first, "id": "r1", "kind": "chat", "language": "en", "teacher_model": "m", "run_id": "x"}
    (folder / "d.jsonl").write_text((json.dumps({**ours, "lang": "en"}) + "\n") * 2)
    recipe = parse_recipe(INGEST.replace("rows.jsonl", "rows"), base_dir=tmp_path)
    assert IngestStage.check(recipe, tmp_path) == []
    stage = IngestStage(recipe, tmp_path)
    out = tmp_path / "run" / "ingested"
    out.mkdir(parents=True)
    ctx = RunContext(recipe, tmp_path, tmp_path / "run", Console(quiet=True), "run-1", None)
    result = stage.run({}, {"rows": out}, tmp_path / "work", ctx)
    assert (result.rows_in, result.rows_out, result.drops) == (4, 3, {"repeated_id": 1})
    assert len({r["id"] for r in read_rows(out)}) == 3


def test_language_values_of_ingested_files_are_checked_where_curation_checks_them(tmp_path):
    (tmp_path / "rows.jsonl").write_text(
        json.dumps({**_turns(("user", "¿Qué?"), ("assistant", "Nada.")), "lang": "spanish"}) + "\n"
    )
    (problem,) = IngestStage.check(parse_recipe(INGEST, base_dir=tmp_path), tmp_path)
    assert problem.startswith("ingest.sources[0].language_field: 'spanish' (1 rows)")
    uncurated = parse_recipe(INGEST, base_dir=tmp_path).model_copy(update={"curate": None})
    assert IngestStage.check(uncurated, tmp_path) == []


def test_a_hub_dataset_to_ingest_is_listed_as_not_checked(tmp_path):
    from dataengine.notes import unchecked

    recipe = parse_recipe(INGEST.replace("path: rows.jsonl", "dataset: org/rows"))
    assert "ingest.sources[0]: Hub dataset 'org/rows': its columns were not read" in unchecked(recipe, tmp_path)


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
        assert text.count("max_steps: 8") == (name == "train-from-published")
        text = text.replace("max_steps: 8", "max_steps: 4")  # half the shipped steps: the student still trains
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
    # no teacher is served here: the recipe loads the builtin one to put its row beside the student's
    teacher = json.loads((trained / "eval" / "metrics.json").read_text())["teacher"]
    assert teacher["perplexity"] > 1 and teacher["answer_tokens"] > 0
    assert "evaluating the teacher builtin:smollm2-moe on its held-out answers, loaded here" in shown
    assert "Converting and de-quantizing" not in shown and "starting vLLM" not in shown
    assert _cli("run", "train-from-published.yaml", cwd=tmp_path).count("already done") == 4
