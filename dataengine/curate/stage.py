"""The curate stage: generated rows -> datatrove filters -> exact + MinHash dedup -> curated/ and rejected/.

Every step is a datatrove pipeline with its own logging folder, so a crashed stage resumes per
datatrove task (completed tasks are skipped). Nothing is silently lost: rows in = kept + rejected,
checked before the manifest is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow as pa
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers import JsonlReader, ParquetReader
from datatrove.pipeline.writers import JsonlWriter
from rich.console import Console
from rich.table import Table

from dataengine.checks.sandbox import SandboxLimits, isolation_warning
from dataengine.curate.dedup import dedup_language
from dataengine.curate.filters.answer import LengthFilter, RefusalFilter, TruncationFilter
from dataengine.curate.filters.code import CodeParseFilter, CodeTestsFilter
from dataengine.curate.filters.custom import UserFilter, load_filter, module_file
from dataengine.curate.filters.decontamination import DecontaminationFilter, builtin_benchmarks, read_texts
from dataengine.curate.filters.language import AnswerLanguageFilter, ProseQualityFilter, RepetitionFilter
from dataengine.curate.filters.math import MathFilter
from dataengine.curate.filters.question import QuestionFilter
from dataengine.curate.filters.reasoning import ReasoningFilter
from dataengine.curate.filters.turns import EveryTurn
from dataengine.errors import StageError
from dataengine.executors import pipeline_runner
from dataengine.logs import datatrove_logs_to
from dataengine.manifest import Manifest, fingerprint_files
from dataengine.recipe import CurateConfig, Recipe, resolve_path
from dataengine.results import CurateStats, Quota
from dataengine.rows import CURATED_FEATURES, Group, last_user_turn, read_ids, write_shards
from dataengine.run_folder import RunFolder
from dataengine.stage import RunContext, Stage, StageResult
from dataengine.target.existing import reference_folder


def row_to_document(self, data: dict, path: str, id_in_file: int | str) -> dict:
    """A sample row as a datatrove document: the answer is the text, the whole row the metadata. datatrove's
    readers skip a document without text, so an empty answer (a thinking teacher's that never came after its
    reasoning) reads as one space: the filters drop it with their reason, and the row keeps its messages."""
    return {"text": data["messages"][-1]["content"] or " ", "id": data["id"], "metadata": data}


def prompt_and_answer(self, document: Document) -> dict:
    """What the dedup steps compare: prompt + answer. The row itself travels in the metadata."""
    prompt = last_user_turn(document.metadata["messages"])
    return {"text": f"{prompt}\n\n{document.text}", "id": document.id, "metadata": document.metadata}


class CurateStage(Stage):
    name = "curate"

    def __init__(self, recipe: Recipe, base_dir: Path, rows_from: str) -> None:
        if recipe.curate is None:
            raise ValueError("the curate stage needs a `curate:` block")
        self.recipe = recipe
        self.cfg: CurateConfig = recipe.curate
        self.base_dir = base_dir
        self.inputs = {"rows": rows_from}
        self.outputs = {"kept": "curated", "rejected": "rejected"}
        # appending to a publish target dedups against what it holds: where that is belongs to the key
        appends = recipe.publish is not None and recipe.publish.append
        # curate.tasks is output-neutral elsewhere, not here: past one generated shard the rows are dealt out to
        # the tasks, so their number decides the order rows meet dedup in, and which duplicate is kept
        own = ("curate", "curate.tasks")
        self.reads = (*own, "publish.to", "publish.revision") if appends else own

    def key_files(self) -> list[Path]:
        """The benchmarks, the reference data (new reference rows change what counts as a duplicate), and the
        modules of the custom filters that live in the recipe's folder."""
        references = [resolve_path(folder, self.base_dir) for folder in self.cfg.dedup.reference]
        modules = [p for entry in self.cfg.filters.custom if (p := module_file(entry.class_, self.base_dir))]
        return [
            *self._benchmark_paths().values(),
            *(p for ref in references for p in sorted(ref.rglob("*.parquet"))),
            *modules,
        ]

    @staticmethod
    def check(recipe: Recipe, base_dir: Path) -> list[str]:
        """Each custom filter imports, is a datatrove BaseFilter and takes its args (it is built, then let go)."""
        if recipe.curate is None:
            return []
        problems = []
        for i, entry in enumerate(recipe.curate.filters.custom):
            if isinstance(built := load_filter(entry.class_, entry.args, base_dir), str):
                problems.append(f"curate.filters.custom[{i}].{built}")
        return problems

    def _benchmark_paths(self) -> dict[str, Path]:
        dc = self.cfg.decontamination
        if not dc.enabled:
            return {}
        shipped = builtin_benchmarks()
        paths = {name: shipped[name] for name in dc.builtin}
        for f in dc.files:
            path = resolve_path(f.path, self.base_dir)
            paths[f.name or path.name] = path
        return paths

    # ------------------------------------------------------------------ pipeline pieces

    def _filters(self, rejected: Path) -> list[tuple[str, BaseFilter]]:
        """The filters, in order, each with its step name (which names its rejected file)."""
        cfg, f = self.cfg, self.cfg.filters

        names: list[str] = []  # each filter's step, in order: every filter below takes one exclusion writer

        def out(step: str) -> JsonlWriter:
            names.append(step)
            return JsonlWriter(str(rejected), output_filename=f"{step}_${{rank}}.jsonl", compression=None)

        steps: list = []
        if f.reasoning.enabled:
            r = f.reasoning
            steps.append(
                ReasoningFilter(r.max_tokens, r.same_language, r.min_copied_chars, exclusion_writer=out("reasoning"))
            )
        if f.truncated.enabled:
            steps.append(TruncationFilter(exclusion_writer=out("truncated")))
        if f.math.enabled:  # after the cap: a solution cut off is `truncated`, not unverified
            steps.append(MathFilter(exclusion_writer=out("math")))
        if f.length.enabled:
            steps.append(LengthFilter(f.length.min_chars, f.length.max_chars, exclusion_writer=out("length")))
        if f.refusal.enabled:
            steps.append(RefusalFilter(f.refusal.extra_phrases, exclusion_writer=out("refusal")))
        if f.question.enabled:
            steps.append(QuestionFilter(f.question.max_echo, exclusion_writer=out("question")))
        if f.repetition.enabled:
            steps.append(RepetitionFilter(exclusion_writer=out("repetition")))
        if f.language.enabled:
            steps.append(AnswerLanguageFilter(f.language.min_confidence, exclusion_writer=out("language")))
        if f.prose_quality.enabled:
            pq = f.prose_quality
            steps.append(ProseQualityFilter(pq.min_words, pq.max_words, exclusion_writer=out("prose_quality")))
        if cfg.code.enabled:
            steps.append(CodeParseFilter(exclusion_writer=out("code_parse")))
            steps.append(
                CodeTestsFilter(SandboxLimits.of(cfg.code), cfg.code.parallel, exclusion_writer=out("code_tests"))
            )
        for entry in f.custom:  # the recipe's own, after ours: their drops land in rejected/ like ours
            steps.append(
                UserFilter(entry.class_, entry.args, self.base_dir, entry.step, exclusion_writer=out(entry.step))
            )
        if cfg.decontamination.enabled:
            fields = {f.name or resolve_path(f.path, self.base_dir).name: f.field for f in cfg.decontamination.files}
            texts = {
                name: read_texts(path, fields.get(name, "prompt")) for name, path in self._benchmark_paths().items()
            }
            steps.append(DecontaminationFilter(texts, cfg.decontamination.n, exclusion_writer=out("decontamination")))
        return list(zip(names, steps, strict=True))

    def _published_reference(self, own: pa.Array, work_dir: Path, run_dir: Path) -> Path | None:
        """With publish.append: the target's rows, less this run's own (by generated id), as a reference."""
        publish = self.recipe.publish
        if publish is None or not publish.append:
            return None
        return reference_folder(
            publish, self.base_dir, work_dir / "published-before", own, RunFolder(run_dir).target_copy
        )

    # ------------------------------------------------------------------ run

    def run(self, inputs: dict[str, Path], outputs: dict[str, Path], work_dir: Path, ctx: RunContext) -> StageResult:
        source = inputs["rows"] / "data"
        own = read_ids(inputs["rows"])
        rejected_raw, filtered = work_dir / "rejected", work_dir / "filtered"
        run_pipeline = pipeline_runner(self.cfg, work_dir / "logs")
        status = ctx.console.status("curating")

        def run(name: str, pipeline: list, tasks: int) -> None:
            status.update(f"curating: {name} ({tasks} task{'s' if tasks > 1 else ''})")
            run_pipeline(name, pipeline, tasks)

        references = [resolve_path(r, self.base_dir) for r in self.cfg.dedup.reference]
        if (published := self._published_reference(own, work_dir, ctx.run_dir)) is not None:
            ctx.log(f"dedup also against the rows already published at {self.recipe.publish.to} (publish.append)")
            references.append(published)
        if self.cfg.code.enabled and (warning := isolation_warning(SandboxLimits.of(self.cfg.code))):
            ctx.console.print(f"[yellow]warning:[/yellow] {warning}")
        tally = _Tally()
        with status, datatrove_logs_to(work_dir / "datatrove.log"):
            try:
                named = self._filters(rejected_raw)
                steps = [step for _, step in named]
                ctx.log(f"filters: {', '.join(s.name for s in steps)}")
                run(
                    "filter",
                    [
                        ParquetReader(str(source), adapter=row_to_document),
                        # a conversation's earlier assistant turns through the same filters, first: it is cut
                        # at its last good one, and its last turn is then checked as any row's
                        EveryTurn(named),
                        *steps,
                        JsonlWriter(
                            str(filtered),
                            output_filename="${language}/${rank}.jsonl",
                            compression=None,
                            adapter=prompt_and_answer,
                        ),
                    ],
                    self.cfg.tasks,
                )
                for language_dir in sorted(p for p in filtered.iterdir() if p.is_dir()) if filtered.exists() else []:
                    lang = language_dir.name
                    ctx.log(f"dedup {lang}")
                    dedup_language(
                        lang,
                        language_dir,
                        work_dir / "dedup" / lang,
                        rejected_raw,
                        work_dir / "kept" / lang,
                        self.cfg.dedup,
                        run,
                        references,
                    )
                status.update("curating: writing curated/ and rejected/")
                # a row at a time from datatrove's files into the shards: the stage never holds every row
                kept = map(tally.kept, _read_rows(work_dir / "kept"))
                paths = write_shards(kept, outputs["kept"], features=CURATED_FEATURES)
                rejected_dir = outputs["rejected"]
                rejected = map(tally.rejected, _read_rejected(rejected_raw))
                write_shards(rejected, rejected_dir, features=CURATED_FEATURES)
            except StageError:
                raise
            except Exception as exc:
                raise StageError(f"curation failed: {exc}\nlogs: {work_dir / 'logs'}; run again to resume") from exc
        rows_in = len(own)
        if tally.kept_rows + tally.rejected_rows != rows_in:
            raise StageError(
                f"curation lost rows: {rows_in} in, {tally.kept_rows} kept + {tally.rejected_rows} rejected "
                f"(logs: {work_dir / 'logs'})"
            )
        return StageResult(
            rows_in=rows_in,
            rows_out=tally.kept_rows,
            output_fingerprint=fingerprint_files(paths),
            drops=dict(tally.drops.most_common()),
            stats=self._stats(tally, rejected_dir),
        )

    def _stats(self, tally: _Tally, rejected_dir: Path) -> CurateStats:
        targets = _targets(self.recipe)
        quota = {
            str(g): Quota(target=target, kept=tally.groups.get(g, 0), short=max(0, target - tally.groups.get(g, 0)))
            for g, target in targets.items()
        }
        return CurateStats(
            kept_by_kind_language={str(g): n for g, n in sorted(tally.groups.items())},
            rejected_by_step=dict(tally.steps.most_common()),
            quota=quota,
            code_tests_passed=tally.tests_passed,
            **({"conversations_cut": dict(tally.cut.most_common())} if tally.cut else {}),
            rejected_dir=str(rejected_dir),
        )

    def summary(self, manifest: Manifest, outputs: dict[str, Path], console: Console) -> None:
        table = Table(title=f"curated: kept {manifest.rows_out} of {manifest.rows_in} rows", title_justify="left")
        stats = CurateStats.of(manifest)
        # rows brought with `ingest` have no quota: their groups alone
        columns = ("kind/language", "target", "kept", "short") if stats.quota else ("kind/language", "kept")
        for column in columns:
            table.add_column(column, justify="left" if column == "kind/language" else "right")
        for key, q in stats.quota.items():
            table.add_row(key, str(q.target), str(q.kept), str(q.short) if q.short else "")
        if not stats.quota:
            for key, kept in manifest.stats.get("kept_by_kind_language", {}).items():
                table.add_row(key, str(kept))
        console.print(table)
        if manifest.drops:
            console.print("dropped: " + ", ".join(f"{reason} {n}" for reason, n in manifest.drops.items()))
        if cut := manifest.stats.get("conversations_cut"):
            console.print("conversations cut at their last good turn: " + ", ".join(f"{r} {n}" for r, n in cut.items()))
        console.print(f"output: {outputs['kept']} (rejected rows with reasons: {outputs['rejected']})")


