"""Where a student starts, side by side in one run (issues 14 and 31): each init's held-out KL(teacher ||
student) and perplexity on the teacher's answers, with 95% bootstrap intervals over the held-out rows,
before and after the same SFT, with the teacher's own perplexity as the floor, and each init's parameters
(total and active per token).

    .venv/bin/python bench/students.py [--set dense] [--run runs/quickstart] [--steps 16] [--batch 4] [--keep 10]
                                       [--width 768] [--held-out 16] [--only "merged by routing, 20"]
    .venv/bin/python bench/students.py --set experts    # recipes/expert-students.yaml, runs/expert-students

`--set dense` (the quickstart's teacher, identical experts): depth- and width-pruned dense students.
`--set experts` (the teacher with split experts): the experts merged into a dense MLP by each score
(routing frequency, REAP, uniform), the teacher kept an MoE with 3 and 2 of its 4 experts per layer (by
REAP; 2 also by frequency), and the depth- and width-pruned dense students beside them.

Rows: every teacher answer of a finished quickstart run (`make demo`), kept and rejected by curation
alike (each is the teacher's answer to its prompt; the quickstart keeps too few to hold out many), split
by id into --held-out rows and the rest to train on. KL is over the full vocabulary, the teacher's logits
computed in transformers. Training: the quickstart's SFT settings for --steps steps, the same for every
init, with --batch rows a step. The routing-weighted merge reads the run's routing map.
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


RECIPES = {"dense": "quickstart", "experts": "expert-students"}


def inits(which: str, keep: int, width: int) -> dict[str, dict]:
    influence = {"method": "block_influence", "keep": keep}
    if which == "experts":
        return {
            "experts merged by routing frequency": {"from_teacher": {"merge_experts": "routing"}},
            "experts merged by REAP": {"from_teacher": {"merge_experts": "routing", "expert_score": "reap"}},
            "experts merged uniformly": {"from_teacher": {"merge_experts": "uniform"}},
            "MoE, 3 of 4 experts by REAP": {"from_teacher": {"keep_experts": 3, "expert_score": "reap"}},
            "MoE, 2 of 4 experts by REAP": {"from_teacher": {"keep_experts": 2, "expert_score": "reap"}},
            "MoE, 2 of 4 experts by routing frequency": {"from_teacher": {"keep_experts": 2}},
            f"dense parent, {keep} layers by Block Influence": {"prune": influence},
            f"experts merged by routing frequency, MLPs cut to {width} channels": {
                "from_teacher": {"merge_experts": "routing"},
                "prune": {"intermediate_size": width},
            },
        }
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
    """Mean per-answer-token KL(teacher || student) over the full vocabulary, and the perplexity, each with
    its 95% bootstrap interval over the rows."""
    import numpy as np

    from dataengine.rows import prompt_and_full_ids
    from dataengine.train import intervals

    per_row = []  # [kl sum, nll sum, tokens]
    for row in rows:
        ids, start = prompt_and_full_ids(tokenizer, row["messages"])
        input_ids = torch.tensor([ids])
        student = torch.log_softmax(model(input_ids=input_ids).logits[0, start - 1 : -1].float(), dim=-1)
        theirs = torch.log_softmax(teacher(input_ids=input_ids).logits[0, start - 1 : -1].float(), dim=-1)
        kl = (theirs.exp() * (theirs - student)).sum().item()
        per_row.append([kl, -student.gather(1, input_ids[0, start:, None]).sum().item(), len(ids) - start])
    table = np.array(per_row)
    kl, nll = table[:, [0, 2]], table[:, [1, 2]]
    return {
        "kl": intervals.ratio(kl),
        "kl_interval": intervals.bootstrap(kl, intervals.ratio),
        "perplexity": intervals.perplexity(nll),
        "perplexity_interval": intervals.bootstrap(nll, intervals.perplexity),
    }


def _with_interval(value: float, interval: list[float] | None, form: str) -> str:
    if interval is None:
        return format(value, form)
    return f"{format(value, form)} [{format(interval[0], form)}, {format(interval[1], form)}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=sorted(RECIPES), default="dense", help="which inits, on which teacher")
    parser.add_argument("--run", type=Path, default=None, help="default: runs/<the set's recipe>")
    parser.add_argument("--steps", type=int, default=16)
    # the quickstart trains on 2 rows a step to keep its minutes; the figures in BENCHMARKS.md used 4
    parser.add_argument("--batch", type=int, default=4, help="rows per SFT step")
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

    recipe = load_recipe(ROOT / "recipes" / f"{RECIPES[args.set]}.yaml")
    run = RunFolder(args.run or ROOT / "runs" / RECIPES[args.set])
    rows = [
        r for role in (("curate", "kept"), ("curate", "rejected")) if (f := run.folder(*role)) for r in read_rows(f)
    ]
    if len(rows) <= args.held_out:
        sys.exit(f"{len(rows)} rows in {run.path}: run recipes/{RECIPES[args.set]}.yaml first")
    rows.sort(key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
    held_out, train_rows = rows[: args.held_out], Dataset.from_list(rows[args.held_out :])
    routing = run.folder("route", "map")
    load = json.loads((routing / ROUTING_MAP_FILE).read_text())["overall"]["load"] if routing else None
    teacher_path = resolve_model(recipe.teacher, print)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    floor = fit(teacher, teacher, tokenizer, held_out)
    sft = recipe.train.sft.model_copy(
        update={"max_steps": args.steps, "save_steps": args.steps, "per_device_train_batch_size": args.batch}
    )
    # the checkpoints are gigabytes: gone when the figures are printed
    with tempfile.TemporaryDirectory(prefix="bench-students-") as tmp:
        work = Path(tmp)
        results = {}
        for name, student in inits(args.set, args.keep, args.width).items():
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
                "active": info.get("active_parameters", info["parameters"]),
                "layers": info.get("layers"),
            }
            results[name]["seconds"] = time.perf_counter() - start
            print(f"{name}: {json.dumps(results[name])}", flush=True)

        print(
            f"\n{len(train_rows)} training rows, {len(held_out)} held out; SFT {args.steps} steps; "
            f"teacher perplexity {_with_interval(floor['perplexity'], floor['perplexity_interval'], '.2f')}"
        )
        print(
            "| init | parameters (active) | KL before | KL after | perplexity before | perplexity after | "
            "after / teacher |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, r in results.items():
            b, a = r["before"], r["after"]
            print(
                f"| {name} | {r['params'] / 1e6:.0f}M ({r['active'] / 1e6:.0f}M) | "
                f"{_with_interval(b['kl'], b['kl_interval'], '.3f')} | "
                f"{_with_interval(a['kl'], a['kl_interval'], '.3f')} | "
                f"{_with_interval(b['perplexity'], b['perplexity_interval'], ',.1f')} | "
                f"{_with_interval(a['perplexity'], a['perplexity_interval'], ',.1f')} | "
                f"{a['perplexity'] / floor['perplexity']:.2f}x |"
            )


if __name__ == "__main__":
    main()
