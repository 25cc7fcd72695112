"""evaluate: the untrained and the trained student on the held-out rows, side by side.

Writes eval/metrics.json (and eval/samples.jsonl with the student's answers) and prints a table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from dataengine import numbers
from dataengine.checks.sandbox import SandboxLimits
from dataengine.facts import MATH_METRICS, METRICS, REASONING_METRICS, Evaluation
from dataengine.manifest import Manifest, fingerprint_files
from dataengine.recipe import Recipe, TeacherConfig, resolve_path
from dataengine.rows import reasoning_form
from dataengine.run_folder import METRICS_FILE, ROUTING_MAP_FILE
from dataengine.stage import RunContext, Stage, StageResult
from dataengine.train.win_rate import win_rate

# held-out rows are few (tens to hundreds): TRL's default concurrency for them, not a knob of the recipe
CONCURRENT_REQUESTS = 4


def _memory(teacher: TeacherConfig, base_dir: Path) -> str:
    """What the teacher takes in memory loaded in float32, as evaluation loads it, where its weights are on this
    machine (a folder, the builtin build): 4 bytes a parameter, the parameters counted from its safetensors
    headers (the shards its index names, when it has one); else from its files' size on disk."""
    from safetensors import safe_open

    if teacher.is_builtin:
        from dataengine.teacher.builtin import builtin_model_dir

        folder = builtin_model_dir(teacher.builtin_name, teacher.builtin)
    else:
        folder = resolve_path(teacher.model, base_dir)
    if not folder.is_dir():
        return "its size is not known here: its weights are not in a folder on this machine"
    index = folder / "model.safetensors.index.json"
    # with an index, its shards only (a folder may also hold a consolidated copy of the same weights)
    files = (
        sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
        if index.is_file()
        else sorted(folder.glob("*.safetensors"))
    )
    if files:
        parameters = 0
        for path in files:  # headers only: no tensor is read
            with safe_open(path, "np") as weights:  # numpy: plan does not import torch
                parameters += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())  # noqa: SIM118
        return f"about {_size(parameters * 4)} in float32"
    stored = [p for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth")]
    if not stored:
        return "its size is not known here: no weights in its folder"
    return f"its weights take {_size(sum(p.stat().st_size for p in stored))} on disk, up to twice that in float32"


def _size(bytes_: int) -> str:
    return f"{bytes_ / 1e9:.1f} GB" if bytes_ >= 1e9 else f"{bytes_ / 1e6:.0f} MB"


class EvaluateStage(Stage):
    name = "evaluate"
    # where training ran (train.launch) and where curation ran on Ray are not part of what is evaluated
    reads = ("train", "curate", "teacher")

    def __init__(
        self,
        recipe: Recipe,
        base_dir: Path,
        rows_from: str,
        student_from: str,
        init_from: str,
        routing_from: str | None = None,
        before_dpo_from: str | None = None,
    ) -> None:
        self.recipe = recipe
        self.cfg = recipe.train.evaluate
        self.base_dir = base_dir
        # the student trained and the student it started as (the train stage's outputs); the compared inits
        # (train.evaluate.compare_inits) are built here from the same rows, and the routing map where they read it
        self.inputs = {"rows": rows_from, "student": student_from, "init": init_from}
        self.inputs |= {"routing": routing_from} if routing_from else {}
        if before_dpo_from:
            # with train.dpo: the student before DPO, whose answers the judge weighs against the trained one's
            self.inputs["before_dpo"] = before_dpo_from
        self.outputs = {"metrics": "eval"}

    def outside(self) -> list[str]:
        """Where the teacher's row comes from: the served teacher, or the teacher loaded in transformers in this
        process, which on a training node is where a 30B MoE does not fit: `plan` says so before the GPU hours."""
        teacher = self.recipe.teacher
        if self.cfg.teacher == "served":
            # the run's teacher: the recipe's first endpoint (of a pool, the first), or the server the run starts
            where = teacher.urls[0] if teacher.urls else "the run's vLLM server"
            return [f"asks {where} for the teacher's logprobs on the held-out answers"]
        if self.cfg.teacher == "local":
            return [
                f"loads the teacher {teacher.model} in transformers to evaluate it ({_memory(teacher, self.base_dir)}; "
                "train.evaluate.teacher: served asks the served teacher instead)"
            ]
        return []

    def run(self, inputs: dict[str, Path], outputs: dict[str, Path], work_dir: Path, ctx: RunContext) -> StageResult:
        # torch and transformers load when evaluation starts, not when a recipe is validated or planned
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from dataengine.train.data import load_rows, split_rows
        from dataengine.train.evaluation import answer_fit, answer_quality
        from dataengine.train.student import init_student

        output_dir = outputs["metrics"]
        rows = load_rows(inputs["rows"], work_dir / "datasets")
        train_rows, held_out = split_rows(rows, self.cfg.eval_fraction, self.cfg.min_held_out)
        load = None
        if "routing" in inputs:
            load = json.loads((inputs["routing"] / ROUTING_MAP_FILE).read_text())["overall"]["load"]
        initial, trained = inputs["init"], inputs["student"]
        code = self.recipe.generate.code if self.recipe.generate else None
        prefix = (code.answer_prefix or "") if code else ""
        limits = SandboxLimits.of(self.recipe.curate.code, timeout_s=self.cfg.code_timeout_s)
        results, samples = {}, []
        form = reasoning_form(self.recipe)
        with Progress(console=ctx.console, transient=True) as progress:
            for label, path in (("before", initial), ("after", trained)):
                bar = progress.add_task(f"evaluating the student {label} training", total=len(held_out))
                tokenizer = AutoTokenizer.from_pretrained(str(path))
                model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
                quality = answer_quality(
                    model,
                    tokenizer,
                    held_out,
                    prefix,
                    self.cfg.max_new_tokens,
                    limits,
                    lambda n, bar=bar: progress.advance(bar, n),
                )
                samples += [{"student": label, **s} for s in quality.pop("samples")]
                fit = answer_fit(model, tokenizer, held_out, form)
                results[label] = {**fit, **quality, "intervals": fit["intervals"] | quality["intervals"]}
        if self.cfg.teacher:
            results["teacher"] = self._teacher(held_out, ctx)
        inits = {}
        # the trained student's start was made from the same teacher and training rows: its expert scores serve
        # the compared starts that measure theirs the same way (REAP's pass over the teacher is not run again)
        scored = json.loads((initial / "student_init.json").read_text()) if self.cfg.compare_inits else None
        for other in self.cfg.compare_inits:
            variant = self.recipe.model_copy(update={"train": self.recipe.train.model_copy(update={"student": other})})
            folder = work_dir / "inits" / other.name
            folder = init_student(variant, self.base_dir, folder, train_rows, load, ctx.log, scored)
            ctx.log(f"evaluating the compared init {other.name} untrained")
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
            fit = answer_fit(model, AutoTokenizer.from_pretrained(str(folder)), held_out, form)
            made = json.loads((folder / "student_init.json").read_text())
            inits[other.name] = {"parameters": made["parameters"], **fit}
        wins = {}
        if "before_dpo" in inputs:
            after = {s["id"]: s["answer"] for s in samples if s["student"] == "after"}
            wins["win_rate"] = win_rate(self.recipe, inputs["before_dpo"], held_out, after, prefix, work_dir, ctx)
        metrics = {
            "held_out_rows": len(held_out),
            "held_out_ids": sorted(r["id"] for r in held_out),
            "kl": "forward KL(teacher || student) per answer token over the teacher's top-k tokens plus one tail "
            "bucket for the rest of the vocabulary (needs the score stage)",
            **results,
            **({"inits": inits} if inits else {}),
            **wins,
        }
        (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        with open(output_dir / "samples.jsonl", "w") as fh:
            fh.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
        return StageResult(
            rows_in=len(held_out),
            rows_out=len(held_out),
            output_fingerprint=fingerprint_files([output_dir / METRICS_FILE]),
            stats={
                **{
                    label: {m.key: results[label].get(m.key) for m in (*METRICS, *MATH_METRICS, *REASONING_METRICS)}
                    for label in results
                },
                **wins,
            },
        )

    def _teacher(self, held_out: list[dict], ctx: RunContext) -> dict:
        """The teacher's row: its perplexity from its served logprobs, or from the teacher loaded here."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from dataengine.teacher.server import resolve_model
        from dataengine.train.evaluation import answer_fit, teacher_row

        teacher = self.recipe.teacher
        path = resolve_model(teacher, ctx.log)
        revision = None if teacher.is_builtin else teacher.revision
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
        if self.cfg.teacher == "served":
            ctx.log(f"asking the teacher {teacher.model} for its logprobs on its held-out answers")
            return teacher_row(held_out, self._served_fit(held_out, tokenizer, ctx))
        ctx.log(f"evaluating the teacher {teacher.model} on its held-out answers, loaded here")
        model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=torch.float32)
        return teacher_row(held_out, answer_fit(model, tokenizer, held_out, reasoning_form(self.recipe)))

    def _served_fit(self, held_out: list[dict], tokenizer, ctx: RunContext) -> dict:
        """Perplexity of the run's teacher (endpoint or our server, started if it is not running) on the held-out
        answers, the tokens scoring gave them where the rows were scored; rows longer than our server's context
        are left out and counted. A teacher that stops answering is recovered once (`teacher.recovery`)."""
        from dataengine.errors import StageError
        from dataengine.teacher.logprobs import answer_nll
        from dataengine.train.evaluation import answer_tokens, perplexity_fit

        limit = None if self.recipe.teacher.urls else self.recipe.teacher.vllm.max_model_len
        sequences, starts, masks = [], [], []
        for row in held_out:
            # as the local teacher reads them (`answer_fit`)
            ids, start, mask = answer_tokens(tokenizer, row, reasoning_form(self.recipe))
            if limit is None or len(ids) + 1 <= limit:  # the request generates one token after the sequence
                sequences.append(ids)
                starts.append(start)
                masks.append(mask)
        nll: list[float] = []
        if sequences:
            try:
                nll = answer_nll(ctx.teacher.url(), sequences, starts, CONCURRENT_REQUESTS, masks)
            except StageError as exc:
                if not ctx.teacher.recover(str(exc)):
                    raise StageError(f"{exc} (train.evaluate.teacher: local loads the teacher here instead)") from exc
                nll = answer_nll(ctx.teacher.url(), sequences, starts, CONCURRENT_REQUESTS, masks)
        tokens = [sum(m) if m is not None else len(ids) - s for ids, s, m in zip(sequences, starts, masks, strict=True)]
        fit = perplexity_fit([[n, t] for n, t in zip(nll, tokens, strict=True)])
        if too_long := len(held_out) - len(sequences):
            ctx.log(f"{too_long} held-out rows are longer than the teacher's context; its perplexity leaves them out")
        fit["too_long"] = too_long
        return fit

    def summary(self, manifest: Manifest, outputs: dict[str, Path], console: Console) -> None:
        evaluation = Evaluation.read(outputs["metrics"] / METRICS_FILE)
        if evaluation is None:
            console.print(
                f"evaluated on {manifest.rows_out} held-out rows; {METRICS_FILE} is gone from {outputs['metrics']}"
            )
            return
        table = Table(
            title=f"student on {evaluation.held_out_rows} held-out rows (95% bootstrap intervals)", title_justify="left"
        )
        columns = ["metric", "before training", "after training"] + (["teacher"] if evaluation.teacher else [])
        for column in [*columns, "better is"]:
            table.add_column(column, justify="left" if column == "metric" else "right")
        for m in evaluation.metrics:
            cells = [evaluation.cell(label, m.key) for label in ("before", "after")]
            if evaluation.teacher:
                cells.append(
                    evaluation.cell("teacher", m.key) if m.key in evaluation.teacher else numbers.NOT_APPLICABLE
                )
            table.add_row(m.title, *cells, m.better)
        console.print(table)
        if evaluation.inits:
            compared = Table(title="other starts, untrained, on the same rows", title_justify="left")
            for column in ("init", "parameters", "KL(teacher ‖ student)", "perplexity"):
                compared.add_column(column, justify="left" if column == "init" else "right")
            for name in evaluation.inits:
                compared.add_row(
                    name,
                    f"{evaluation.inits[name]['parameters'] / 1e6:.0f}M",
                    evaluation.cell(name, "kl_teacher_student"),
                    evaluation.cell(name, "perplexity"),
                )
            console.print(compared)
        if line := evaluation.win_rate_line():
            console.print(line)
        console.print(f"metrics: {outputs['metrics'] / METRICS_FILE}")
