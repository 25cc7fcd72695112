"""Does balancing the data by expert coverage matter? (issues 14 and 31) The builtin MoE (recipes/
moe-finetune.yaml: split experts, which differ) fine-tuned on three kinds of subset of the curated rows, the
same size and steps, side by side in one run: `curate.balance`'s expert-balanced greedy; random draws; and a
routing-blind diversity subset (farthest-point sampling over the rows' hashed character 4-grams, from a
random first row). Each kind `--draws` times, each draw its own subset (the balanced greedy has one) and
its own training seed. For each: the load CV the teacher's routing predicts, the per-expert load CV
observed during the fine-tune (the ExpertLoadCallback a `moe-finetune` run logs), and the held-out
perplexity on the teacher's answers with its 95% interval; then per kind the mean over draws.

    .venv/bin/python bench/closed_loop.py [--run runs/closed-loop] [--scale 2] [--size N] [--draws 3]
                                          [--steps 16] [--held-out-per-group 2]

Data: recipes/moe-finetune.yaml with its chat quotas times --scale, run as a curate pipeline (generate,
curate, route) into --run the first time; later runs reuse it. Held out, stratified: the
--held-out-per-group rows whose ids hash lowest in every kind and language; they are never trained on, the
others are the pool the subsets (default half of it) are drawn from. Training: the recipe's SFT settings
(router aux loss on) for --steps.
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


def text_vectors(rows: list[dict], buckets: int = 1 << 14) -> np.ndarray:
    """[rows, buckets] unit vectors of each row's hashed character 4-gram counts (its whole conversation):
    a routing-blind view of what a row says (hand-written: a dozen lines where scikit-learn's
    HashingVectorizer would be a dependency for one bench)."""
    out = np.zeros((len(rows), buckets))
    for i, row in enumerate(rows):
        text = " ".join(m["content"] for m in row["messages"]).lower()
        for j in range(len(text) - 3):
            out[i, int.from_bytes(hashlib.blake2b(text[j : j + 4].encode(), digest_size=4).digest()) % buckets] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def diverse_subset(vectors: np.ndarray, size: int, rng: np.random.Generator) -> list[int]:
    """Farthest-point (k-center greedy) sampling by cosine distance, from a random first row."""
    chosen = [int(rng.integers(len(vectors)))]
    nearest = 1 - vectors @ vectors[chosen[0]]
    while len(chosen) < size:
        nearest[chosen] = -1
        pick = int(nearest.argmax())
        chosen.append(pick)
        nearest = np.minimum(nearest, 1 - vectors @ vectors[pick])
    return sorted(chosen)


def stratified(rows: list[dict], per_group: int) -> tuple[list[dict], list[dict]]:
    """(held out: the `per_group` rows of lowest id hash in every kind and language, the rest)."""
    ranked = sorted(rows, key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
    taken: Counter = Counter()
    held_out, rest = [], []
    for row in ranked:
        group = (row["kind"], row["language"])
        (held_out if taken[group] < per_group else rest).append(row)
        taken[group] += 1
    return held_out, rest


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
    parser.add_argument("--held-out-per-group", type=int, default=2, help="held-out rows per kind and language")
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
    rows = [r for r in read_rows(run.folder("curate", "kept")) if r["id"] in index]
    held_out, pool = stratified(rows, args.held_out_per_group)
    size = args.size or len(pool) // 2
    if size < 2 or size > len(pool):
        sys.exit(f"{len(rows)} routed rows in {args.run}: too few for {len(held_out)} held out and subsets of {size}")
    pool_signatures = signatures[[index[r["id"]] for r in pool]]
    vectors = text_vectors(pool)
    rng = np.random.default_rng(0)
    balanced = even_subset(pool_signatures, size)
    subsets = {}  # name -> (kind, rows chosen, training seed)
    for draw in range(args.draws):
        subsets[f"balanced, seed {draw}"] = ("balanced", balanced, draw)
        subsets[f"random {draw + 1}"] = ("random", sorted(rng.choice(len(pool), size, replace=False).tolist()), draw)
        subsets[f"diverse {draw + 1}"] = ("diverse", diverse_subset(vectors, size, rng), draw)

    recipe = load_recipe(RECIPE)
    sft = recipe.train.sft.model_copy(update={"max_steps": args.steps, "save_steps": args.steps})
    start = Path(resolve_model(recipe.teacher, print))
    tokenizer = AutoTokenizer.from_pretrained(start)
    untrained = answer_fit(AutoModelForCausalLM.from_pretrained(start), tokenizer, held_out)["perplexity"]
    # the checkpoints are gigabytes: gone when the figures are printed
    with tempfile.TemporaryDirectory(prefix="bench-closed-loop-") as tmp:
        work = Path(tmp)
        results = {}
        for number, (name, (kind, chosen, seed)) in enumerate(subsets.items()):
            picked = [pool[i] for i in chosen]
            subset = sft_rows(Dataset.from_list(picked))
            settings = sft.model_copy(update={"seed": seed})
            final = run_sft(start, subset, settings, work / f"subset-{number}", lambda _: None)
            record = json.loads((final / DONE).read_text())
            fit = answer_fit(AutoModelForCausalLM.from_pretrained(final), tokenizer, held_out)
            results[name] = {
                "kind": kind,
                "predicted_cv": float(mean_cv(pool_signatures[chosen].sum(axis=0))),
                "observed_cv": observed_cv(record),
                "perplexity": fit["perplexity"],
                "interval": fit["intervals"]["perplexity"],
                "languages": dict(Counter(r["language"] for r in picked)),
                "seconds": record["seconds"],
            }
            print(f"{name}: {json.dumps(results[name])}", flush=True)

        print(
            f"\n{len(rows)} routed rows: {len(held_out)} held out ({dict(Counter(r['language'] for r in held_out))}), "
            f"subsets of {size} from a pool of {len(pool)}; "
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
        print(
            "\n| subset kind | draws | observed CV, mean over draws (min-max) | held-out perplexity, mean (min-max) |"
        )
        print("|---|---:|---:|---:|")
        for kind in ("balanced", "random", "diverse"):
            mine = [r for r in results.values() if r["kind"] == kind]
            cvs, ppls = [np.mean(r["observed_cv"]) for r in mine], [r["perplexity"] for r in mine]
            print(
                f"| {kind} | {len(mine)} | {np.mean(cvs):.3f} ({min(cvs):.3f}-{max(cvs):.3f}) | "
                f"{np.mean(ppls):.2f} ({min(ppls):.2f}-{max(ppls):.2f}) |"
            )


if __name__ == "__main__":
    main()
