"""`train.launch`: a training phase through `accelerate launch` on 2 CPU processes (gloo), against the same phase
run in this process."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from dataengine.errors import StageError
from dataengine.recipe import LaunchSettings, SFTSettings
from dataengine.train.launch import launch_args, launch_phase
from dataengine.train.phases import run_sft
from tests.tiny_models import save, sft_data, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    tokenizer = tiny_tokenizer()
    return save(tiny_llama(len(tokenizer), seed=3), tokenizer, tmp_path_factory.mktemp("student"))


SFT = SFTSettings(num_train_epochs=2, per_device_train_batch_size=2, max_length=64, save_steps=2, logging_steps=1)


@pytest.mark.slow
def test_sft_on_two_processes_makes_the_student_of_one(start, tmp_path):
    one = run_sft(start, sft_data(8), SFT, tmp_path / "one", print)
    two = launch_phase(
        "sft", start, sft_data(8), SFT, tmp_path / "two", LaunchSettings(num_processes=2), tmp_path, print
    )
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    record_one, record_two = (json.loads((f / "phase.json").read_text()) for f in (one, two))
    assert (record_one["processes"], record_two["processes"]) == (1, 2)
    # 8 rows, 2 per device, 2 epochs: 8 steps on one process, 4 when two share each step's rows
    assert (record_one["steps"], record_two["steps"]) == (8, 4)
    # the same weights by name and shape, loadable, and trained (not the start's weights, saved back)
    trained, alone, started = (AutoModelForCausalLM.from_pretrained(f).state_dict() for f in (two, one, start))
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in alone.items()}
    assert any(not torch.equal(trained[k], started[k]) for k in started)
    # the trainer's checkpoints sit where a resumed phase looks for them
    assert sorted(p.name for p in (tmp_path / "two").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_a_phase_that_fails_under_accelerate_says_where_its_log_is(start, tmp_path):
    broken = SFT.model_copy(update={"max_length": -5})
    with pytest.raises(
        StageError, match=r"sft: accelerate launch exited with code \d+; the last lines of .*launch.log"
    ):
        launch_phase(
            "sft", start, sft_data(2), broken, tmp_path / "p", LaunchSettings(num_processes=1), tmp_path, print
        )


def test_launch_arguments_pass_the_users_config_file_through(tmp_path):
    assert launch_args(LaunchSettings(num_processes=2), tmp_path)[0] == "--multi_gpu"
    assert "--multi_gpu" not in launch_args(LaunchSettings(), tmp_path)
    args = launch_args(LaunchSettings(num_processes=8, config_file="fsdp.yaml"), tmp_path)
    assert args == ["--config_file", str(tmp_path / "fsdp.yaml"), "--num_processes", "8"]