class _Tally:
    """The stage's counts, taken as the rows stream past on their way into the shards."""

    def __init__(self) -> None:
        self.kept_rows = self.rejected_rows = self.tests_passed = 0
        self.groups: Counter[Group] = Counter()
        self.drops: Counter[str] = Counter()
        self.steps: Counter[str] = Counter()
        self.cut: Counter[str] = Counter()  # kept conversations cut at an earlier turn, by the reason

    def kept(self, row: dict) -> dict:
        self.kept_rows += 1
        if row.get("cut_reason"):
            self.cut[row["cut_reason"]] += 1
        self.groups[Group.of(row)] += 1
        self.tests_passed += bool(row.get("tests_passed"))
        return row

    def rejected(self, row: dict) -> dict:
        self.rejected_rows += 1
        self.drops[row["drop_reason"]] += 1
        self.steps[row["drop_step"]] += 1
        return row


def _targets(recipe: Recipe) -> dict[Group, int]:
    """Rows the recipe asked for per kind/language (quota x rollouts), to report shortfalls."""
    gen, targets = recipe.generate, Counter()
    if gen is None:  # rows brought with `ingest`: no quota to fall short of
        return {}
    if gen.chat:
        for lang in gen.chat.languages:
            targets[Group("chat", lang.code)] += lang.quota * gen.chat.rollouts
    if gen.code:
        targets[Group("code", gen.code.language)] += gen.code.count * gen.code.rollouts
    if gen.math:
        for lang in gen.math.languages:
            targets[Group("math", lang.code)] += lang.quota * gen.math.rollouts
    return dict(sorted(targets.items()))


