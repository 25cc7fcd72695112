"""The builtin teacher's constructions side by side in one run (issue 31): how close each MoE stays to its
dense parent, and how much its output depends on routing.

    .venv/bin/python bench/teacher_experts.py [--shared 0.75 0.5 0.875] [--experts 4] [--top-k 2]

Held-out text: the shipped conversations (data/conversations.jsonl, 18 rows in English, French and Spanish) and the math
probe (data/math_probe.jsonl, 24 problems), rendered with the chat template; none of it is in the
calibration text the split and the routers are fitted on. Each model's perplexity is over every token, with
a 95% bootstrap interval over rows. Routing dependence: the same text with each router forced to other
experts, the k it ranks last (`reversed`) or k drawn at random per token (`random`), as the perplexity then
and the mean per-token KL(as built || forced) over the full vocabulary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def held_out(tokenizer) -> list[torch.Tensor]:
    from dataengine import data as shipped

    folder = Path(shipped.__file__).parent
    rows = [json.loads(line) for line in (folder / "conversations.jsonl").read_text().splitlines() if line]
    problems = [json.loads(line) for line in (folder / "math_probe.jsonl").read_text().splitlines() if line]
    rows += [{"messages": [{"role": "user", "content": p["prompt"]}]} for p in problems]
    rendered = [tokenizer.apply_chat_template(r["messages"], return_tensors="pt", return_dict=True) for r in rows]
    return [r["input_ids"][0] for r in rendered]


class Forced:
    """Every router of `moe` sends each token to other experts than it would: `reversed` (its last k) or
    `random` (k drawn per token); the top-k weights are the router's probabilities of those, renormalised."""

    def __init__(self, moe, how: str, seed: int = 0) -> None:
        self.how, self.generator = how, torch.Generator().manual_seed(seed)
        self.handles = [layer.mlp.gate.register_forward_hook(self.force) for layer in moe.model.layers]

    def force(self, module, args, output):
        logits = output[0]
        probs = torch.softmax(logits.float(), dim=-1)
        if self.how == "reversed":
            index = torch.topk(-probs, module.top_k, dim=-1).indices
        else:
            noise = torch.rand(probs.shape, generator=self.generator)
            index = torch.topk(noise, module.top_k, dim=-1).indices
        weights = probs.gather(1, index)
        return logits, weights / weights.sum(dim=-1, keepdim=True), index

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def log_probs(model, rows: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.log_softmax(model(ids[None]).logits[0, :-1].float(), dim=-1) for ids in rows]


def perplexity(logp: list[torch.Tensor], rows: list[torch.Tensor]) -> tuple[float, list[float] | None]:
    from dataengine.train import intervals

    per_row = np.array(
        [[-lp.gather(1, ids[1:, None]).sum().item(), len(ids) - 1] for lp, ids in zip(logp, rows, strict=True)]
    )
    return intervals.perplexity(per_row), intervals.bootstrap(per_row, intervals.perplexity)


def kl(reference: list[torch.Tensor], other: list[torch.Tensor]) -> float:
    total = sum((p.exp() * (p - q)).sum().item() for p, q in zip(reference, other, strict=True))
    return total / sum(len(p) for p in reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=float, nargs="+", default=[0.75, 0.5, 0.875])
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    args = parser.parse_args()

    from dataengine.recipe import BuiltinTeacherOptions
    from dataengine.teacher.builtin import BUILTIN_MODELS, calibration_texts, fetch_gguf, load_dense, upcycle

    dense, tokenizer = load_dense(fetch_gguf(BUILTIN_MODELS["smollm2-moe"]))
    calibration = [tokenizer(text, return_tensors="pt").input_ids[0] for text in calibration_texts()]
    rows = held_out(tokenizer)
    parent = log_probs(dense, rows)
    ppl, interval = perplexity(parent, rows)
    mlp = sum(p.numel() for layer in dense.model.layers for p in layer.mlp.parameters())
    print(f"{len(rows)} held-out rows, {sum(len(r) for r in rows)} tokens; {len(calibration)} calibration texts")
    print(
        "| teacher | build s | MLP params total / active | perplexity [95%] | vs parent | KL to parent | "
        "reversed routing: perplexity, KL | random routing: perplexity, KL |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| dense parent | - | {mlp / 1e6:.1f}M / {mlp / 1e6:.1f}M | {ppl:.2f} [{interval[0]:.2f}, "
        f"{interval[1]:.2f}] | 1.00x | 0 | - | - |"
    )
    contenders = {"copies": BuiltinTeacherOptions(num_experts=args.experts, top_k=args.top_k)} | {
        f"split, shared {s}": BuiltinTeacherOptions(
            num_experts=args.experts, top_k=args.top_k, experts="split", shared_channels=s
        )
        for s in args.shared
    }
    for name, options in contenders.items():
        start = time.perf_counter()
        moe = upcycle(dense, options, calibration)
        built = time.perf_counter() - start
        as_built = log_probs(moe, rows)
        moe_ppl, moe_interval = perplexity(as_built, rows)
        forced = {}
        for how in ("reversed", "random"):
            hook = Forced(moe, how)
            try:
                other = log_probs(moe, rows)
            finally:
                hook.close()
            forced[how] = f"{perplexity(other, rows)[0]:.2f}, {kl(as_built, other):.3f}"
        experts = [layer.mlp.experts for layer in moe.model.layers]
        total = sum(p.numel() for e in experts for p in e.parameters())
        active = total * options.top_k // options.num_experts
        print(
            f"| {name} ({options.num_experts} experts, top-{options.top_k}) | {built:.0f} | {total / 1e6:.1f}M / "
            f"{active / 1e6:.1f}M | {moe_ppl:.2f} [{moe_interval[0]:.2f}, {moe_interval[1]:.2f}] | "
            f"{moe_ppl / ppl:.2f}x | {kl(parent, as_built):.3f} | {forced['reversed']} | {forced['random']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
