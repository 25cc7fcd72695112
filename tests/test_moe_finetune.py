"""recipes/moe-finetune.yaml: the builtin MoE fine-tuned on rows with its expert load recorded at every step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataengine.recipe import load_recipe
from dataengine.train.phases import run_sft
from dataengine.train.student import init_student
from tests.tiny_models import sft_data

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_the_moe_finetune_recipe_trains_the_builtin_moe_and_records_its_load(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "moe-finetune.yaml")
    start = init_student(recipe, ROOT / "recipes", tmp_path / "init", rows=[], log=print)
    assert json.loads((start / "config.json").read_text())["architectures"] == ["MixtralForCausalLM"]
    # the recipe's settings, a few short steps
    sft = recipe.train.sft.model_copy(
        update={"max_steps": 3, "logging_steps": 1, "save_steps": 3, "per_device_train_batch_size": 2, "max_length": 64}
    )
    final = run_sft(start, sft_data(6), sft, tmp_path / "sft", print)
    record = json.loads((final / "phase.json").read_text())
    steps = record["expert_load_steps"]
    assert [s["step"] for s in steps] == [1, 2, 3] and all(len(s["cv"]) == 30 for s in steps)  # every MoE layer
    assert len(record["expert_load"]) == 30
    config = json.loads((final / "config.json").read_text())
    assert config["router_aux_loss_coef"] == 0.02 and config["output_router_logits"] is True
