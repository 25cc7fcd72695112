"""Pipelines, stages and filters of the user's own, as docs/extending.md tells them to write them: a pipeline file
copied out of pipelines/ and edited, a stage with its own recipe block, a plug-in stage from an entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pipelines
from dataengine.errors import RecipeError, UserError
from dataengine.pipeline import build_pipeline, check_pipeline, load_recipe
from tests.conftest import MINIMAL

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "pipelines" / "examples"
CLI = [sys.executable, "-m", "dataengine.cli"]


def test_the_shipped_pipelines_are_the_top_level_folder():
    assert Path(pipelines.__file__).parent == REPO / "pipelines"


def test_a_pipeline_file_copied_next_to_the_recipe_and_edited_is_what_runs(tmp_path):
    copied = (REPO / "pipelines" / "curate.py").read_text()
    one_line = "        stages.append(PublishStage(recipe, base_dir, rows_from=kept_rows(stages), preference_from="
    assert one_line in copied
    # the one line changed: this team publishes by hand, whatever the recipe says
    edited = copied.replace(one_line, "        pass  # " + one_line.strip())
    (tmp_path / "my_curate.py").write_text(edited)
    recipe_text = MINIMAL.replace("name: t", "name: t\npipeline: my_curate.py") + "curate: {}\npublish: {to: out}\n"
    (tmp_path / "recipe.yaml").write_text(recipe_text)
    recipe = load_recipe(tmp_path / "recipe.yaml")
    assert [s.name for s in build_pipeline(recipe, tmp_path).stages] == ["generate", "curate"]
    shipped = recipe.model_copy(update={"pipeline": "curate"})
    assert [s.name for s in build_pipeline(shipped, tmp_path).stages] == ["generate", "curate", "publish"]


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ("nope.py", "no pipeline file 'nope.py'"),
        ("curat", "did you mean 'curate'?"),
        ("my_pipes:nothing", "has no function 'nothing'"),
        ("broken.py", "cannot be imported: NameError"),
    ],
)
def test_a_pipeline_that_cannot_be_loaded_is_named_with_the_reason(tmp_path, pipeline, message):
    (tmp_path / "my_pipes.py").write_text("def build(recipe, base_dir):\n    return None\n")
    (tmp_path / "broken.py").write_text("undefined_name\n")
    (tmp_path / "recipe.yaml").write_text(MINIMAL.replace("name: t", f"name: t\npipeline: {pipeline}"))
    recipe = load_recipe(tmp_path / "recipe.yaml")
    problems = check_pipeline(recipe, tmp_path)
    assert len(problems) == 1 and problems[0].startswith("pipeline: ") and message in problems[0], problems


def test_a_build_that_returns_no_pipeline_is_refused(tmp_path):
    (tmp_path / "list_pipes.py").write_text("def build(recipe, base_dir):\n    return ['generate']\n")
    (tmp_path / "recipe.yaml").write_text(MINIMAL.replace("name: t", "name: t\npipeline: list_pipes:build"))
    with pytest.raises(UserError, match="built a list, not a dataengine.Pipeline"):
        build_pipeline(load_recipe(tmp_path / "recipe.yaml"), tmp_path)


def _examples(folder: Path) -> Path:
    for name in ("review.yaml", "curate_and_review.py", "review_sample.py", "my_filters.py"):
        shutil.copy(EXAMPLES / name, folder / name)
    return folder / "review.yaml"


def test_a_stage_of_your_own_brings_a_block_the_recipe_validates(tmp_path):
    path = _examples(tmp_path)
    recipe = load_recipe(path)
    assert recipe.review_sample.rows == 4
    stages = build_pipeline(recipe, tmp_path).stages
    assert [s.name for s in stages] == ["generate", "curate", "review_sample"]
    assert stages[-1].inputs == {"rows": "curated"}
    path.write_text(path.read_text().replace("  rows: 4", "  rowz: 4"))
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert "review_sample.rowz: unknown key; did you mean 'rows'?" in str(error.value)
    line = path.read_text().splitlines().index("  rowz: 4") + 1
    assert f"line {line}:" in str(error.value)


def test_a_plug_in_stage_from_an_entry_point(tmp_path, monkeypatch):
    """An installed package registers a stage under `dataengine.stages`: its block validates in any recipe."""
    from dataengine import stages

    (tmp_path / "dedup_report.py").write_text(
        textwrap.dedent(
            """
            from pydantic import Field
            from dataengine import Stage, StageConfig

            class Config(StageConfig):
                top: int = Field(5, ge=1)

            class DedupReport(Stage):
                name = "dedup_report"
                config = Config

                @staticmethod
                def check(recipe, base_dir):
                    block = getattr(recipe, "dedup_report", None)
                    return ["dedup_report.top: 7 is unlucky"] if block is not None and block.top == 7 else []
            """
        )
    )
    dist = tmp_path / "dedup_report-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dedup-report\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dataengine.stages]\ndedup_report = dedup_report:DedupReport\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    stages.plugins.cache_clear()
    try:
        assert [cls.name for cls in stages.plugins()] == ["dedup_report"]
        (tmp_path / "recipe.yaml").write_text(MINIMAL + "dedup_report: {top: 7}\n")
        recipe = load_recipe(tmp_path / "recipe.yaml")
        assert recipe.dedup_report.top == 7
        assert check_pipeline(recipe, tmp_path) == ["dedup_report.top: 7 is unlucky"]
        (tmp_path / "recipe.yaml").write_text(MINIMAL + "dedup_report: {top: 0}\n")
        with pytest.raises(RecipeError, match="dedup_report.top: Input should be greater than or equal to 1"):
            load_recipe(tmp_path / "recipe.yaml")
    finally:
        stages.plugins.cache_clear()


@pytest.mark.slow
def test_the_examples_run_end_to_end_resume_and_show_in_the_report_and_card(tmp_path, teacher_server):
    path = _examples(tmp_path)
    text = path.read_text().replace(
        "  model: builtin:smollm2-moe\n",
        f"  model: builtin:smollm2-moe\n  builtin: {{top_k: 1}}\n  endpoint: {teacher_server.base_url}\n",
    )
    path.write_text(text + f"publish: {{to: {tmp_path / 'published'}}}\n")

    def run() -> str:
        done = subprocess.run(
            [*CLI, "run", str(path), "-o", str(tmp_path / "run")], capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    run()
    import json

    from dataengine.manifest import Manifest
    from dataengine.rows import read_rows

    run_dir = tmp_path / "run"
    kept, rejected = read_rows(run_dir / "curated"), read_rows(run_dir / "rejected")
    curate = Manifest.read(run_dir / "curated")
    assert curate.rows_in == len(kept) + len(rejected)
    # the custom filter: every answer with more than 3 digits was dropped by it (or by a shipped step before it)
    assert all(sum(c.isdigit() for c in r["messages"][-1]["content"]) <= 3 for r in kept)
    mine = [r for r in rejected if r["drop_step"] == "no_digits"]
    assert all(r["drop_reason"] == "too_many_digits" for r in mine)
    assert curate.drops.get("too_many_digits", 0) == len(mine)
    sample = [json.loads(line) for line in (run_dir / "review" / "sample.jsonl").read_text().splitlines()]
    assert len(sample) == min(4, len(kept)) and {r["id"] for r in sample} <= {r["id"] for r in kept}
    assert Manifest.read(run_dir / "review").rows_out == len(sample)
    assert "review_sample" in (run_dir / "report.html").read_text()
    card = (tmp_path / "published" / "README.md").read_text()
    assert f"| review_sample | {len(kept)} | {len(sample)} |" in card
    if mine:
        assert f"| too_many_digits | {len(mine)} |" in card

    again = run()
    assert again.count("already done") == 4, again  # generate, curate, review_sample, publish
    path.write_text(path.read_text().replace("  rows: 4", "  rows: 2"))
    third = run()  # only the stage whose block changed runs again (publish reads the kept rows, not the sample)
    assert third.count("already done") == 3 and f"review_sample: {min(2, len(kept))} rows" in third, third
    assert len((run_dir / "review" / "sample.jsonl").read_text().splitlines()) == min(2, len(kept))


def _edited_examples(folder: Path, monkeypatch, new: str, old: str = "") -> Path:
    """The examples with review_sample.py edited, imported afresh (a test before may have imported another)."""
    monkeypatch.delitem(sys.modules, "review_sample", raising=False)
    path = _examples(folder)
    stage = folder / "review_sample.py"
    stage.write_text(stage.read_text().replace(old, new) if old else stage.read_text() + new)
    return path


def test_a_stage_of_your_own_is_checked_at_validate_and_finds_its_block_through_a_variable(tmp_path, monkeypatch):
    check = "\n    @staticmethod\n    def check(recipe, base_dir):\n        return ['review_sample: checked']\n"
    path = _edited_examples(tmp_path, monkeypatch, check)
    path.write_text(path.read_text().replace("pipeline: curate_and_review.py", "pipeline: ${PIPE}"))
    monkeypatch.setenv("PIPE", "curate_and_review.py")
    recipe = load_recipe(path)
    assert recipe.review_sample.rows == 4
    assert check_pipeline(recipe, tmp_path) == ["review_sample: checked"]


def test_a_reads_path_the_recipe_lacks_is_said_at_validate(tmp_path, monkeypatch):
    path = _edited_examples(tmp_path, monkeypatch, 'reads = ("review_sampel",)', old='reads = ("review_sample",)')
    problems = check_pipeline(load_recipe(path), tmp_path)
    assert problems == ["stage 'review_sample': `reads` names no recipe path 'review_sampel'"]


def test_a_shipped_pipeline_says_which_block_it_needs(tmp_path):
    recipe = load_recipe_text(tmp_path, MINIMAL.replace("name: t", "name: t\npipeline: curate"))
    assert check_pipeline(recipe, tmp_path) == ["pipeline curate needs a `curate` block"]
    (tmp_path / "broken_check.py").write_text(
        "from pipelines.generate import build\n\ndef check(recipe):\n    raise RuntimeError('oops')\n"
    )
    recipe = load_recipe_text(tmp_path, MINIMAL.replace("name: t", "name: t\npipeline: broken_check.py"))
    assert check_pipeline(recipe, tmp_path) == [
        "pipeline: 'broken_check.py''s check(recipe) failed: RuntimeError: oops"
    ]


def load_recipe_text(folder: Path, text: str):
    (folder / "recipe.yaml").write_text(text)
    return load_recipe(folder / "recipe.yaml")
