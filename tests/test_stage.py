"""The stage contract: cache keys from the recipe blocks a stage reads and its files, and pipelines that wire
folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataengine.curate.stage import CurateStage
from dataengine.generate.stage import GenerateStage
from dataengine.pipeline import build_pipeline, shipped_pipelines
from dataengine.recipe import parse_recipe
from dataengine.stage import config_hash
from tests.conftest import MINIMAL

CURATE = MINIMAL.replace("name: t", "name: t\npipeline: curate") + "curate: {}\n"


def test_generate_key_follows_the_data_not_top_up_or_where_weights_come_from(tmp_path):
    base = parse_recipe(MINIMAL)
    same = [
        MINIMAL + "  top_up: {rounds: 2}\n",  # rounds add rows, they do not change the ones made
        MINIMAL.replace("model: builtin:smollm2-moe", "model: builtin:smollm2-moe\n  vllm: {enforce_eager: true}"),
    ]
    for text in same:
        assert config_hash(GenerateStage(parse_recipe(text), tmp_path), parse_recipe(text)) == config_hash(
            GenerateStage(base, tmp_path), base
        ), text
    changed = parse_recipe(MINIMAL + "  sampling: {temperature: 0.2}\n")
    assert config_hash(GenerateStage(changed, tmp_path), changed) != config_hash(GenerateStage(base, tmp_path), base)


def test_a_prompt_file_is_part_of_the_key(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    recipe = parse_recipe(MINIMAL + "  sources: [{path: p.jsonl}]\n", base_dir=tmp_path)
    before = config_hash(GenerateStage(recipe, tmp_path), recipe)
    (tmp_path / "p.jsonl").write_text('{"prompt": "hello"}\n')
    assert config_hash(GenerateStage(recipe, tmp_path), recipe) != before


def test_curate_key_holds_the_target_it_dedups_against(tmp_path):
    def key(text: str) -> str:
        recipe = parse_recipe(text)
        return config_hash(CurateStage(recipe, tmp_path, rows_from="generated"), recipe)

    appending = CURATE + "publish: {to: out-a, append: true}\n"
    assert key(appending) != key(appending.replace("out-a", "out-b"))  # another target holds other rows
    replacing = CURATE + "publish: {to: out-a}\n"
    assert key(replacing) == key(replacing.replace("out-a", "out-b")) == key(CURATE)


@pytest.mark.parametrize("pipeline", shipped_pipelines())
def test_every_input_is_an_output_of_an_earlier_stage(pipeline):
    text = MINIMAL.replace("name: t", f"name: t\npipeline: {pipeline}") + "curate: {}\npublish: {to: out}\n"
    if pipeline == "distill":
        text += "train: {student: {model: x}}\n"
    if pipeline == "generate":
        text = text.replace("curate: {}\npublish: {to: out}\n", "")
    written: set[str] = set()
    for stage in build_pipeline(parse_recipe(text), Path.cwd()).stages:
        assert set(stage.inputs.values()) <= written, stage.name
        written |= set(stage.outputs.values())


def test_a_run_folder_of_an_older_version_is_read_from_its_manifests(tmp_path):
    """Before run.json recorded the pipeline's stages, their folders are found through the manifests."""
    import json

    from dataengine.manifest import Manifest
    from dataengine.run_folder import RunFolder

    (tmp_path / "run.json").write_text(json.dumps({"run_id": "old"}))
    for i, (stage, folder) in enumerate([("generate", "generated"), ("curate", "curated"), ("train", "students/s")]):
        (tmp_path / folder).mkdir(parents=True)
        Manifest(stage, "", "", "", 1, 1, timings={"started": float(i)}).write(tmp_path / folder)
    run = RunFolder(tmp_path)
    assert run.stages == ["generate", "curate", "train"]
    assert run.folder("train") == tmp_path / "students" / "s" and run.manifest("curate").stage == "curate"
    assert run.folder("curate", "rejected") is None and run.folder("score") is None
