"""train: student init -> SFT -> distillation, on the training split of the curated (or scored) rows.

The held-out split (train.evaluate.eval_fraction) is never trained on. The final student is written
to students/<name>/ as a plain transformers folder (vLLM and AutoModelForCausalLM load it), with
training.json holding every phase's log history.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from dataengine import numbers
from dataengine.errors import StageError
from dataengine.facts import Phase, Training
from dataengine.manifest import Manifest, fingerprint_files
from dataengine.recipe import Recipe, resolve_path
from dataengine.rows import reasoning_reads, require_reasoning_template
from dataengine.run_folder import ROUTING_MAP_FILE, TRAINING_FILE
from dataengine.stage import RunContext, Stage, StageResult
from dataengine.teacher.server import resolve_model
from dataengine.train.launch import launch_phase
from dataengine.train.shape import shape_problems
from dataengine.train.student import vocab_problem

if TYPE_CHECKING:
    from datasets import Dataset

TEACHER_WEIGHTS = ("gkd", "on_policy")  # distillation methods that load the teacher's weights


class TrainStage(Stage):
    name = "train"
    # prune and gkd/on_policy read the teacher; the held-out split decides which rows are trained on
    reads = (
        "teacher",
        "train.student",
        "train.sft",
        "train.distill",
        "train.dpo",
        "train.evaluate.eval_fraction",
        "train.evaluate.min_held_out",
        "train.launch",  # the processes multiply the global batch; its config file is a key file
    )

    def __init__(
        self,
        recipe: Recipe,
        base_dir: Path,
        rows_from: str,
        routing_from: str | None = None,
        preference_from: str | None = None,
    ) -> None:
        self.recipe = recipe
        self.cfg = recipe.train
        self.base_dir = base_dir
        # the routing map, read by a student made from the teacher's experts scored by routing frequency
        # (merged or kept); the judge's preference pairs, read by train.dpo
        self.inputs = {"rows": rows_from} | ({"routing": routing_from} if routing_from else {})
        if preference_from:
            self.inputs["preference"] = preference_from
        # the untrained student as well, which evaluation scores as "before": building it again there would load the
        # teacher and score its layers or experts a second time (3 to 22 s a run on 2 cores of an EPYC, capped at AVX2)
        self.outputs = {
            "student": f"students/{self.cfg.student.name}",
            "init": f"students/{self.cfg.student.name}-init",
        }
        self.reads = (*self.reads, *reasoning_reads(recipe))
        if self.cfg.dpo is not None:
            # the evaluation judges the student against itself before DPO: its win rate
            self.outputs["before_dpo"] = f"students/{self.cfg.student.name}-before-dpo"

    def key_files(self) -> list[Path]:
        """accelerate's config file: FSDP or DeepSpeed settings change how the weights are trained."""
        launch = self.cfg.launch
        return [resolve_path(launch.config_file, self.base_dir)] if launch and launch.config_file else []

    @staticmethod
    def check(recipe: Recipe, base_dir: Path) -> list[str]:
        """Logit distillation needs the student to share the teacher's vocabulary (read from local tokenizers); the
        prune knobs must fit the start's shape (from its config.json, where it is on this machine); an accelerate
        config file must exist."""
        if recipe.train is None:
            return []
        problems = [problem] if (problem := vocab_problem(recipe, base_dir)) else []
        problems += shape_problems(recipe, base_dir)
        launch = recipe.train.launch
        if launch is not None and launch.config_file and not resolve_path(launch.config_file, base_dir).is_file():
            problems.append(
                f"train.launch.config_file: {resolve_path(launch.config_file, base_dir)} does not exist (write one "
                "with `accelerate config --config_file PATH`, or leave it out for plain data parallel)"
            )
        return problems

    def run(self, inputs: dict[str, Path], outputs: dict[str, Path], work_dir: Path, ctx: RunContext) -> StageResult:
        # torch, transformers, TRL and datasets load when training starts, not when a recipe is validated or planned
        from dataengine.train.data import load_rows, pairs_outside, split_rows
        from dataengine.train.phases import DONE
        from dataengine.train.student import init_student

        # validation compared only what was on the machine; the student and teacher are fetched by now
        if problem := vocab_problem(self.recipe, self.base_dir, local_only=False):
            raise StageError(problem)
        output_dir = outputs["student"]
        cache = work_dir / "datasets"
        rows = load_rows(inputs["rows"], cache)
        train_rows, held_out = split_rows(rows, self.cfg.evaluate.eval_fraction, self.cfg.evaluate.min_held_out)
        if not len(train_rows):
            raise StageError(f"train: {len(rows)} curated row(s), none left to train on after the held-out split")
        ctx.log(f"training on {len(train_rows)} rows; {len(held_out)} held out for evaluation")
        load = None
        if "routing" in inputs:
            load = json.loads((inputs["routing"] / ROUTING_MAP_FILE).read_text())["overall"]["load"]
        current = init_student(self.recipe, self.base_dir, work_dir / "init", train_rows, load, ctx.log)
        _link_model(current, outputs["init"])
        phases = []
        sft = self.cfg.sft
        if sft is not None and sft.enabled:
            current = self._phase(
                "sft", work_dir, ctx, lambda out, start: self._train("sft", start, train_rows, sft, out, ctx), current
            )
            phases.append(json.loads((current / DONE).read_text()))
        distill = self.cfg.distill
        if distill is not None:
            top_k = self.recipe.score.top_k if self.recipe.score else None

            def go(out: Path, start: Path) -> Path:
                # what the method reads of the teacher: its weights (gkd, on_policy) or its server (server)
                teacher = resolve_model(self.recipe.teacher, ctx.log) if distill.method in TEACHER_WEIGHTS else None
                url = ctx.teacher.url() if distill.method == "server" else None
                return self._train(
                    "distill", start, train_rows, distill, out, ctx, teacher=teacher, teacher_url=url, top_k=top_k
                )

            current = self._phase(f"distill-{distill.method}", work_dir, ctx, go, current)
            phases.append(json.loads((current / DONE).read_text()))
        dpo = self.cfg.dpo
        if dpo is not None:
            pairs = pairs_outside(load_rows(inputs["preference"], cache), held_out)
            if not len(pairs):
                raise StageError(
                    "train.dpo: the judge made no preference pair outside the held-out rows (see the judge's "
                    "summary: lower curate.judge.pairs.min_margin, or generate more rollouts per prompt)"
                )
            _copy_model(current, outputs["before_dpo"])
            current = self._phase(
                "dpo", work_dir, ctx, lambda out, start: self._train("dpo", start, pairs, dpo, out, ctx), current
            )
            phases.append(json.loads((current / DONE).read_text()))
        _copy_model(current, output_dir)
        record = {
            "student": json.loads((work_dir / "init" / "student_init.json").read_text()),
            "train_rows": len(train_rows),
            "held_out_rows": len(held_out),
            "held_out_ids": sorted(r["id"] for r in held_out),
            "phases": phases,
        }
        (output_dir / TRAINING_FILE).write_text(json.dumps(record, indent=2))
        return StageResult(
            rows_in=len(rows),
            rows_out=len(train_rows),
            output_fingerprint=fingerprint_files(sorted(output_dir.glob("*.safetensors"))),
            stats={
                "held_out_rows": len(held_out),
                "phases": [_phase_stats(p) for p in phases],
                "student": record["student"],
            },
        )

    def _train(self, phase: str, start: Path, rows: Dataset, settings, out: Path, ctx: RunContext, **extra) -> Path:
        """One phase on `rows` (a `datasets.Dataset` of the stage's rows, or of preference pairs for dpo), in the
        form its trainer takes, in this process or through accelerate launch (`train.launch`)."""
        from dataengine.train.data import has_reasoning, phase_rows
        from dataengine.train.phases import run_phase

        form = self.cfg.reasoning_format
        if form == "template" and has_reasoning(rows):
            require_reasoning_template(start, "the student")
        rows = phase_rows(phase, rows, getattr(settings, "method", None), form)
        if self.cfg.launch is None:
            return run_phase(phase, start, rows, settings, out, ctx.log, **extra)
        return launch_phase(phase, start, rows, settings, out, self.cfg.launch, self.base_dir, ctx.log, **extra)

    @staticmethod
    def _phase(name: str, work_dir: Path, ctx: RunContext, train, start: Path) -> Path:
        from dataengine.train.phases import DONE

        out = work_dir / name
        final = out / "final"
        if (final / DONE).is_file():
            ctx.log(f"{name}: already trained — reusing {final}")
            return final
        ctx.log(f"{name}: training from {start}")
        return train(out, start)

    def summary(self, manifest: Manifest, outputs: dict[str, Path], console: Console) -> None:
        training = Training.read(outputs["student"] / TRAINING_FILE)
        if training is None:
            console.print(f"trained on {manifest.rows_out} rows; {TRAINING_FILE} is gone from {outputs['student']}")
            return
        table = Table(
            title=f"trained on {training.train_rows} rows ({len(training.held_out_ids)} held out)",
            title_justify="left",
        )
        for column in ("phase", "steps", "first loss", "last loss", "seconds"):
            table.add_column(column, justify="left" if column == "phase" else "right")
        for p in training.phases:
            table.add_row(
                p.method,
                numbers.count(p.steps),
                numbers.metric(p.first_loss),
                numbers.metric(p.last_loss),
                numbers.seconds(p.seconds),
            )
        console.print(table)
        console.print(f"student: {outputs['student']}")


def _phase_stats(record: dict) -> dict:
    """A phase in the manifest: what it did, without the full log history (that stays in training.json)."""
    phase = Phase.of(record)
    return {
        "method": phase.method,
        "steps": phase.steps,
        "seconds": phase.seconds,
        "first_loss": phase.first_loss,
        "last_loss": phase.last_loss,
        "resumed_from": phase.resumed_from,
    }


def _link_model(model: Path, folder: Path) -> None:
    """`model`'s files into `folder` as hard links (a copy across file systems): the work folder's files are never
    written again, so the run folder's names share their blocks instead of holding a second copy of the weights."""
    for item in model.iterdir():
        if item.is_dir():  # a tokenizer's additional_chat_templates/, say
            shutil.copytree(item, folder / item.name)
            continue
        try:
            (folder / item.name).hardlink_to(item)
        except OSError:
            shutil.copy2(item, folder / item.name)


def _copy_model(phase: Path, folder: Path) -> None:
    """A finished phase's model and tokenizer files into `folder`, without the phase's record."""
    from dataengine.train.phases import DONE

    for item in phase.iterdir():
        if item.name != DONE:
            shutil.copy2(item, folder / item.name)
