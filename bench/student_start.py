"""What a student's start costs on CPU, side by side in one run (issue 26): the builtin teacher's dense parent
dequantised from its GGUF (what every build and every student cut from it did each time) against loaded from the
folder the engine now keeps in the cache; and the teacher's experts scored by REAP in its checkpoint's bfloat16
against float32 (what `train.student.from_teacher` loads it in on a CPU without native bfloat16).

    .venv/bin/python bench/student_start.py [--rounds 2] [--rows 8] [--isa avx2]

Each contender runs in its own subprocess (a cold interpreter, imports done before the clock starts), one after
another, `--rounds` times in the same order. The REAP pair scores `--rows` rows of ~90 tokens on the split builtin
teacher (`make teacher` builds it for the tests; `dataengine teacher build recipes/expert-students.yaml` does too).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from generate import AVX2_ONLY  # bench/generate.py's cap, beside this file

CONTENDERS = ["dense parent from the GGUF", "dense parent from the cache", "REAP in bfloat16", "REAP in float32"]


def measure(name: str, rows: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dataengine.recipe import BuiltinTeacherOptions
    from dataengine.teacher.builtin import BUILTIN_MODELS, ensure_builtin, fetch_gguf, load_dense, load_dense_parent
    from dataengine.train.expert_scores import score_experts

    gguf = fetch_gguf(BUILTIN_MODELS["smollm2-moe"])
    if name.startswith("dense"):
        load_dense_parent(gguf)  # written into the cache before the clock starts, if it is not yet
        started = time.perf_counter()
        (load_dense if name.endswith("GGUF") else load_dense_parent)(gguf)  # the engine's own path: GGUF hashed too
        return time.perf_counter() - started
    teacher = ensure_builtin("smollm2-moe", BuiltinTeacherOptions(experts="split"))
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    text = "Explain why the sky is blue and the sea is salty, in a few plain sentences for a child. " * 4
    sequences = [tokenizer(f"{i}. {text}").input_ids for i in range(rows)]
    started = time.perf_counter()
    dtype = torch.bfloat16 if "bfloat16" in name else torch.float32
    score_experts(AutoModelForCausalLM.from_pretrained(teacher, dtype=dtype), sequences)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--isa", choices=["native", "avx2"], default="native")
    parser.add_argument("--only", choices=CONTENDERS)
    args = parser.parse_args()
    if args.only:
        print("RESULT " + json.dumps(measure(args.only, args.rows)))
        return
    env = {**os.environ, **(AVX2_ONLY if args.isa == "avx2" else {})}
    seconds: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for _ in range(args.rounds):
        for name in CONTENDERS:
            cmd = [sys.executable, __file__, "--only", name, "--rows", str(args.rows)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
            seconds[name].append(json.loads(line[len("RESULT ") :]))
    print(f"| contender ({args.isa}) | seconds, each round | median | ratio |\n|---|---|---:|---:|")
    for first, second in (CONTENDERS[:2], CONTENDERS[2:]):
        slow = statistics.median(seconds[first])
        for name in (first, second):
            median = statistics.median(seconds[name])
            rounds = ", ".join(f"{s:.1f}" for s in seconds[name])
            print(f"| {name} | {rounds} | {median:.1f} | {slow / median:.2f}x |")


if __name__ == "__main__":
    main()
