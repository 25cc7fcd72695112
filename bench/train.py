"""Training, side by side in one run on the same rows and the same student:

(a) our SFT phase (`dataengine.train.phases.run_sft`, what the train stage calls) against TRL's
    `SFTTrainer` called directly with the same settings, as a hand-written script would: the
    overhead ratio, model load to saved model, median over --repeats runs in alternating order;
(b) `offline_topk` against `gkd`, both from the same untrained student for the same number of
    steps: seconds per optimizer step, and the held-out KL(teacher || student) reached.

    .venv/bin/python bench/train.py [--run runs/quickstart] [--steps 16] [--repeats 2] [--part sft|distill|all]

It reads the scored rows of a finished distill run of recipes/quickstart.yaml (`make demo` makes
runs/quickstart) and uses that recipe's student, split and training settings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def plain_trl_sft(start: Path, rows: list[dict], settings, out: Path) -> None:
    """TRL's SFTTrainer as a script would call it: same data form, same knobs, the model saved at the end."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from dataengine.train.phases import use_bf16

    tokenizer = AutoTokenizer.from_pretrained(str(start))
    # the same weights dtype as the phase (from_pretrained's default keeps the checkpoint's bf16)
    model = AutoModelForCausalLM.from_pretrained(
        str(start), dtype=torch.bfloat16 if use_bf16(settings) else torch.float32
    )
    config = SFTConfig(
        output_dir=str(out),
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler_type,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        seed=settings.seed,
        max_length=settings.max_length,
        completion_only_loss=True,
        logging_steps=settings.logging_steps,
        save_steps=settings.save_steps,
        save_total_limit=2,
        report_to=[],
        # TRL's own defaults differ from the recipe's here (gradient checkpointing on, bf16): matched, so
        # both contenders do the same work
        gradient_checkpointing=settings.gradient_checkpointing,
        bf16=use_bf16(settings),
    )
    data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(out / "final"))


def quiet(_message: str) -> None:
    """The phases' progress lines would interleave with the tables."""


def held_out_kl(folder: Path, rows: list[dict]) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dataengine.train.evaluation import answer_fit

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)  # as the evaluate stage
    return answer_fit(model, AutoTokenizer.from_pretrained(str(folder)), rows)["kl_teacher_student"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "quickstart", help="finished distill run")
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per contender")
    parser.add_argument("--repeats", type=int, default=2, help="SFT runs per contender (median reported)")
    parser.add_argument("--part", choices=["sft", "distill", "all"], default="all", help="which comparison to run")
    args = parser.parse_args()

    from dataengine.recipe import load_recipe
    from dataengine.run_folder import ROUTING_MAP_FILE, RunFolder
    from dataengine.train.data import load_rows, split_rows
    from dataengine.train.student import init_student

    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    run = RunFolder(args.run)
    scored = run.folder("score")
    # the quickstart's student merges the teacher's experts weighted by the run's routing map
    routing = run.folder("route", "map")
    load = json.loads((routing / ROUTING_MAP_FILE).read_text())["overall"]["load"] if routing else None
    # the checkpoints are gigabytes: gone when the figures are printed
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        rows = load_rows(scored, work / "datasets") if scored is not None else []
        if not len(rows):
            sys.exit(f"no scored rows in {args.run}: run `make demo` first")
        evaluate = recipe.train.evaluate
        train_rows, held_out = split_rows(rows, evaluate.eval_fraction, evaluate.min_held_out)
        start = init_student(recipe, ROOT / "recipes", work / "init", train_rows, load, log=print)

        if args.part in ("sft", "all"):
            compare_sft(args, start, train_rows, recipe, work)
        if args.part in ("distill", "all"):
            compare_distill(args, start, train_rows, held_out, recipe, work)


def compare_sft(args, start: Path, train_rows, recipe, work: Path) -> None:
    """(a) SFT overhead. Both checkpoint every save_steps and save the final model, as the stage does."""
    from dataengine.train.data import sft_rows
    from dataengine.train.phases import run_sft

    sft = recipe.train.sft.model_copy(update={"max_steps": args.steps, "save_steps": args.steps})
    timings: dict[str, list[float]] = {"dataengine SFT phase": [], "TRL SFTTrainer direct": []}
    for i in range(args.repeats):
        order = ["dataengine SFT phase", "TRL SFTTrainer direct"][:: 1 if i % 2 == 0 else -1]
        for name in order:
            out = work / f"sft-{i}-{name.split()[0]}"
            began = time.perf_counter()
            if name.startswith("dataengine"):
                run_sft(start, sft_rows(train_rows), sft, out, quiet)
            else:
                plain_trl_sft(start, train_rows.to_list(), sft, out)
            timings[name].append(time.perf_counter() - began)
            print(f"{name} run {i}: {timings[name][-1]:.1f} s", flush=True)
    base = statistics.median(timings["TRL SFTTrainer direct"])
    print(
        f"\n(a) SFT, {len(train_rows)} rows, {args.steps} steps, batch {sft.per_device_train_batch_size}, "
        f"median of {args.repeats}"
    )
    print("| contender | runs (s) | median (s) | vs TRL direct |\n|---|---|---:|---:|")
    for name, runs in timings.items():
        median = statistics.median(runs)
        print(f"| {name} | {', '.join(f'{t:.1f}' for t in runs)} | {median:.1f} | {median / base:.3f}x |")


def compare_distill(args, start: Path, train_rows, held_out: list[dict], recipe, work: Path) -> None:
    """(b) offline_topk vs gkd from the same untrained student, same steps and batch."""
    from dataengine.teacher.server import resolve_model
    from dataengine.train.data import phase_rows
    from dataengine.train.phases import run_distill

    distill = recipe.train.distill.model_copy(update={"max_steps": args.steps, "save_steps": args.steps})
    teacher = resolve_model(recipe.teacher, print)
    before = held_out_kl(start, held_out)
    results = {}
    for method in ("offline_topk", "gkd"):
        settings = distill.model_copy(update={"method": method})
        began = time.perf_counter()
        final = run_distill(
            start,
            phase_rows("distill", train_rows, method),
            settings,
            work / method,
            lambda: teacher,
            lambda: "",
            recipe.score.top_k,
            quiet,
        )
        seconds = time.perf_counter() - began
        results[method] = (seconds, held_out_kl(final, held_out))
        print(f"{method}: {seconds:.1f} s", flush=True)
    print(
        f"\n(b) distillation, {args.steps} steps, batch {distill.per_device_train_batch_size}, "
        f"{len(held_out)} held-out rows; untrained student KL {before:.3f}"
    )
    print("| method | seconds | s/step | held-out KL after | KL vs untrained |\n|---|---:|---:|---:|---:|")
    for method, (seconds, kl) in results.items():
        print(f"| {method} | {seconds:.1f} | {seconds / args.steps:.2f} | {kl:.3f} | {kl / before:.3f}x |")


if __name__ == "__main__":
    main()
