"""Recipe validation: every bad input gets a precise message (field, line, value, what is allowed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataengine.errors import RecipeError
from dataengine.recipe import load_recipe, parse_recipe
from dataengine.runner import check
from tests.conftest import MINIMAL

ROOT = Path(__file__).resolve().parent.parent


def problems(text: str) -> str:
    """The schema's problems, else those of `dataengine validate`'s checks (shipped data, pipelines)."""
    with pytest.raises(RecipeError) as info:
        check(parse_recipe(text, "r.yaml"), Path.cwd(), "r.yaml")
    return "\n".join(info.value.problems)


def test_minimal_recipe_gets_defaults():
    recipe = parse_recipe(MINIMAL)
    assert recipe.pipeline == "generate"
    assert recipe.teacher.builtin.num_experts == 4
    assert recipe.generate.chat.languages[0].quota == 2
    assert recipe.generate.sampling.max_tokens == 256


def test_shipped_quickstart_is_valid():
    recipe = load_recipe("recipes/quickstart.yaml")
    langs = [lang.code for lang in recipe.generate.chat.languages]
    # no code, Chinese or Spanish: the builtin teacher writes none well enough to keep (the recipe says why);
    # a top-up round is asked before the student trains where a language kept under half its quota
    assert langs == ["en", "fr"] and recipe.generate.code is None and recipe.generate.top_up.rounds >= 1


def test_shipped_nightly_recipe_is_scheduled_incremental_and_exports():
    from dataengine.schedule.export import export

    recipe = load_recipe("recipes/nightly.yaml")
    assert recipe.schedule.cron == "0 2 * * *" and recipe.schedule.incremental
    assert recipe.publish.append  # follows schedule.incremental
    assert recipe.pipeline == "curate" and recipe.generate.code.count > 0
    (crontab,) = export(recipe, ROOT / "recipes" / "nightly.yaml", "crontab", "unused").values()
    assert "0 2 * * *" in crontab and "schedule once" in crontab


BAD = [
    # (description, recipe text, expected fragments of the message)
    ("yaml syntax", "name: t\nteacher: [unclosed\n", ["line 3", "YAML syntax error"]),
    ("top level not a mapping", "- a\n- b\n", ["must be a YAML mapping"]),
    ("unknown key with hint", MINIMAL + "genrate: {}\n", ["line 9", "genrate: unknown key", "did you mean 'generate'"]),
    (
        "nested unknown key",
        MINIMAL.replace("model: builtin:smollm2-moe", "model: builtin:smollm2-moe\n  vllm: {enforce_eagr: true}"),
        ["teacher.vllm.enforce_eagr: unknown key", "did you mean 'enforce_eager'"],
    ),
    ("wrong type", MINIMAL.replace("quota: 2", "quota: many"), ["generate.chat.languages[0].quota", "'many'"]),
    (
        "out of range",
        MINIMAL + "  sampling: {temperature: 5}\n",
        ["generate.sampling.temperature", "less than or equal to 2"],
    ),
    (
        "missing field",
        "name: t\ngenerate: {chat: {languages: [{code: en, quota: 1}]}}\n",
        ["teacher: required field is missing"],
    ),
    ("unknown pipeline", MINIMAL + "pipeline: generat\n", ["unknown pipeline 'generat'", "did you mean 'generate'"]),
    ("unknown builtin", MINIMAL.replace("smollm2-moe", "gpt5"), ["unknown builtin teacher 'gpt5'", "smollm2-moe"]),
    ("bad language code", MINIMAL.replace("code: en", "code: English"), ["not a BCP-47 language code"]),
    (
        "language without meta-prompt",
        MINIMAL.replace("code: en", "code: sw"),
        ["language 'sw' has no shipped meta-prompt", "instruction:"],
    ),
    ("nothing to generate", "name: t\nteacher: {model: builtin:smollm2-moe}\ngenerate: {}\n", ["nothing to generate"]),
    (
        "missing prompt file",
        MINIMAL + "  sources: [{path: nope.jsonl}]\n",
        ["generate.sources[0].path: file not found"],
    ),
    ("two prompt origins", MINIMAL + "  sources: [{path: a.jsonl, dataset: org/x}]\n", ["exactly one of `path`"]),
    ("bad cron", MINIMAL + "schedule: {cron: '61 * * * *'}\n", ["schedule.cron", "not a valid cron expression"]),
    ("cron fields", MINIMAL + "schedule: {cron: '* *'}\n", ["has 2 fields"]),
    ("bad timezone", MINIMAL + "schedule: {cron: '0 3 * * *', timezone: Mars/Olympus}\n", ["unknown timezone"]),
    ("bad endpoint", MINIMAL.replace("smollm2-moe", "smollm2-moe\n  endpoint: localhost:8000"), ["http(s) URL"]),
    ("bad name", MINIMAL.replace("name: t", "name: ../escape"), ["must be letters, digits"]),
    ("unknown domain", MINIMAL + "    domains: [astrology]\n", ["unknown topic domain", "science"]),
    (
        "endpoint and a pool",
        MINIMAL.replace("smollm2-moe", "smollm2-moe\n  endpoint: http://a:1\n  endpoints: [http://b:1]"),
        ["teacher", "give `endpoint` (one server) or `endpoints` (a pool), not both"],
    ),
    ("a pool member", MINIMAL.replace("smollm2-moe", "smollm2-moe\n  endpoints: [http://a:1, b:1]"), ["got 'b:1'"]),
    (
        "a server twice",
        MINIMAL.replace("smollm2-moe", "smollm2-moe\n  endpoints: [http://a:1, http://a:1/]"),
        ["twice"],
    ),
    (
        "generate on slurm without its block",
        MINIMAL.replace("generate:\n", "generate:\n  executor: slurm\n  tasks: 4\n"),
        ["generate", "executor: slurm needs a `slurm:` block"],
    ),
    ("zero tasks", MINIMAL + "score: {tasks: 0}\n", ["score.tasks", "greater than or equal to 1"]),
    ("launch on no process", MINIMAL + "train: {student: {model: x}, launch: {num_processes: 0}}\n", ["num_processes"]),
]


@pytest.mark.parametrize("label, text, expected", [b for b in BAD if b[2]], ids=[b[0] for b in BAD if b[2]])
def test_bad_recipes_are_explained(label, text, expected):
    message = problems(text)
    for fragment in expected:
        assert fragment in message, f"{label}: {fragment!r} not in {message!r}"


def test_top_k_above_experts():
    text = MINIMAL.replace(
        "model: builtin:smollm2-moe", "model: builtin:smollm2-moe\n  builtin: {num_experts: 2, top_k: 3}"
    )
    assert "top_k (3) must be <= num_experts (2)" in problems(text)


def test_all_problems_reported_at_once():
    text = MINIMAL.replace("quota: 2", "quota: -1") + "  sampling: {top_p: 0}\n"
    message = problems(text)
    assert "quota" in message and "top_p" in message


def test_env_interpolation(monkeypatch):
    monkeypatch.setenv("TEACHER_URL", "http://127.0.0.1:9999")
    text = MINIMAL.replace("smollm2-moe", "smollm2-moe\n  endpoint: ${TEACHER_URL}") + "output_dir: ${OUT:-runs/x}\n"
    recipe = parse_recipe(text)
    assert recipe.teacher.endpoint == "http://127.0.0.1:9999"
    assert recipe.output_dir == "runs/x"


def test_missing_env_var_is_named():
    text = MINIMAL.replace("smollm2-moe", "smollm2-moe\n  endpoint: ${NOT_SET_ANYWHERE_123}")
    assert "teacher.endpoint: environment variable ${NOT_SET_ANYWHERE_123} is not set" in problems(text)


def test_relative_source_paths_resolve_from_recipe_folder(write_recipe, tmp_path):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    recipe = load_recipe(write_recipe(MINIMAL + "  sources: [{path: prompts.jsonl}]\n"))
    assert recipe.generate.sources[0].path == "prompts.jsonl"


def test_cli_exit_code_2_and_no_traceback(write_recipe):
    path = write_recipe(MINIMAL + "genrate: {}\n")
    done = subprocess.run(
        [sys.executable, "-m", "dataengine.cli", "validate", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "did you mean 'generate'" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_cli_missing_file_exit_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "dataengine.cli", "plan", str(tmp_path / "nope.yaml")], capture_output=True, text=True
    )
    assert done.returncode == 2 and "file not found" in done.stderr and "Traceback" not in done.stderr


def test_fingerprint_tracks_content():
    a, b = parse_recipe(MINIMAL), parse_recipe(MINIMAL.replace("quota: 2", "quota: 3"))
    assert a.fingerprint("generate") != b.fingerprint("generate")
    assert a.fingerprint("teacher") == b.fingerprint("teacher")


def test_validate_on_an_empty_cache_writes_nothing_and_needs_no_network(tmp_path):
    """A fresh machine: no ~/.cache, no weights. `validate` reports the missing weights (exit 2) without
    downloading them (no network namespace at all where `unshare -n` works), and leaves no file anywhere
    under the home or working folder."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("DATAENGINE_CACHE", "HF_HOME", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, "-m", "dataengine.cli", "validate", str(ROOT / "recipes" / "quickstart.yaml")]
    offline = subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    done = subprocess.run(
        (["unshare", "-n"] if offline else []) + command, cwd=work, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "weights" in done.stderr and "are not on this machine" in done.stderr and "Traceback" not in done.stderr
    assert sorted(tmp_path.rglob("*")) == sorted([home, work])


def test_shipped_cluster_recipe_is_valid_with_every_check():
    from dataengine.runner import check

    recipe = load_recipe("recipes/qwen3-moe-cluster.yaml")
    check(recipe, ROOT / "recipes", "qwen3-moe-cluster.yaml")  # stage checks too: the accelerate config exists
    assert recipe.teacher.vllm.enable_expert_parallel and recipe.teacher.vllm.data_parallel_size == 8
    assert (recipe.generate.executor, recipe.generate.tasks, recipe.score.executor) == ("slurm", 4, "slurm")
    assert recipe.generate.slurm.sbatch_args == {"gres": "gpu:8"} and not recipe.teacher.urls  # a server per task
    assert recipe.train.launch.num_processes == 8


def test_shipped_reasoning_recipe_is_valid_with_every_check():
    from dataengine.generate.stage import teacher_config
    from dataengine.runner import check

    recipe = load_recipe("recipes/reasoning-moe-gpu.yaml")
    check(recipe, ROOT / "recipes", "reasoning-moe-gpu.yaml")
    assert recipe.teacher.vllm.extra_args == ["--reasoning-parser", "deepseek_r1"]
    assert recipe.train.reasoning_format == "template" and recipe.train.distill.method == "offline_topk"
    assert recipe.curate.filters.reasoning.max_tokens == recipe.generate.sampling.thinking_token_budget
    # the budget reaches every request as vLLM takes it; thinking is left to the template (always on for it)
    params = teacher_config(recipe, "http://gpu-node:8000").default_generation_params
    assert params["thinking_token_budget"] == 6144 and "chat_template_kwargs" not in params


def test_shipped_expert_students_recipe_is_valid_and_hands_the_map_where_it_is_read():
    from pipelines.distill import build

    recipe = load_recipe("recipes/expert-students.yaml")
    check(recipe, ROOT / "recipes", "expert-students.yaml")
    assert recipe.teacher.builtin.experts == "split"
    made = recipe.train.student.from_teacher
    assert (made.keep_experts, made.expert_score) == (2, "reap")
    stages = {s.name: s for s in build(recipe, ROOT / "recipes").stages}
    # REAP scores the experts on training rows: train reads no routing map; evaluate's init by use does
    assert "routing" not in stages["train"].inputs and "routing" in stages["evaluate"].inputs
