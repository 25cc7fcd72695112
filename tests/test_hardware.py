"""What the engine picks for the machine it runs on: the teacher's dtype, and on a small CPU machine vLLM's model in
its EngineCore on every core."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dataengine import hardware
from dataengine.recipe import load_recipe
from dataengine.teacher.server import REGEX_TIMEOUT, REGEX_TIMEOUT_S, server_command, server_environment
from tests.conftest import MINIMAL


@pytest.fixture
def cpu_machine(monkeypatch: pytest.MonkeyPatch):
    """A CPU-only machine with `cores` cores and native bf16 or not."""

    def make(bf16: bool, cores: int = 2) -> None:
        monkeypatch.setattr(hardware, "has_gpu", lambda: False)
        monkeypatch.setattr(hardware, "native_bf16", lambda: bf16)
        monkeypatch.setattr(hardware, "usable_cores", lambda: list(range(cores)))

    return make


def test_the_dtype_follows_the_cpu_unless_the_recipe_names_one(cpu_machine):
    cpu_machine(bf16=False)
    assert hardware.teacher_dtype(None).value == "float32"
    assert hardware.teacher_dtype("bfloat16") == hardware.Choice("bfloat16", "teacher.vllm.dtype")
    cpu_machine(bf16=True)
    assert hardware.teacher_dtype(None).value == "bfloat16"
    assert hardware.teacher_dtype("float32").value == "float32"


def test_a_gpu_is_served_as_before(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(hardware, "has_gpu", lambda: True)
    monkeypatch.setattr(hardware, "usable_cores", lambda: [0, 1])
    assert hardware.teacher_dtype(None).value == "bfloat16"
    assert hardware.machine_env({}) == ({}, [])


def test_several_vllm_workers_keep_vllms_binding(cpu_machine, write_recipe):
    """Several ranks need vLLM's multiprocess executor (a Worker each, with a core list each)."""
    cpu_machine(bf16=False, cores=4)
    assert hardware.machine_env({}, ranks=2) == ({}, [])
    vllm = load_recipe(write_recipe(MINIMAL)).teacher.vllm
    assert vllm.ranks == 1
    assert (
        vllm.model_copy(update={"tensor_parallel_size": 2, "extra_args": ["--pipeline-parallel-size", "2"]}).ranks == 4
    )
    assert vllm.model_copy(update={"extra_args": ["--pipeline-parallel-size=3"]}).ranks == 3


def test_avx512_without_bf16_is_not_native(monkeypatch: pytest.MonkeyPatch):
    """oneDNN says yes to bf16 on any AVX-512 CPU (it emulates it there): the CPU's own flags must say so too."""
    import torch

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert hardware.native_bf16.__wrapped__() is False


def test_a_small_machine_runs_the_model_in_one_engine_process_unless_told_otherwise(cpu_machine):
    cpu_machine(bf16=False, cores=2)
    env, why = hardware.machine_env({})
    assert env == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "2"}
    assert len(why) == 1 and "2 cores" in why[0] and "no Worker process" in why[0]
    # a thread count of the caller's stands
    assert hardware.machine_env({"OMP_NUM_THREADS": "1"})[0] == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    # the recipe's env (or the caller's) wins: vLLM's own switch, or its CPU binding (which only its Worker applies)
    assert hardware.machine_env({"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}) == ({}, [])
    assert hardware.machine_env({"VLLM_CPU_OMP_THREADS_BIND": "auto"}) == ({}, [])
    assert hardware.machine_env({"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}) == ({}, [])
    cpu_machine(bf16=False, cores=16)  # a big machine: vLLM's Worker and its reservation for the frontend stand
    assert hardware.machine_env({}) == ({}, [])
    cpu_machine(bf16=False, cores=1)
    assert hardware.machine_env({}) == ({}, [])


def test_the_server_starts_with_what_was_picked(cpu_machine, write_recipe):
    cpu_machine(bf16=False)
    teacher = load_recipe(write_recipe(MINIMAL.replace("builtin:smollm2-moe", "some/model"))).teacher
    cmd = server_command(teacher, "some/model", 8000)
    assert cmd[cmd.index("--dtype") + 1] == "float32"
    asked = teacher.model_copy(update={"vllm": teacher.vllm.model_copy(update={"dtype": "bfloat16"})})
    cmd = server_command(asked, "some/model", 8000)
    assert cmd[cmd.index("--dtype") + 1] == "bfloat16"
    lines = hardware.describe(None, {})
    assert lines[0].startswith("teacher dtype float32: this CPU has no native bfloat16")
    assert hardware.describe("bfloat16", {"VLLM_CPU_OMP_THREADS_BIND": "0"}) == []


def test_a_server_gives_the_code_layouts_regex_time_to_compile_unless_told_otherwise(cpu_machine, write_recipe):
    """vLLM fails a request whose regex takes over 5 s to compile; the code layout's took longer on a loaded core."""
    cpu_machine(bf16=False)
    teacher = load_recipe(write_recipe(MINIMAL)).teacher
    env = server_environment(teacher, {"PATH": "/bin"})
    assert env[REGEX_TIMEOUT] == REGEX_TIMEOUT_S and int(REGEX_TIMEOUT_S) > 5
    assert env["PATH"] == "/bin" and env["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # and what the machine calls for
    # the caller's value stands, and the recipe's over both
    assert server_environment(teacher, {REGEX_TIMEOUT: "9"})[REGEX_TIMEOUT] == "9"
    asked = teacher.model_copy(update={"vllm": teacher.vllm.model_copy(update={"env": {REGEX_TIMEOUT: "0"}})})
    assert server_environment(asked, {REGEX_TIMEOUT: "9"})[REGEX_TIMEOUT] == "0"


def test_native_bf16_is_what_onednn_may_use():
    """oneDNN capped at AVX2 (as on a CPU without AVX512-BF16/AMX) has no native bf16, whatever the flags say."""
    code = "from dataengine.hardware import native_bf16; print(native_bf16())"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    capped = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert capped.stdout.strip() == "False"


@pytest.mark.slow
def test_a_real_server_on_a_small_machine_has_no_worker_process_and_answers(teacher_server):
    """The test's own vLLM server (started by the engine's TeacherServer): on 2 to 4 cores, its EngineCore runs the
    model with a thread per usable core, no Worker process is started, and it generates."""
    import httpx
    import psutil

    if hardware.one_engine_process({**os.environ, **teacher_server.teacher.vllm.env}) is None:
        pytest.skip("not a small CPU-only machine, or vLLM's executor set from outside: vLLM's Worker stands")
    tree = psutil.Process(teacher_server.process.pid).children(recursive=True)
    names = [proc.name() for proc in tree]
    assert "VLLM::EngineCore" in names and "VLLM::Worker" not in names, names
    # the EngineCore inherits its API server's environment (its own reads empty once vLLM has set its title)
    api_server = tree[names.index("VLLM::EngineCore")].parent()
    threads = os.environ.get("OMP_NUM_THREADS", str(len(hardware.usable_cores())))
    assert api_server.environ().get("OMP_NUM_THREADS") == threads
    assert api_server.environ().get(REGEX_TIMEOUT) == os.environ.get(REGEX_TIMEOUT, REGEX_TIMEOUT_S)
    answer = httpx.post(
        f"{teacher_server.base_url}/v1/completions",
        json={"model": "builtin:smollm2-moe", "prompt": "The capital of France is", "max_tokens": 8},
        timeout=120,
    ).json()
    assert answer["usage"]["completion_tokens"] > 0
