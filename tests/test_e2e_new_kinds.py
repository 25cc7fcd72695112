"""recipes/new-kinds.yaml end to end on the builtin teacher (vLLM CPU server): 3-turn conversations, verifiable
math and Magpie prompts through generate -> curate -> score -> train -> evaluate -> publish; the run killed once
Magpie's pass and some of round 0's chunks are done, then resumed; what it publishes loaded with `datasets` and
trained on with TRL's `sft` script (what `trl sft` runs). Its reasoning settings change nothing on a teacher that
does not think (the stand-in thinking teacher is tests/test_reasoning.py's)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import concatenate_datasets, load_dataset
from rich.console import Console

from dataengine.recipe import load_recipe
from dataengine.rows import read_rows
from dataengine.runner import run_recipe

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

# half the shipped recipe's token caps: the run's time follows its longest chain of decode steps
# (bench/decode_batch.py), here a 3-turn conversation (432 steps as shipped, 216 here); every kind still goes through
# every stage. Its math rows are mostly dropped at either length (the 135M teacher's problems seldom carry an answer
# line: the recipe's comment)
SHORTER = (
    ("max_tokens: 96, frequency_penalty", "max_tokens: 48, frequency_penalty"),
    ("question_max_tokens: 48", "question_max_tokens: 24"),
    ("problem_max_tokens: 128", "problem_max_tokens: 64"),
    ("    max_tokens: 192", "    max_tokens: 96"),
    ("    max_tokens: 64", "    max_tokens: 32"),
)


def _assistant_turns(row: dict) -> int:
    return sum(m["role"] == "assistant" for m in row["messages"])


def test_new_kinds_run_end_to_end_resume_after_a_kill_and_publish_what_trl_trains_on(tmp_path, teacher_server):
    text = (ROOT / "recipes" / "new-kinds.yaml").read_text()
    served = f"  builtin: {{top_k: 1}}\n  endpoint: {teacher_server.base_url}"  # the session server's teacher
    text = text.replace("  vllm: {enforce_eager: true, max_model_len: 2048}", served)
    text = text.replace("../runs/new-kinds/dataset", str(tmp_path / "dataset"))
    for shipped, shorter in SHORTER:
        assert text.count(shipped) == 1, shipped
        text = text.replace(shipped, shorter)
    # two steps a phase, not the recipe's four: each phase still trains, checkpoints and hands over (~4 s a step here)
    assert text.count("max_steps: 4,") == 2
    text = text.replace("max_steps: 4,", "max_steps: 2,")
    path = tmp_path / "new-kinds.yaml"
    path.write_text(text)
    run_dir = tmp_path / "run"

    # killed once the Magpie pass is done and round 0 has checkpointed a chunk
    cli = [sys.executable, "-m", "dataengine.cli", "run", str(path), "--output", str(run_dir)]
    proc = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    work = run_dir / ".work" / "generate"
    magpie_done = work / "magpie" / "logs" / "completions" / "00000"
    deadline = time.time() + 600
    while not (magpie_done.is_file() and any((work / "checkpoints").rglob("*.jsonl"))) and time.time() < deadline:
        assert proc.poll() is None, f"the run ended before it could be killed (exit {proc.returncode})"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "generated" / "manifest.json").exists()

    console = Console(record=True, width=200)
    manifests = run_recipe(load_recipe(path), tmp_path, run_dir=run_dir, console=console)
    generate = manifests["generate"]
    magpie = generate.stats["magpie"]
    assert magpie["asked"] == 2 * (3 + 2)  # quota x oversample, written once: the resumed run did not ask again
    # every rollout asked was made: 5 conversations, 3 problems x 3 solutions, the Magpie prompts kept
    assert generate.rows_in == 5 + 9 + magpie["kept"]
    assert generate.rows_out + generate.drops.get("empty_question", 0) == generate.rows_in

    generated = read_rows(run_dir / "generated")
    by_task = {
        task: [r for r in generated if r["task"] == task] for task in ("instruct_answer", "math_problem", "magpie")
    }
    assert max(_assistant_turns(r) for r in by_task["instruct_answer"]) == 3
    assert all(r["kind"] == "math" and r["verify_reason"] for r in by_task["math_problem"])
    assert all(r["messages"][0]["role"] == "system" for r in by_task["magpie"])
    assert all(r["reasoning"] is None for r in generated)  # the builtin teacher does not think

    # curation kept every turn it checked as good; math rows only when math-verify verified them
    kept = read_rows(run_dir / "curated")
    assert kept and all(r["answer_verified"] for r in kept if r["kind"] == "math")
    # scoring read every assistant turn of the conversations it kept, and no user turn between them
    scored = read_rows(run_dir / "scored")
    for row in scored:
        answer_tokens = len(row["token_ids"]) - row["completion_start"]
        assert len(row["teacher_topk_ids"]) == answer_tokens
        if _assistant_turns(row) > 1:
            assert 0 < sum(row["completion_mask"]) < answer_tokens == len(row["completion_mask"])
        else:
            assert row["completion_mask"] is None
    training = json.loads((run_dir / "students" / "kinds-student" / "training.json").read_text())
    assert [p["steps"] for p in training["phases"]] == [2, 2]
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["held_out_rows"] >= 1, (len(kept), manifests["curate"].drops)
    assert metrics["after"]["perplexity"] > 1
    held = [r for r in kept if r["id"] in set(metrics["held_out_ids"])]
    assert ("math_accuracy" in metrics["after"]) == any(r["kind"] == "math" for r in held)

    # what was published: every config loads, the new columns with it
    dataset = tmp_path / "dataset"
    splits = load_dataset(str(dataset), "default")  # train, and test where held-out rows fell in the config
    everything = concatenate_datasets(list(splits.values()))
    assert len(everything) == len(kept)
    for column in ("reasoning", "turn_finish_reasons", "cut_reason", "answer_verified", "verify_reason"):
        assert column in everything.column_names
    for kind in {r["kind"] for r in kept}:
        assert {k for split in load_dataset(str(dataset), kind).values() for k in split["kind"]} == {kind}

    # and TRL's own `trl sft` script trains on it: one step of the student on the published conversations. Its
    # parser and main, in this process: `trl sft` would launch them under accelerate in a new interpreter (17 s for
    # this one step on 2 cores under the AVX2 cap, most of it importing torch, transformers and TRL again)
    from trl.scripts.sft import main as sft_main
    from trl.scripts.sft import make_parser

    out = tmp_path / "trl-sft"
    args = make_parser().parse_args_and_config(
        args=["--model_name_or_path", str(run_dir / "students" / "kinds-student"), "--dataset_name", str(dataset),
              "--dataset_config", "default", "--output_dir", str(out), "--max_steps", "1",
              "--per_device_train_batch_size", "2", "--max_length", "256", "--use_cpu", "--bf16", "false",
              "--report_to", "none", "--save_strategy", "no"],
        fail_with_unknown_args=True,
    )  # fmt: skip
    sft_main(*args)
    assert (out / "model.safetensors").is_file() or any(out.glob("*.safetensors")), sorted(
        p.name for p in out.iterdir()
    )
