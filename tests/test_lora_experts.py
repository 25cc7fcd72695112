"""LoRA on an MoE's experts: peft's `target_parameters` adapts the 3D expert weights that no module wraps."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM

from dataengine.recipe import LoraSettings, SFTSettings
from dataengine.train.phases import run_sft
from tests.tiny_models import save, sft_data, tiny_mixtral, tiny_tokenizer


def test_lora_on_the_experts_trains_them_and_is_merged_into_the_saved_student(tmp_path):
    tokenizer = tiny_tokenizer()
    start = save(tiny_mixtral(len(tokenizer), seed=1), tokenizer, tmp_path / "start")
    lora = LoraSettings(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj"],
        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
    )
    settings = SFTSettings(
        max_steps=2, logging_steps=1, save_steps=2, per_device_train_batch_size=2, max_length=64,
        learning_rate=1e-2, router_aux_loss_coef=0.02, lora=lora,
    )  # fmt: skip
    final = run_sft(start, sft_data(6), settings, tmp_path / "sft", lambda _: None)
    before = AutoModelForCausalLM.from_pretrained(start).state_dict()
    after = AutoModelForCausalLM.from_pretrained(final).state_dict()
    assert set(after) == set(before)  # merged: no adapter weights left in the student
    changed = {name.split(".", 3)[-1] for name in before if not torch.equal(before[name], after[name])}
    assert changed == {"self_attn.q_proj.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"}
    record = json.loads((final / "phase.json").read_text())
    assert [s["step"] for s in record["expert_load_steps"]] == [1, 2]
