"""Recipe validation of the score and train blocks, including the vocabulary check for logit distillation."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dataengine.errors import RecipeError
from dataengine.recipe import load_recipe, parse_recipe
from dataengine.runner import check
from tests.conftest import MINIMAL
from tests.tiny_models import WORDS, save, tiny_llama, tiny_tokenizer

CURATE = "curate: {}\n"
TRAIN = """
train:
  student: {prune: {keep_every: 3}}
  distill: {method: offline_topk}
"""


def problems(text: str) -> str:
    with pytest.raises(RecipeError) as info:
        check(parse_recipe(text, "r.yaml"), Path.cwd(), "r.yaml")
    return "\n".join(info.value.problems)


def load_checked(path: Path):
    """A recipe as `dataengine validate` sees it: the schema, then the stages' checks."""
    recipe = load_recipe(path)
    check(recipe, path.parent, str(path))
    return recipe


def test_shipped_quickstart_distills_offline():
    recipe = load_recipe("recipes/quickstart.yaml")
    assert recipe.pipeline == "distill"
    student = recipe.train.student
    assert student.from_teacher.merge_experts == "routing" and recipe.route is not None
    assert (student.prune.method, student.prune.keep) == ("block_influence", 10)
    assert recipe.train.distill.method == "offline_topk" and recipe.score.top_k == 20


def test_distill_pipeline_with_defaults():
    recipe = parse_recipe(MINIMAL + "pipeline: distill\nscore: {}\n" + CURATE + TRAIN)
    assert recipe.train.sft.enabled and recipe.train.evaluate.eval_fraction == 0.2
    # TRL's knobs left out of the recipe are not set: TRL's config keeps its own defaults
    assert recipe.train.sft.learning_rate is None and recipe.train.sft.completion_only_loss is None


@pytest.mark.parametrize(
    "text, expected",
    [
        (MINIMAL + "pipeline: distill\n" + CURATE, ["pipeline distill needs `curate` and `train`"]),
        (MINIMAL + CURATE + TRAIN, ["offline_topk trains on stored teacher logprobs: add a `score` block"]),
        (
            MINIMAL + "score: {top_k: 50}\n" + CURATE + TRAIN,
            ["score.top_k (50) exceeds teacher.vllm.max_logprobs (20)"],
        ),
        (MINIMAL + "train: {student: {name: s}}\n", ["train.student", "give a start: `model`"]),
        (MINIMAL + "train: {student: {prune: {keep_every: 2, layers: [0]}}}\n", ["give one of `keep_every`"]),
        (MINIMAL + "train: {student: {prune: {sample_rows: 4}}}\n", ["and/or `intermediate_size`"]),
        (
            MINIMAL + "train: {student: {prune: {method: block_influence}}}\n",
            ["`keep` goes with `method: block_influence`"],
        ),
        (MINIMAL + "train: {student: {model: x, from_teacher: {}}}\n", ["`model` or `from_teacher`, not both"]),
        (
            MINIMAL + CURATE + "train: {student: {model: x}, evaluate: {compare_inits: [{name: a, model: y}, "
            "{name: a, model: z}]}}\n",
            ["every compared init needs its own `name`"],
        ),
        (
            MINIMAL + CURATE + "train: {student: {model: x}, evaluate: {compare_inits: [{name: teacher, model: y}]}}\n",
            ["the evaluation's own rows are named so"],
        ),
        (
            MINIMAL + CURATE + "train: {student: {model: x}, evaluate: {compare_inits: "
            "[{name: pruned, from_teacher: {merge_experts: top, keep_experts: 2}}]}}\n",
            ["merge_experts: top merges into a dense student, keep_experts keeps an MoE: give one"],
        ),
        (
            MINIMAL + CURATE + "train: {student: {from_teacher: {keep_experts: 0}}}\n",
            ["train.student.from_teacher.keep_experts"],
        ),
        (MINIMAL + "train: {student: {model: x}, sft: null}\n", ["nothing to train"]),
        (MINIMAL + "train: {student: {model: x}, distill: {method: magic}}\n", ["train.distill.method", "'magic'"]),
        (
            MINIMAL + "train: {student: {model: x}, distill: {method: server, beta: 0.5, loss_top_k: 4}}\n",
            ["needs loss_top_k: 1"],
        ),
        (MINIMAL + "train: {student: {model: x}, sft: {learning_rate: -1}}\n", ["train.sft.learning_rate"]),
        (
            MINIMAL + "train: {student: {model: x}, sft: {assistant_only_loss: true}}\n",
            ["train.sft.assistant_only_loss: renamed to 'completion_only_loss'"],
        ),
        (
            MINIMAL + "train: {student: {model: x}, sft: {lora: {alpha: 16}}}\n",
            ["train.sft.lora.alpha: renamed to 'lora_alpha'"],
        ),
        (
            MINIMAL + "train: {student: {model: x}, distill: {method: on_policy, max_new_tokens: 64}}\n",
            ["`max_new_tokens` is a knob of method gkd", "DistillationConfig, which has no `max_new_tokens`"],
        ),
        (
            MINIMAL + "train: {student: {model: x}, distill: {method: gkd, ce_weight: 0.5}}\n",
            ["`ce_weight` is a knob of method offline_topk", "GKDConfig"],
        ),
    ],
)
def test_bad_train_blocks_are_explained(text, expected):
    message = problems(text)
    for fragment in expected:
        assert fragment in message


