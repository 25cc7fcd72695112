"""evaluate: the untrained and the trained student on the held-out rows, side by side.

Writes eval/metrics.json (and eval/samples.jsonl with the student's answers) and prints a table.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from dataengine.manifest import Manifest, fingerprint_files
from dataengine.recipe import Recipe
from dataengine.runner import RunContext, StageResult
from dataengine.train.data import read_rows, split_rows
from dataengine.train.evaluation import answer_fit, answer_quality
from dataengine.train.stage import source_stage
from dataengine.train.student import init_student

METRICS = (
    ("kl_teacher_student", "KL(teacher || student) per token", "lower"),
    ("perplexity", "perplexity on teacher answers", "lower"),
    ("code_pass_rate", "code pass rate (sandbox)", "higher"),
    ("language_fidelity", "answers in the language asked", "higher"),
)


class EvaluateStage:
    name = "evaluate"
    output = "eval"

    def __init__(self, recipe: Recipe, base_dir: Path) -> None:
        self.recipe = recipe
        self.cfg = recipe.train.evaluate
        self.base_dir = base_dir
        self.inputs = (source_stage(recipe)[0], "train")

    def config_hash(self) -> str:
        return self.recipe.fingerprint("train", "curate")

    def state(self, run_dir: Path) -> str:
        return ""

    def run(self, ctx: RunContext, output_dir: Path, work_dir: Path) -> StageResult:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        rows = read_rows(ctx.run_dir / source_stage(self.recipe)[1])
        _, held_out = split_rows(rows, self.cfg.eval_fraction)
        initial = init_student(self.recipe, self.base_dir, work_dir / "init", ctx.log)
        trained = ctx.run_dir / f"students/{self.recipe.train.student.name}"
        code = self.recipe.generate.code
        prefix = (code.answer_prefix or "") if code else ""
        limits = _limits(self.recipe)
        results, samples = {}, []
        with Progress(console=ctx.console, transient=True) as progress:
            for label, path in (("before", initial), ("after", trained)):
                bar = progress.add_task(f"evaluating the student {label} training", total=len(held_out))
                tokenizer = AutoTokenizer.from_pretrained(str(path))
                model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
                quality = answer_quality(model, tokenizer, held_out, prefix, self.cfg.max_new_tokens, limits,
                                         lambda bar=bar: progress.advance(bar))  # fmt: skip
                samples += [{"student": label, **s} for s in quality.pop("samples")]
                results[label] = {**answer_fit(model, tokenizer, held_out), **quality}
        metrics = {
            "held_out_rows": len(held_out),
            "held_out_ids": sorted(r["id"] for r in held_out),
            "kl": "forward KL(teacher || student) per answer token over the teacher's top-k tokens plus one tail "
            "bucket for the rest of the vocabulary (needs the score stage)",
            **results,
        }
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        with open(output_dir / "samples.jsonl", "w") as fh:
            fh.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
        return StageResult(
            rows_in=len(held_out),
            rows_out=len(held_out),
            output_fingerprint=fingerprint_files([output_dir / "metrics.json"]),
            stats={label: {key: results[label][key] for key, _, _ in METRICS} for label in results},
        )

    def summary(self, manifest: Manifest, output_dir: Path, console: Console) -> None:
        table = Table(title=f"student on {manifest.rows_out} held-out rows", title_justify="left")
        for column in ("metric", "before training", "after training", "better is"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for key, label, direction in METRICS:
            before, after = manifest.stats["before"][key], manifest.stats["after"][key]
            table.add_row(label, _fmt(before), _fmt(after), direction)
        console.print(table)
        console.print(f"metrics: {output_dir / 'metrics.json'}")


def _limits(recipe: Recipe):
    from dataengine.curate.sandbox import SandboxLimits

    code = recipe.curate.code
    return SandboxLimits(timeout_s=recipe.train.evaluate.code_timeout_s, cpu_s=code.cpu_s, memory_mb=code.memory_mb,
                         max_output_bytes=code.max_output_bytes, max_processes=code.max_processes,
                         require_isolation=code.require_isolation)  # fmt: skip


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
