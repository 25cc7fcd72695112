"""Does balancing the data by expert coverage matter? (issue 14) The builtin MoE fine-tuned on an
expert-balanced subset of the curated rows (`curate.balance`'s greedy) and on random subsets of the same
size, same steps, side by side in one run: the load CV the teacher's routing predicts for each subset, the
per-expert load CV observed during the fine-tune (the ExpertLoadCallback a `moe-finetune` run logs), and
the held-out perplexity of each fine-tuned MoE on the teacher's answers.

    .venv/bin/python bench/closed_loop.py [--run runs/closed-loop] [--scale 2] [--size N] [--draws 3]
                                          [--steps 16] [--held-out 8]

Data: recipes/moe-finetune.yaml with its chat quotas times --scale, run as a curate pipeline (generate,
curate, route) into --run the first time (about 7 minutes on 2 cores at --scale 2); later runs reuse it.
The --held-out rows whose ids hash lowest are never trained on; the others are the pool the subsets
(default half of it) are drawn from. Training: the recipe's SFT settings (router aux loss on) for --steps.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RECIPE = ROOT / "recipes" / "moe-finetune.yaml"


def make_data(run: Path, scale: int) -> None:
    """Generate, curate and route the recipe's prompts (chat quotas times `scale`) into `run`."""
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe.update(name="closed-loop", pipeline="curate", output_dir=str(run.resolve()))
    recipe.pop("train")
    for language in recipe["generate"]["chat"]["languages"]:
        language["quota"] *= scale
    path = Path(tempfile.mkdtemp(prefix="closed-loop-")) / "closed-loop.yaml"
    path.write_text(yaml.safe_dump(recipe))
    subprocess.run([str(ROOT / ".venv" / "bin" / "dataengine"), "run", str(path)], check=True)


def observed_cv(record: dict) -> list[float]:
    """Mean over MoE layers of the load CV at each logging step of the fine-tune."""
    return [float(np.mean(step["cv"])) for step in record["expert_load_steps"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "closed-loop")
    parser.add_argument("--scale", type=int, default=2, help="chat quotas of moe-finetune.yaml times this")
    parser.add_argument("--size", type=int, default=0, help="rows per subset (default: half the pool)")
    parser.add_argument("--draws", type=int, default=3, help="random subsets")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--held-out", type=int, default=8)
    args = parser.parse_args()

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dataengine.experts.select import even_subset, mean_cv
    from dataengine.manifest import Manifest
    from dataengine.recipe import load_recipe
    from dataengine.rows import read_matrices, read_rows
    from dataengine.run_folder import RunFolder
    from dataengine.teacher.server import resolve_model
    from dataengine.train.data import sft_rows
    from dataengine.train.evaluation import answer_fit
    from dataengine.train.phases import DONE, run_sft

    if Manifest.read(args.run / "routing") is None:  # not made, or stopped before the route stage finished
        make_data(args.run, args.scale)
    run = RunFolder(args.run)
    ids, signatures = read_matrices(run.folder("route", "map"), "routing_signature")
    index = {row_id: i for i, row_id in enumerate(ids)}
    rows = sorted(
        (r for r in read_rows(run.folder("curate", "kept")) if r["id"] in index),
        key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest(),
    )
    held_out, pool = rows[: args.held_out], rows[args.held_out :]
    size = args.size or len(pool) // 2
    if size < 2 or size > len(pool):
        sys.exit(f"{len(rows)} routed rows in {args.run}: too few for {args.held_out} held out and subsets of {size}")
    pool_signatures = signatures[[index[r["id"]] for r in pool]]
    rng = np.random.default_rng(0)
    subsets = {"balanced (curate.balance's greedy)": even_subset(pool_signatures, size)}
    for draw in range(args.draws):
        subsets[f"random {draw + 1}"] = sorted(rng.choice(len(pool), size, replace=False).tolist())

    recipe = load_recipe(RECIPE)
    sft = recipe.train.sft.model_copy(update={"max_steps": args.steps, "save_steps": args.steps})
    start = Path(resolve_model(recipe.teacher, print))
    tokenizer = AutoTokenizer.from_pretrained(start)
    untrained = answer_fit(AutoModelForCausalLM.from_pretrained(start), tokenizer, held_out)["perplexity"]
    # the checkpoints are gigabytes: gone when the figures are printed
    with tempfile.TemporaryDirectory(prefix="bench-closed-loop-") as tmp:
        work = Path(tmp)
        results = {}
        for number, (name, chosen) in enumerate(subsets.items()):
            subset = sft_rows(Dataset.from_list([pool[i] for i in chosen]))
            final = run_sft(start, subset, sft, work / f"subset-{number}", lambda _: None)
            record = json.loads((final / DONE).read_text())
            fit = answer_fit(AutoModelForCausalLM.from_pretrained(final), tokenizer, held_out)
            results[name] = {
                "predicted_cv": float(mean_cv(pool_signatures[chosen].sum(axis=0))),
                "observed_cv": observed_cv(record),
                "perplexity": fit["perplexity"],
                "interval": fit["intervals"]["perplexity"],
                "languages": dict(Counter(r["language"] for r in subset)),
                "seconds": record["seconds"],
            }
            print(f"{name}: {json.dumps(results[name])}", flush=True)

        print(
            f"\n{len(rows)} routed rows: {len(held_out)} held out, subsets of {size} from a pool of {len(pool)}; "
            f"SFT {args.steps} steps; untrained held-out perplexity {untrained:.2f}"
        )
        print(
            "| subset | languages | predicted CV (teacher routing) | observed CV, first → last log | "
            "observed CV, mean | held-out perplexity [95%] |"
        )
        print("|---|---|---:|---:|---:|---:|")
        for name, r in results.items():
            cv, (low, high) = r["observed_cv"], r["interval"]
            mix = ", ".join(f"{k} {v}" for k, v in sorted(r["languages"].items()))
            print(
                f"| {name} | {mix} | {r['predicted_cv']:.3f} | {cv[0]:.3f} → {cv[-1]:.3f} | {np.mean(cv):.3f} | "
                f"{r['perplexity']:.2f} [{low:.2f}, {high:.2f}] |"
            )


if __name__ == "__main__":
    main()