def _recipe(tmp_path, teacher_words, student_words, distill: bool) -> str:
    teacher = save(tiny_llama(len(tiny_tokenizer(teacher_words))), tiny_tokenizer(teacher_words), tmp_path / "t")
    student = save(tiny_llama(len(tiny_tokenizer(student_words))), tiny_tokenizer(student_words), tmp_path / "s")
    text = textwrap.dedent(
        f"""
        name: v
        teacher: {{model: {teacher}}}
        generate: {{chat: {{languages: [{{code: en, quota: 1}}]}}}}
        train:
          student: {{model: {student}}}
        """
    )
    if distill:
        text += "  distill: {method: gkd}\n"
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_logit_distillation_needs_the_teachers_vocabulary(tmp_path):
    path = _recipe(tmp_path, WORDS, WORDS[:-5] + ["aaa", "bbb", "ccc", "ddd", "eee"], distill=True)
    with pytest.raises(RecipeError) as info:
        load_checked(path)
    message = "\n".join(info.value.problems)
    assert "different vocabularies" in message and "same size, different token ids" in message
    assert "SFT on the curated text works across vocabularies" in message


def test_sft_alone_accepts_another_vocabulary_and_same_vocab_distills(tmp_path):
    assert load_checked(_recipe(tmp_path / "a", WORDS, WORDS[:40], distill=False)).train.distill is None
    assert load_checked(_recipe(tmp_path / "b", WORDS, WORDS, distill=True)).train.distill.method == "gkd"


def test_prune_needs_a_builtin_teacher(tmp_path):
    teacher = save(tiny_llama(len(tiny_tokenizer())), tiny_tokenizer(), tmp_path / "t")
    text = MINIMAL.replace("builtin:smollm2-moe", str(teacher)) + "train: {student: {prune: {keep_every: 2}}}\n"
    assert "only builtin teachers ship" in problems(text)


def test_training_knobs_are_trls_fields_with_trls_defaults():
    """Every knob of a training block is a field of the TRL (or peft) config it feeds, under its name, and
    unset by default so that config keeps its own default; the distillation knobs are allowed exactly for
    the methods whose config has them. Only `precision`, the switches and offline_topk's loss are ours."""
    from dataclasses import fields

    from peft import LoraConfig
    from trl import DistillationConfig, SFTConfig
    from trl.experimental.gkd import GKDConfig
    from trl.experimental.server_distillation import ServerDistillationConfig

    from dataengine.recipe import DISTILL_CONFIGS, DISTILL_KNOBS, DistillSettings, LoraSettings, SFTSettings
    from dataengine.train.phases import OURS

    def names(config) -> set[str]:
        return {f.name for f in fields(config)}

    def knobs(model) -> set[str]:
        return set(model.model_fields) - OURS

    assert knobs(SFTSettings) <= names(SFTConfig)
    assert set(LoraSettings.model_fields) <= names(LoraConfig)
    configs = {
        "offline_topk": SFTConfig,
        "gkd": GKDConfig,
        "on_policy": DistillationConfig,
        "server": ServerDistillationConfig,
    }
    assert {method: config.__name__ for method, config in configs.items()} == DISTILL_CONFIGS
    ours = {"offline_topk": {"temperature"}}  # our trainer's, beside ce_weight
    for method, config in configs.items():
        allowed = {k for k in knobs(DistillSettings) if k not in DISTILL_KNOBS or method in DISTILL_KNOBS[k]}
        assert allowed - ours.get(method, set()) <= names(config), method
        assert not {k for k in DISTILL_KNOBS if method not in DISTILL_KNOBS[k]} & names(config), method
    for model in (SFTSettings, DistillSettings, LoraSettings):
        defaults = {k: f.default for k, f in model.model_fields.items() if k not in OURS}
        assert set(defaults.values()) == {None}, model