_ADDED = (
    "cut_reason",
    "turns_cut",
    "language_detected",
    "language_confidence",
    "tests_passed",
    "test_runtime_s",
    "test_output",
    "contaminated_by",
)


def _row(doc: Document) -> dict:
    row = dict(doc.metadata)
    row["id"] = doc.id
    for key in _ADDED:
        row.setdefault(key, None)
    cluster = row.pop("minhash_cluster_id", -1)
    row["dedup_cluster_id"] = f"{row['language']}-{cluster}" if cluster not in (-1, None) else None
    row["dedup_cluster_size"] = row.pop("minhash_cluster_size", 1)
    # only the schema's columns: readers and filters add bookkeeping keys (file_path, filter_reason)
    return {key: row.get(key) for key in CURATED_FEATURES}


def _read_rows(folder: Path) -> Iterator[dict]:
    if folder.exists():
        yield from (_row(doc) for doc in JsonlReader(str(folder), recursive=True).run())


def _read_rejected(folder: Path) -> Iterator[dict]:
    """Rejected rows from every exclusion writer, a line at a time; the file name says which step dropped them."""
    for path in sorted(folder.glob("*.jsonl*")) if folder.exists() else []:
        step = path.name.rsplit("_", 1)[0]
        with path.open("rb") as lines:
            for line in lines:
                raw = orjson.loads(line)
                meta = raw["metadata"]
                reason = meta.get("filter_reason")
                where = step
                if step.startswith("exact_dedup"):
                    where, reason = "exact_dedup", "exact_duplicate"
                elif step.startswith("near_dedup"):
                    where, reason = "near_dedup", "near_duplicate"
                meta = {**meta, "drop_reason": reason or where, "drop_step": where}
                yield _row(Document(text=raw["text"], id=raw["id"], metadata=meta))
