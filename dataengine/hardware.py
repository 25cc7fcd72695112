"""What runs fast on this machine's CPU, for the models the engine runs there: the dtype, and on a small machine how
vLLM runs its model on the cores. GPUs are left to their own defaults.

Measured (bench/BENCHMARKS.md, "Generation throughput"): on a CPU without native bfloat16 (AVX2 only), a bf16
matmul in torch runs 50x slower than float32 and vLLM generates ~2x faster in float32; on one with AVX512-BF16 or
AMX, bf16 is the faster (2.3x to 2.7x float32 on a Xeon with AMX; on an AMD EPYC with AVX512-BF16 and no AMX,
1.11x on both cores and about even on one, in one run each). And vLLM's CPU worker, a process of its own, binds its
OpenMP threads to all cores but one, which it keeps for its own frontend: on a 2-core machine that leaves half the
CPU idle while the frontend mostly waits. On a small machine the engine has vLLM run the model in its EngineCore
process instead (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, vLLM's uniprocess executor) with one OpenMP thread per usable
core (`OMP_NUM_THREADS`: unbound, torch would otherwise take one per physical core, half of them on a VM whose
vCPUs are hyperthreads), and a server starts without a Worker process, ~8 s sooner (bench/server_start.py).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

# at or below this many cores, vLLM's model runs on all of them: the frontend's few milliseconds per step cost less
# than an idle core (2 cores: a Worker bound to both against vLLM's one, bench/generate.py, 1.4x in bf16 and 1.7x
# in float32 on a Xeon, 1.7x in bf16 on an AMD EPYC; the EngineCore on both, bench/server_start.py, 1.56x in
# float32 and 1.47x to 1.63x in bf16 on the EPYC); above it, vLLM's own reservation stands
SMALL_MACHINE_CORES = 4
THREADS_BIND = "VLLM_CPU_OMP_THREADS_BIND"
RESERVED = "VLLM_CPU_NUM_OF_RESERVED_CPU"
# "0": the EngineCore runs the model itself (vLLM's uniprocess executor), with torch's threads on every usable core;
# vLLM's CPU binding (THREADS_BIND, RESERVED) applies only to its multiprocess executor's Worker
MULTIPROCESSING = "VLLM_ENABLE_V1_MULTIPROCESSING"
THREADS = "OMP_NUM_THREADS"  # vLLM leaves a value set from outside as it is


@dataclass(frozen=True)
class Choice:
    """A value the engine picked for this machine, and why (`dataengine run` says it once)."""

    value: str
    why: str


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@functools.cache
def native_bf16() -> bool:
    """Whether torch runs bfloat16 matmuls natively here: the CPU has AVX512-BF16 or AMX (torch's cpuinfo), and
    oneDNN may use them (an ISA capped with ONEDNN_MAX_CPU_ISA counts as what it is capped to). oneDNN's own
    check alone says yes on any AVX-512 CPU, where it emulates bf16."""
    import torch

    try:
        has = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return bool(has and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without these checks or without oneDNN
        return False


def usable_cores() -> list[int]:
    """The cores this process may run on (a container's or taskset's share, not the host's count)."""
    return sorted(os.sched_getaffinity(0))


def cpu_dtype() -> Choice:
    """float32 or bfloat16 for a model on this CPU."""
    if native_bf16():
        return Choice("bfloat16", "this CPU computes bfloat16 natively (AVX512-BF16/AMX)")
    return Choice("float32", "this CPU has no native bfloat16 (no AVX512-BF16/AMX): float32 runs ~2x faster")


def teacher_dtype(asked: str | None) -> Choice:
    """The dtype vLLM serves the teacher in: the recipe's when it names one; else bfloat16 on a GPU (as
    before the engine chose for CPUs) and what is fast on this CPU otherwise."""
    if asked is not None:
        return Choice(asked, "teacher.vllm.dtype")
    if has_gpu():
        return Choice("bfloat16", "a GPU")
    return cpu_dtype()


def one_engine_process(env: dict[str, str], ranks: int = 1) -> Choice | None:
    """VLLM_ENABLE_V1_MULTIPROCESSING=0 for a server of one worker (`ranks`: tensor x pipeline x data parallel) on
    a small CPU-only machine: the model runs in the EngineCore on every usable core, no Worker process. None where
    the recipe (or the caller's environment) sets it or vLLM's CPU binding, on a GPU, above SMALL_MACHINE_CORES,
    or with several ranks (those need vLLM's multiprocess executor)."""
    if THREADS_BIND in env or RESERVED in env or MULTIPROCESSING in env or ranks > 1 or has_gpu():
        return None
    cores = usable_cores()
    if len(cores) < 2 or len(cores) > SMALL_MACHINE_CORES:
        return None
    return Choice(
        "0",
        f"{len(cores)} cores: vLLM runs the model in its EngineCore on all of them, no core kept idle for its "
        "frontend and no Worker process to start",
    )


def machine_env(env: dict[str, str], ranks: int = 1) -> tuple[dict[str, str], list[str]]:
    """The variables to add to a CPU server's environment `env`, and the lines that say why."""
    one = one_engine_process(env, ranks)
    if one is None:
        return {}, []
    threads = {} if THREADS in env else {THREADS: str(len(usable_cores()))}
    return {MULTIPROCESSING: one.value, **threads}, [f"{MULTIPROCESSING}={one.value}: {one.why}"]


def describe(dtype: str | None, env: dict[str, str], ranks: int = 1) -> list[str]:
    """What the engine picks for a teacher server it starts here, a line each with the reason."""
    chosen = teacher_dtype(dtype)
    lines = [] if dtype is not None else [f"teacher dtype {chosen.value}: {chosen.why}"]
    return lines + machine_env({**os.environ, **env}, ranks)[1]
