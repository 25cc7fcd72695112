"""Where a student starts, side by side in one run (issue 14): each init's held-out KL(teacher || student)
and perplexity on the teacher's answers, before and after the same SFT, with the teacher's own perplexity
as the floor.

    .venv/bin/python bench/students.py [--run runs/quickstart] [--steps 16] [--keep 10] [--width 768]
                                       [--held-out 16] [--only "merged by routing, 20"]

Rows: every teacher answer of a finished quickstart run (`make demo`), kept and rejected by curation
alike (each is the teacher's answer to its prompt; the quickstart keeps too few to hold out many), split
by id into --held-out rows and the rest to train on. KL is over the full vocabulary, the teacher's logits
computed in transformers. Training: the quickstart's SFT settings for --steps steps, the same for every
init. The routing-weighted merge reads the run's routing map.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def inits(keep: int, width: int) -> dict[str, dict]:
    influence = {"method": "block_influence", "keep": keep}
    return {
        "dense parent, every 3rd layer (the quickstart before)": {"prune": {"keep_every": 3}},
        f"dense parent, {keep} layers by Block Influence": {"prune": influence},
        f"experts merged by routing, {keep} layers by Block Influence": {
            "from_teacher": {"merge_experts": "routing"},
            "prune": influence,
        },
        "experts merged by routing, all layers": {"from_teacher": {"merge_experts": "routing"}},
        f"experts merged by routing, all layers, MLPs cut to {width} channels by activation": {
            "from_teacher": {"merge_experts": "routing"},
            "prune": {"intermediate_size": width},
        },
    }


@torch.no_grad()
def fit(model, teacher, tokenizer, rows: list[dict]) -> dict:
    """Mean per-answer-token KL(teacher || student) over the full vocabulary, and the perplexity."""
    from dataengine.rows import prompt_and_full_ids

    kl, nll, tokens = 0.0, 0.0, 0
    for row in rows:
        ids, start = prompt_and_full_ids(tokenizer, row["messages"])
        input_ids = torch.tensor([ids])
        student = torch.log_softmax(model(input_ids=input_ids).logits[0, start - 1 : -1].float(), dim=-1)
        theirs = torch.log_softmax(teacher(input_ids=input_ids).logits[0, start - 1 : -1].float(), dim=-1)
        kl += (theirs.exp() * (theirs - student)).sum().item()
        nll -= student.gather(1, input_ids[0, start:, None]).sum().item()
        tokens += len(ids) - start
    return {"kl": kl / tokens, "perplexity": float(torch.tensor(nll / tokens).exp())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "quickstart")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--keep", type=int, default=10, help="layers a pruned student keeps (of 30)")
    parser.add_argument("--width", type=int, default=768, help="MLP channels a width-pruned student keeps (of 1536)")
    parser.add_argument("--held-out", type=int, default=16)
    parser.add_argument("--only", default="", help="run only the inits whose name contains this")
    args = parser.parse_args()

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dataengine.recipe import StudentConfig, load_recipe
    from dataengine.rows import read_rows
    from dataengine.run_folder import ROUTING_MAP_FILE, RunFolder
    from dataengine.teacher.server import resolve_model
    from dataengine.train.data import sft_rows
    from dataengine.train.phases import run_sft
    from dataengine.train.student import init_student

    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    run = RunFolder(args.run)
    rows = [
        r for role in (("curate", "kept"), ("curate", "rejected")) if (f := run.folder(*role)) for r in read_rows(f)
    ]
    if len(rows) <= args.held_out:
        sys.exit(f"{len(rows)} rows in {args.run}: run `make demo` first")
    rows.sort(key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
    held_out, train_rows = rows[: args.held_out], Dataset.from_list(rows[args.held_out :])
    routing = run.folder("route", "map")
    load = json.loads((routing / ROUTING_MAP_FILE).read_text())["overall"]["load"] if routing else None
    teacher_path = resolve_model(recipe.teacher, print)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    floor = fit(teacher, teacher, tokenizer, held_out)
    sft = recipe.train.sft.model_copy(update={"max_steps": args.steps, "save_steps": args.steps})
    # the checkpoints are gigabytes: gone when the figures are printed
    with tempfile.TemporaryDirectory(prefix="bench-students-") as tmp:
        work = Path(tmp)
        results = {}
        for name, student in inits(args.keep, args.width).items():
            if args.only not in name:
                continue
            start = time.perf_counter()
            config = StudentConfig(name="s", **student)
            variant = recipe.model_copy(update={"train": recipe.train.model_copy(update={"student": config})})
            folder = init_student(variant, ROOT / "recipes", work / name / "init", train_rows, load, lambda _: None)
            info = json.loads((folder / "student_init.json").read_text())
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            before = fit(model, teacher, tokenizer, held_out)
            trained = run_sft(folder, sft_rows(train_rows), sft, work / name / "sft", lambda _: None)
            after = fit(
                AutoModelForCausalLM.from_pretrained(trained, dtype=torch.float32).eval(), teacher, tokenizer, held_out
            )
            results[name] = {
                "before": before,
                "after": after,
                "params": info["parameters"],
                "layers": info.get("layers"),
            }
            results[name]["seconds"] = time.perf_counter() - start
            print(f"{name}: {json.dumps(results[name])}", flush=True)

        print(
            f"\n{len(train_rows)} training rows, {len(held_out)} held out; SFT {args.steps} steps; "
            f"teacher perplexity {floor['perplexity']:.2f}"
        )
        print("| init | parameters | KL before | KL after | perplexity before | perplexity after | after / teacher |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, r in results.items():
            b, a = r["before"], r["after"]
            print(
                f"| {name} | {r['params'] / 1e6:.0f}M | {b['kl']:.3f} | {a['kl']:.3f} | {b['perplexity']:,.1f} | "
                f"{a['perplexity']:,.1f} | {a['perplexity'] / floor['perplexity']:.2f}x |"
            )


if __name__ == "__main__":
    main()
