"""What `dataengine validate` catches beyond the schema's first pass: keys given twice, every problem of a recipe
in one report, and the prune knobs against the shape of the student's start (from its config.json)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dataengine.errors import RecipeError
from dataengine.pipeline import check_pipeline, load_recipe
from dataengine.recipe import BuiltinTeacherOptions, parse_recipe
from dataengine.teacher.builtin import builtin_model_dir
from dataengine.train.stage import TrainStage
from tests.conftest import MINIMAL


def problems_of(text: str, base_dir: Path | None = None) -> list[str]:
    with pytest.raises(RecipeError) as info:
        parse_recipe(textwrap.dedent(text), "r.yaml", base_dir=base_dir)
    return info.value.problems


def loaded_problems(path: Path) -> list[str]:
    """What `dataengine validate` reports when the recipe itself does not load."""
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    return info.value.problems


# ------------------------------------------------------------------ keys given twice


def test_a_key_given_twice_is_refused_with_both_lines():
    text = """\
        name: t
        teacher:
          model: builtin:smollm2-moe
        generate:
          chat:
            languages: [{code: en, quota: 2}]
          sampling: {temperature: 0.5}
          max_concurrent_requests: 4
          sampling: {temperature: 0.7}
        """
    assert problems_of(text) == ["line 9: generate.sampling: key given twice (first at line 7)"]


def test_keys_given_twice_anywhere_are_all_reported():
    text = """\
        name: t
        name: u
        teacher: {model: builtin:smollm2-moe, model: builtin:smollm2-moe}
        generate:
          chat:
            languages:
              - {code: en, quota: 2, quota: 3}
        """
    assert problems_of(text) == [
        "line 2: name: key given twice (first at line 1)",
        "line 3: teacher.model: key given twice (first at line 3)",
        "line 7: generate.chat.languages[0].quota: key given twice (first at line 7)",
    ]


def test_an_anchor_merged_and_overridden_is_no_duplicate():
    text = MINIMAL + "  sampling: &s {temperature: 0.5, top_p: 0.9}\nscore: {top_k: 5}\nx: {<<: *s, top_p: 0.5}\n"
    assert not any("given twice" in p for p in problems_of(text))  # x is unknown, nothing is given twice


# ------------------------------------------------------------------ every problem in one pass


def test_unknown_pipeline_missing_block_and_a_key_twice_in_one_error(write_recipe):
    path = write_recipe(
        """\
        name: t
        pipeline: distil
        teacher:
          model: builtin:smollm2-moe
        teacher:
          model: builtin:smollm2-moe
        """
    )
    message = "\n".join(loaded_problems(path))
    assert "line 5: teacher: key given twice (first at line 3)" in message
    assert "give `generate` (the teacher writes the rows) or `ingest`" in message
    assert "pipeline: unknown pipeline 'distil'; did you mean 'distill'?" in message


def test_an_unknown_builtin_teacher_is_named_beside_schema_errors(write_recipe):
    path = write_recipe(MINIMAL.replace("smollm2-moe", "gpt5").replace("quota: 2", "quota: many"))
    message = "\n".join(loaded_problems(path))
    assert "generate.chat.languages[0].quota" in message
    assert "teacher.model: unknown builtin teacher 'gpt5'" in message


def test_a_missing_variable_comes_with_the_schema_errors_and_is_said_once():
    text = MINIMAL.replace("smollm2-moe", "smollm2-moe\n  endpoint: ${NOT_SET_ANYWHERE_456}").replace(
        "quota: 2", "quota: -1"
    )
    problems = problems_of(text)
    assert problems[0].startswith("teacher.endpoint: environment variable ${NOT_SET_ANYWHERE_456} is not set")
    assert any("generate.chat.languages[0].quota" in p for p in problems)
    # '${NOT_SET_ANYWHERE_456}' is no http(s) URL: the variable's own line says what is wrong there
    assert sum("teacher.endpoint" in p for p in problems) == 1


def test_every_broken_rule_across_blocks_is_a_line_of_its_own():
    text = MINIMAL + "pipeline: distill\nscore: {top_k: 50}\ntrain: {student: {model: x}, dpo: {}}\npublish: {to: o}\n"
    problems = problems_of(text)
    assert len(problems) == 3, problems
    assert "score.top_k (50) exceeds teacher.vllm.max_logprobs (20)" in problems[0]
    assert "train.dpo trains on preference pairs" in problems[1]
    assert "publish sends the curated rows: it needs a `curate` block" in problems[2]


def test_what_a_pipeline_needs_is_its_own_check(tmp_path):
    """The schema names no pipeline: the shipped distill and generate modules say what they need."""
    distill = parse_recipe(MINIMAL + "pipeline: distill\n")
    assert "pipeline distill needs `curate` and `train` blocks" in check_pipeline(distill, tmp_path)
    unused = parse_recipe(MINIMAL + "curate: {}\nroute: {}\npublish: {to: o}\n")
    assert [p for p in check_pipeline(unused, tmp_path) if "needs pipeline" in p] == [
        "route replays the curated rows: it needs pipeline curate or distill",
        "publish sends the curated rows: it needs pipeline curate or distill",
    ]


def test_the_stage_checks_run_beside_an_unknown_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAENGINE_CACHE", str(tmp_path / "empty-cache"))
    bad = parse_recipe(MINIMAL.replace("code: en", "code: sw") + "pipeline: generat\n")
    problems = "\n".join(check_pipeline(bad, tmp_path))
    assert "unknown pipeline 'generat'" in problems and "language 'sw' has no shipped meta-prompt" in problems
    assert "are not on this machine" not in problems  # the machine's problem comes once the recipe's are gone
    (alone,) = check_pipeline(parse_recipe(MINIMAL), tmp_path)
    assert "are not on this machine" in alone


def test_the_stage_checks_run_when_only_a_key_is_given_twice(write_recipe):
    path = write_recipe(MINIMAL.replace("code: en", "code: sw") + "name: t\n")
    problems = loaded_problems(path)
    assert problems[0] == "line 9: name: key given twice (first at line 2)"
    assert any("language 'sw' has no shipped meta-prompt" in p for p in problems)


def test_an_unknown_builtin_teacher_does_not_break_the_vocabulary_check(tmp_path):
    from tests.tiny_models import tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp_path / "student")
    text = MINIMAL.replace("smollm2-moe", "gpt5") + "train: {student: {model: ./student}, distill: {method: gkd}}\n"
    problems = check_pipeline(parse_recipe(text, base_dir=tmp_path), tmp_path)
    assert problems == ["teacher.model: unknown builtin teacher 'gpt5'; available: smollm2-moe"]


def test_validate_prints_every_problem_at_once(write_recipe):
    path = write_recipe(MINIMAL + "  sampling: {temperature: 9}\npipeline: distil\ngenerate: {}\n")
    done = subprocess.run(
        [sys.executable, "-m", "dataengine.cli", "validate", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    err = " ".join(done.stderr.split())  # rich wraps long lines
    assert "line 11: generate: key given twice (first at line 5)" in err
    assert "line 11: generate: nothing to generate" in err  # YAML keeps the last
    assert "unknown pipeline 'distil'" in err and "did you mean 'distill'" in err


# ------------------------------------------------------------------ the prune knobs against the start's shape

MOE = {
    "model_type": "qwen3_moe",
    "num_hidden_layers": 6,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_experts": 8,
    "num_experts_per_tok": 2,
}
DENSE = {"model_type": "llama", "num_hidden_layers": 4, "intermediate_size": 64}


def _folder(root: Path, name: str, config: dict) -> str:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "config.json").write_text(json.dumps(config))
    return f"./{name}"


def shape_problems(tmp_path: Path, teacher: str, train: str) -> list[str]:
    text = MINIMAL.replace("builtin:smollm2-moe", teacher) + "train:\n" + textwrap.indent(textwrap.dedent(train), "  ")
    return TrainStage.check(parse_recipe(text, base_dir=tmp_path), tmp_path)


def test_prune_of_the_merged_teacher_against_its_config(tmp_path):
    teacher = _folder(tmp_path, "moe", MOE)
    train = """\
        student: {from_teacher: {merge_experts: uniform}, prune: {layers: [0, 6, 9], intermediate_size: 32}}
        """
    assert shape_problems(tmp_path, teacher, train) == [
        "train.student.prune.layers: layers [6, 9] do not exist: the start (./moe with its experts merged) has "
        "6 layers (0-5)",
        "train.student.prune.intermediate_size: 32, the start's (./moe with its experts merged) MLPs have 32 "
        "channels: give fewer",
    ]
    fits = "student: {from_teacher: {merge_experts: uniform}, prune: {layers: [0, 5], intermediate_size: 16}}\n"
    assert shape_problems(tmp_path, teacher, fits) == []


def test_prune_of_a_local_student_and_of_the_compared_inits(tmp_path):
    teacher = _folder(tmp_path, "moe", MOE)
    dense = _folder(tmp_path, "dense", DENSE)
    train = f"""\
        student: {{model: {dense}, prune: {{layers: [4]}}}}
        evaluate:
          compare_inits:
            - {{name: a, model: {dense}, prune: {{keep_every: 5, intermediate_size: 64}}}}
            - {{name: b, model: {teacher}, prune: {{method: block_influence, keep: 7, intermediate_size: 8}}}}
            - {{name: c, model: {dense}, prune: {{keep_every: 4, intermediate_size: 63}}}}
            - {{name: d, model: Org/hub-model, prune: {{layers: [99]}}}}
        """
    assert shape_problems(tmp_path, teacher, train) == [
        "train.student.prune.layers: layer 4 does not exist: the start (./dense) has 4 layers (0-3)",
        "train.evaluate.compare_inits[0].prune.keep_every: 5 is more than the 4 layers of the start (./dense): "
        "give at most 4",
        "train.evaluate.compare_inits[0].prune.intermediate_size: 64, the start's (./dense) MLPs have 64 channels: "
        "give fewer",
        "train.evaluate.compare_inits[1].prune.keep: 7 layers to keep, the start (./moe) has 6",
        "train.evaluate.compare_inits[1].prune.intermediate_size: the start (./moe) is a mixture of 8 experts per "
        "layer: width pruning narrows a dense gated MLP (start `from_teacher` to merge the experts first)",
    ]  # c fits; d is a Hub id: not read


def test_a_multimodal_config_is_read_through_its_text_config(tmp_path):
    teacher = _folder(tmp_path, "vl", {"model_type": "qwen3_vl_moe", "text_config": MOE})
    train = "student: {from_teacher: {merge_experts: uniform}, prune: {keep_every: 7}}\n"
    assert shape_problems(tmp_path, teacher, train) == [
        "train.student.prune.keep_every: 7 is more than the 6 layers of the start (./vl with its experts merged): "
        "give at most 6"
    ]


def test_merging_the_experts_of_a_teacher_that_has_none(tmp_path):
    teacher = _folder(tmp_path, "dense", DENSE)
    train = "student: {from_teacher: {merge_experts: uniform}}\n"
    assert shape_problems(tmp_path, teacher, train) == [
        "train.student.from_teacher: the teacher ./dense has no experts to merge (no experts in its config)"
    ]


def test_a_hub_teacher_or_a_config_not_on_this_machine_is_not_checked(tmp_path, monkeypatch):
    train = "student: {from_teacher: {merge_experts: uniform}, prune: {layers: [999]}}\n"
    assert shape_problems(tmp_path, "Org/some-moe", train) == []
    monkeypatch.setenv("DATAENGINE_CACHE", str(tmp_path / "empty-cache"))  # the builtin teacher not built here
    assert shape_problems(tmp_path, "builtin:smollm2-moe", "student: {prune: {layers: [999]}}\n") == []


# the quickstart's build, which `make teacher` (run by `make test`) makes
QUICKSTART_TEACHER = "builtin:smollm2-moe\n  builtin: {top_k: 1}"


@pytest.mark.skipif(
    not (builtin_model_dir("smollm2-moe", BuiltinTeacherOptions(top_k=1)) / "config.json").is_file(),
    reason="the builtin teacher is not built on this machine (`make teacher`)",
)
def test_prune_of_the_builtin_teachers_dense_parent(tmp_path):
    problems = shape_problems(tmp_path, QUICKSTART_TEACHER, "student: {prune: {layers: [0, 40]}}\n")
    assert problems == [
        "train.student.prune.layers: layer 40 does not exist: the start (builtin:smollm2-moe's dense parent) has "
        "30 layers (0-29)"
    ]
    assert shape_problems(tmp_path, QUICKSTART_TEACHER, "student: {prune: {layers: [0, 29]}}\n") == []
