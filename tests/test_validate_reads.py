"""`validate` reads what the run will read before any teacher time is spent: prompt files' columns and language
values, endpoints as the engine will call them, quotas, cron lines said in words; it lists what it could not
check offline, and `--online` checks it. `plan` shows what each stage reads and writes outside the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataengine.errors import RecipeError
from dataengine.generate.stage import GenerateStage
from dataengine.notes import online_problems, read_as, unchecked
from dataengine.recipe import parse_recipe
from tests.conftest import MINIMAL, JsonHandler, serving

CLI = [sys.executable, "-m", "dataengine.cli"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def test_an_endpoint_given_with_v1_is_called_without_it_and_said_once(tmp_path):
    text = MINIMAL.replace("smollm2-moe", "smollm2-moe\n  endpoint: http://gpu-node:8000/v1/")
    recipe = parse_recipe(text)
    assert recipe.teacher.endpoint == "http://gpu-node:8000"  # requests go to <root>/v1/..., never /v1/v1
    import yaml

    assert read_as(recipe, yaml.safe_load(text)) == [
        "teacher.endpoint: 'http://gpu-node:8000/v1/' read as http://gpu-node:8000 "
        "(the engine adds /v1 to every request itself)"
    ]


def _source_recipe(tmp_path: Path, name: str, source: str) -> tuple:
    text = MINIMAL + f"  sources: [{{path: {name}, {source}}}]\ncurate: {{}}\n"  # curation checks the language
    return parse_recipe(text, base_dir=tmp_path)


def test_a_prompt_file_without_the_column_is_refused_at_validate(tmp_path):
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"text": f"q{i}", "lang": "en"}) + "\n" for i in range(3)))
    recipe = _source_recipe(tmp_path, "p.jsonl", "field: prompt")
    assert GenerateStage.check(recipe, tmp_path) == [
        "generate.sources[0].field: no column 'prompt' in p.jsonl (columns: text, lang)"
    ]
    assert GenerateStage.check(_source_recipe(tmp_path, "p.jsonl", "field: text"), tmp_path) == []


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_language_values_the_language_check_cannot_match_are_refused(tmp_path, suffix):
    rows = [{"text": "¿Qué?", "lang": "spanish"}] * 2 + [{"text": "Oi?", "lang": "pt_BR"}, {"text": "Hi", "lang": "en"}]
    path = tmp_path / f"p{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = _source_recipe(tmp_path, path.name, "field: text, language_field: lang")
    (problem,) = GenerateStage.check(recipe, tmp_path)
    assert problem.startswith("generate.sources[0].language_field: 'spanish' (2 rows), 'pt_BR' (1 rows)")
    assert "wrong_language" in problem and "'en'" not in problem
    path.unlink()
    good = [{**row, "lang": lang} for row, lang in zip(rows, ["es", "es", "pt-BR", "en"], strict=True)]
    path.write_text("".join(json.dumps(row) + "\n" for row in good)) if suffix == ".jsonl" else pq.write_table(
        pa.Table.from_pylist(good), path
    )
    assert GenerateStage.check(recipe, tmp_path) == []
    # upper case is read as the language check reads it; without curation's language filter nothing is dropped
    path.unlink()
    upper = [{**row, "lang": lang} for row, lang in zip(rows, ["ES", "es", "PT-br", "EN"], strict=True)]
    path.write_text("".join(json.dumps(row) + "\n" for row in upper)) if suffix == ".jsonl" else pq.write_table(
        pa.Table.from_pylist(upper), path
    )
    assert GenerateStage.check(recipe, tmp_path) == []
    unchecked = recipe.model_copy(update={"curate": None})
    assert GenerateStage.check(unchecked, tmp_path) == []


def test_a_json_file_of_json_lines_is_read_as_datasets_reads_it(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"text": "q"}) + "\n" + json.dumps({"text": "r"}) + "\n")
    assert GenerateStage.check(_source_recipe(tmp_path, "p.json", "field: prompt"), tmp_path) == [
        "generate.sources[0].field: no column 'prompt' in p.json (columns: text)"
    ]


def test_every_quota_at_zero_is_nothing_to_generate():
    with pytest.raises(
        RecipeError, match="every generate.chat/math/magpie.languages\\[\\].quota and generate.code.count"
    ):
        parse_recipe(MINIMAL.replace("quota: 2", "quota: 0") + "  code: {count: 0}\n")


def test_a_cron_line_with_a_stray_field_is_refused_with_both_readings():
    text = MINIMAL + 'schedule: {cron: "0 2 * * * *", incremental: false}\n'
    with pytest.raises(RecipeError) as error:
        parse_recipe(text)
    message = str(error.value)
    assert "ambiguous" in message and "'At 2 minutes past the hour'" in message and "'At 02:00'" in message
    assert parse_recipe(text.replace("0 2 * * * *", "30 0 2 * * mon")).schedule.cron == "30 0 2 * * mon"


def test_validate_says_the_cron_line_in_words_and_what_it_could_not_check(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        MINIMAL.replace("smollm2-moe", "smollm2-moe\n  endpoint: http://127.0.0.1:9/v1")
        + 'schedule: {cron: "30 2 * * 1-5", timezone: Europe/Paris, incremental: false}\n'
    )
    done = _cli("validate", str(path))
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())
    assert "schedule.cron '30 2 * * 1-5': At 02:30, Monday through Friday (Europe/Paris); next 20" in out
    assert "'http://127.0.0.1:9/v1' read as http://127.0.0.1:9" in out
    assert "not checked: teacher endpoint http://127.0.0.1:9: not asked whether it is up" in out


class _Models(JsonHandler):
    def do_GET(self):
        self._send(200, json.dumps({"data": [{"id": "served-teacher"}]}).encode())


@pytest.fixture
def models_server():
    with serving(_Models) as url:
        yield url


def test_online_asks_the_endpoint_which_model_it_serves(tmp_path, models_server):
    text = MINIMAL.replace("smollm2-moe", f"smollm2-moe\n  endpoint: {models_server}/v1")
    recipe = parse_recipe(text)
    assert unchecked(recipe, tmp_path)[0].startswith(f"teacher endpoint {models_server}: not asked")
    assert online_problems(recipe, tmp_path) == [
        f"teacher.endpoint {models_server}: serves served-teacher, not 'builtin:smollm2-moe' "
        "(teacher.served_model_name)"
    ]
    served = parse_recipe(text.replace("/v1", "/v1\n  served_model_name: served-teacher"))
    assert online_problems(served, tmp_path) == []
    down = parse_recipe(MINIMAL.replace("smollm2-moe", "smollm2-moe\n  endpoint: http://127.0.0.1:9"))
    assert online_problems(down, tmp_path)[0].startswith("teacher.endpoint http://127.0.0.1:9: /v1/models did not")


def test_plan_shows_what_each_stage_reads_and_writes_outside_the_run(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n")
    path = tmp_path / "r.yaml"
    path.write_text(
        MINIMAL.replace("name: t", "name: t\npipeline: curate").replace(
            "smollm2-moe", "smollm2-moe\n  endpoint: http://gpu-node:8000"
        )
        + "  sources: [{path: p.jsonl}]\ncurate: {}\npublish: {to: hf://datasets/org/data}\n"
        + 'schedule: {cron: "0 3 * * *"}\n'
    )
    done = _cli("plan", str(path), "-o", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())
    assert "asks http://gpu-node:8000" in out and f"reads {tmp_path / 'p.jsonl'}" in out
    assert "writes hf://datasets/org/data: appends new rows to what it holds" in out
    assert "schedule.cron '0 3 * * *': At 03:00 (UTC); next 20" in out


def test_plan_says_where_the_teachers_evaluation_comes_from_and_what_loading_it_here_takes(tmp_path):
    from dataengine.pipeline import build_pipeline

    text = MINIMAL.replace("name: t", "name: t\npipeline: distill") + "curate: {}\ntrain: {student: {model: x}}\n"

    def evaluate(teacher: str, endpoint: str = "") -> list[str]:
        recipe = text.replace("{model: x}}", "{model: x}, evaluate: {teacher: " + teacher + "}}")
        if endpoint:
            recipe = recipe.replace("smollm2-moe", f"smollm2-moe\n  endpoint: {endpoint}")
        return {s.name: s for s in build_pipeline(parse_recipe(recipe), tmp_path).stages}["evaluate"].outside()

    # by default the served teacher answers: the endpoint, or the server the run starts
    assert evaluate("served") == ["asks the run's vLLM server for the teacher's logprobs on the held-out answers"]
    (line,) = evaluate("served", "http://gpu-node:8000/v1")
    assert line.startswith("asks http://gpu-node:8000 for the teacher's logprobs")
    # loaded here: the memory it takes in float32, from the parameters in its safetensors headers
    (line,) = evaluate("local")
    assert line.startswith("loads the teacher builtin:smollm2-moe in transformers to evaluate it (about ")
    gb = float(line.split("(about ")[1].split(" GB")[0])
    assert 1.0 < gb < 2.5, line  # the builtin teacher: ~0.4B parameters, 4 bytes each
    assert "train.evaluate.teacher: served asks the served teacher instead" in line
    assert evaluate("null") == evaluate("false") == []


def test_the_memory_plan_gives_counts_a_sharded_teachers_parameters_once(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    from dataengine.recipe import TeacherConfig
    from dataengine.train.evaluate_stage import _memory

    def memory(folder: Path) -> str:
        return _memory(TeacherConfig(model=str(folder)), tmp_path)

    model = tmp_path / "teacher"
    model.mkdir()
    a, b = np.zeros((1000, 1000), np.float16), np.zeros((500, 1000), np.float16)
    save_file({"a": a}, model / "model-00001-of-00002.safetensors")
    save_file({"b": b}, model / "model-00002-of-00002.safetensors")
    # the shards alone: 1.5M parameters, 4 bytes each in float32
    assert memory(model) == "about 6 MB in float32"
    # a consolidated copy beside them is the same weights: the index names the shards it counts
    save_file({"a": a, "b": b}, model / "consolidated.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    assert memory(model) == "about 6 MB in float32"
    # pickled weights: their size on disk
    old = tmp_path / "old"
    old.mkdir()
    (old / "pytorch_model.bin").write_bytes(b"\0" * 3_000_000)
    assert memory(old) == "its weights take 3 MB on disk, up to twice that in float32"
    assert memory(tmp_path / "elsewhere").startswith("its size is not known here")
