"""GPU readiness of the expert features (issue 31): route replay, expert scoring and the student builds on a
Qwen3-MoE-shaped model with random weights, with throughput and peak memory. Needs torch and transformers
only (no vLLM); on one GPU it runs in a few minutes.

    python bench/gpu_experts.py                       # Qwen3-30B-A3B's layer shape, 8 of its 48 layers, cuda
    python bench/gpu_experts.py --layers 48           # the whole shape (~30B parameters: ~61 GB in bf16)
    python bench/gpu_experts.py --device cpu --layers 2 --hidden 64 --experts 8 --top-k 2 --moe-width 32 \\
        --vocab 512 --heads 4 --kv-heads 2 --head-dim 16 --tokens 256     # a smoke run (tests/test_gpu_bench.py)

Random weights route like a trained model in shape, not in content: the figures are of the machinery
(tokens/s of replay and scoring, seconds and memory of each build), not of any model's quality.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def model(args):
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    config = Qwen3MoeConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        moe_intermediate_size=args.moe_width,
        intermediate_size=args.moe_width * args.top_k,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim,
        num_experts=args.experts,
        num_experts_per_tok=args.top_k,
        norm_topk_prob=True,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(args.device):
        moe = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    return moe.eval()


def timed(device: str, work):
    """(what `work` returned, seconds, peak memory in GB over it)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = work()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 1e9
    else:
        peak = float("nan")
    return out, time.perf_counter() - start, peak


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--moe-width", type=int, default=768)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--tokens", type=int, default=32768, help="tokens replayed and scored")
    parser.add_argument("--row-tokens", type=int, default=512, help="tokens per row")
    parser.add_argument("--batch", type=int, default=16, help="rows per replay forward pass")
    args = parser.parse_args(argv)

    from dataengine.experts.metrics import signature
    from dataengine.route.replay import route_batch
    from dataengine.train.expert_prune import keep_experts
    from dataengine.train.expert_scores import kept_experts, score_experts
    from dataengine.train.merge import merge_experts, merge_weights

    moe, built, peak = timed(args.device, lambda: model(args))
    params = sum(p.numel() for p in moe.parameters())
    generator = torch.Generator().manual_seed(1)
    rows = [
        torch.randint(0, args.vocab, (args.row_tokens,), generator=generator).tolist()
        for _ in range(max(1, args.tokens // args.row_tokens))
    ]
    tokens = len(rows) * args.row_tokens
    results = {"model": (built, peak, f"{params:,} parameters, {args.layers} layers x {args.experts} experts")}

    def replay():
        routed = []
        for i in range(0, len(rows), args.batch):
            routed += route_batch(moe, [(ids, len(ids) // 2) for ids in rows[i : i + args.batch]], pad_id=0)
        return [signature(r.choices, args.experts) for r in routed]

    signatures, seconds, peak = timed(args.device, replay)
    results["route replay"] = (seconds, peak, f"{tokens / seconds:,.0f} tokens/s (answer half recorded)")
    scores, seconds, peak = timed(args.device, lambda: score_experts(moe, rows))
    results["expert scoring (frequency + REAP)"] = (seconds, peak, f"{tokens / seconds:,.0f} tokens/s")
    half = args.experts // 2
    kept = kept_experts(scores["reap"], half)
    student, seconds, peak = timed(args.device, lambda: keep_experts(moe, kept))
    kept_params = sum(p.numel() for p in student.parameters())
    results[f"MoE student, {half} of {args.experts} experts"] = (seconds, peak, f"{kept_params:,} parameters")
    del student
    weights = merge_weights("routing", args.layers, args.experts, scores["frequency"])
    dense, seconds, peak = timed(args.device, lambda: merge_experts(moe, weights))
    dense_params = sum(p.numel() for p in dense.parameters())
    results["dense merge (routing frequency)"] = (seconds, peak, f"{dense_params:,} parameters")
    assert len(signatures) == len(rows)

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"{device}, {args.dtype}, {tokens:,} tokens in rows of {args.row_tokens}")
    print("| step | seconds | peak GPU memory (GB) | figure |")
    print("|---|---:|---:|---|")
    for step, (seconds, peak, figure) in results.items():
        print(f"| {step} | {seconds:.1f} | {peak:.1f} | {figure} |")
    return results


if __name__ == "__main__":
    main()
