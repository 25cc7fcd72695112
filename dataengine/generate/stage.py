"""The generate stage: seeds -> teacher (datatrove InferenceRunner over vLLM) -> sample rows."""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from datatrove.data import Document
from datatrove.pipeline.inference.run_inference import InferenceConfig
from datatrove.pipeline.readers import JsonlReader
from rich.console import Console
from rich.table import Table

from dataengine.checks.code_answer import layout_regex, parse_code_answer
from dataengine.checks.math_answer import check_solutions
from dataengine.checks.question_form import question_regex
from dataengine.errors import StageError
from dataengine.experts.vllm_payload import answer_routing, encode
from dataengine.generate.magpie import (
    Written,
    magpie_documents,
    magpie_problems,
    magpie_rollout,
    select,
    system_turn,
)
from dataengine.generate.prompt_files import source_problems
from dataengine.generate.rollout import answer_text, request_seed, rollout
from dataengine.generate.seeds import (
    PromptSeed,
    distinct,
    expand_seeds,
    load_code_archetypes,
    load_languages,
    load_personas,
    load_topics,
    top_up_seeds,
)
from dataengine.generate.top_up import load_rounds
from dataengine.logs import datatrove_logs_to
from dataengine.manifest import Manifest, fingerprint_files
from dataengine.recipe import Recipe, SamplingConfig, TeacherConfig, resolve_path
from dataengine.results import GenerateStats
from dataengine.rows import (
    SAMPLE_FEATURES,
    Group,
    Reasoning,
    group_counts,
    sorted_rows,
    split_reasoning,
    stage_writer,
)
from dataengine.run_folder import RunFolder
from dataengine.stage import RunContext, Stage, StageResult, config_hash
from dataengine.target.existing import answered_prompts, prompt_hash
from dataengine.teacher.inference import inference_config, run_inference
from dataengine.teacher.server import resolve_model, served_name
from dataengine.teacher.throughput import FOLDER as THROUGHPUT
from dataengine.teacher.throughput import active_seconds, timeline

# why a prompt's rollouts never came: the teacher wrote no question (or thought until its cap before one)
_NO_QUESTION = ("empty_question", "question_reasoning_unclosed")
# the sampling knobs every request carries (max_tokens is per kind) and every row records
_SENT_SAMPLING = {"temperature", "top_p", "frequency_penalty", "presence_penalty"}


# how a solution ends in a language the recipe brings its own math meta-prompt for
SOLVE_INSTRUCTION = "Solve this problem step by step. End with the final answer in \\boxed{}."


def solve_instruction(language: str) -> str:
    """What follows a math problem in the user's turn: the shipped line in the language, else English's."""
    return load_languages().get(language, {}).get("math_solve", SOLVE_INSTRUCTION)


def thinking_params(sampling: SamplingConfig) -> dict[str, Any]:
    """The thinking knobs a recipe sets, as vLLM takes them in a chat request (none when unset)."""
    params: dict[str, Any] = {}
    if sampling.thinking is not None:
        params["chat_template_kwargs"] = {"enable_thinking": sampling.thinking}
    if sampling.thinking_token_budget is not None:
        params["thinking_token_budget"] = sampling.thinking_token_budget
    if sampling.reasoning_effort is not None:
        params["reasoning_effort"] = sampling.reasoning_effort
    return params


def magpie_config(recipe: Recipe, url: str) -> InferenceConfig:
    """How the Magpie requests reach the teacher at `url`: completions, sampled as generate.magpie says."""
    gen = recipe.generate
    sampling = {"temperature": gen.magpie.temperature, "top_p": gen.magpie.top_p}
    return inference_config(
        served_name(recipe.teacher), url, sampling, gen.max_concurrent_requests, gen.request_timeout_s, use_chat=False
    )


def teacher_config(recipe: Recipe, url: str) -> InferenceConfig:
    """How the generation requests reach the teacher at `url`."""
    gen = recipe.generate
    sampling = gen.sampling.model_dump(include=_SENT_SAMPLING) | thinking_params(gen.sampling)
    return inference_config(
        served_name(recipe.teacher), url, sampling, gen.max_concurrent_requests, gen.request_timeout_s
    )


class GenerateStage(Stage):
    name = "generate"
    inputs: dict[str, str] = {}
    # What the rows depend on: the teacher's identity and the generate block (plus local prompt files).
    # How vLLM is started (port, eager mode) does not change the data.
    reads = (
        "generate",
        "teacher.model",
        "teacher.revision",
        "teacher.builtin",
        "teacher.served_model_name",
        "teacher.return_routed_experts",
    )

    def __init__(self, recipe: Recipe, base_dir: Path) -> None:
        if recipe.generate is None:
            raise ValueError(
                "the generate stage needs a `generate:` block; this recipe brings its rows with `ingest:` (a "
                "pipeline of your own takes them with IngestStage, as pipelines/curate.py does)"
            )
        self.recipe = recipe
        self.base_dir = base_dir
        self.outputs = {"rows": "generated"}

    def outside(self) -> list[str]:
        teacher = self.recipe.teacher
        asks = ", ".join(teacher.urls) if teacher.urls else f"a vLLM server it starts for {teacher.model}"
        files = [f"reads {resolve_path(s.path, self.base_dir)}" for s in self.recipe.generate.sources if s.path]
        hub = [f"reads Hub dataset {s.dataset}" for s in self.recipe.generate.sources if s.dataset]
        return [f"asks {asks}", *files, *hub]

    def key_files(self) -> list[Path]:
        return [resolve_path(src.path, self.base_dir) for src in self.recipe.generate.sources if src.path]

    @property
    def _question_form(self) -> bool:
        """generate.chat.question_structured_output; unset, on with the engine's own vLLM server and off with
        endpoints, which may not be vLLM."""
        asked = self.recipe.generate.chat.question_structured_output if self.recipe.generate.chat else False
        return asked if asked is not None else not self.recipe.teacher.urls

    @staticmethod
    def check(recipe: Recipe, base_dir: Path) -> list[str]:
        """Languages, topic domains and code archetypes must be among the shipped ones (or bring their own)."""
        gen, problems = recipe.generate, []
        if gen is None:
            return problems
        if gen.chat is not None:
            shipped = load_languages()
            with_personas = load_personas() if gen.chat.personas else None
            for i, lang in enumerate(gen.chat.languages):
                if lang.instruction is None and lang.code not in shipped:
                    problems.append(
                        f"generate.chat.languages[{i}]: language {lang.code!r} has no shipped meta-prompt (shipped: "
                        f"{', '.join(sorted(shipped))}); give `instruction:` written in that language, with {{topic}}"
                    )
                if with_personas is not None and lang.code not in with_personas:
                    problems.append(
                        f"generate.chat.languages[{i}]: no shipped personas in {lang.code!r} (shipped: "
                        f"{', '.join(sorted(with_personas))}); set generate.chat.personas: false"
                    )
            if gen.chat.turns > 1:
                for i, lang in enumerate(gen.chat.languages):
                    if "follow_up" not in shipped.get(lang.code, {}):
                        problems.append(
                            f"generate.chat.languages[{i}]: no shipped follow-up prompt in {lang.code!r}, which "
                            f"generate.chat.turns: {gen.chat.turns} needs (shipped: {', '.join(sorted(shipped))})"
                        )
            known = load_topics()
            if unknown := [d for d in gen.chat.domains or [] if d not in known]:
                problems.append(
                    f"generate.chat.domains: unknown topic domain(s) {unknown}; shipped: {', '.join(sorted(known))}"
                )
        # the answers' language is checked only where curation runs its language filter
        checked = recipe.curate is not None and recipe.curate.filters.language.enabled
        for i, source in enumerate(gen.sources):
            problems += source_problems(i, source, base_dir, checked)
        if gen.magpie is not None:
            problems += list(magpie_problems(gen.magpie))
        if gen.math is not None:
            shipped = load_languages()
            for i, lang in enumerate(gen.math.languages):
                if lang.instruction is None and "math_instruction" not in shipped.get(lang.code, {}):
                    problems.append(
                        f"generate.math.languages[{i}]: language {lang.code!r} has no shipped math meta-prompt "
                        f"(shipped: {', '.join(sorted(shipped))}); give `instruction:` written in that language, "
                        "with {topic}, asking for a last line `Answer: <the number>`"
                    )
        if gen.code is not None:
            known = load_code_archetypes()
            if unknown := [a for a in gen.code.archetypes or [] if a not in known]:
                problems.append(
                    f"generate.code.archetypes: unknown code archetype(s) {unknown}; "
                    f"shipped: {', '.join(sorted(known))}"
                )
        return problems

    # ------------------------------------------------------------------ documents

    def documents(self, seeds: Iterable[PromptSeed]) -> Iterator[Document]:
        """A datatrove document per prompt, made as the inference pass writes them out."""
        gen = self.recipe.generate
        seeded = gen.sampling.seed_requests
        for seed in seeds:
            is_code, is_math = seed.kind == "code", seed.kind == "math"
            structured = is_code and gen.code is not None and gen.code.structured_output
            max_tokens = gen.code.max_tokens if is_code and gen.code else gen.sampling.max_tokens
            max_tokens = gen.math.max_tokens if is_math else max_tokens
            system = gen.chat.system_prompt if gen.chat and seed.kind == "chat" else None
            if seed.task == "magpie":  # answered after the system turn it was written after: it sets the language
                system = system_turn(gen.magpie, seed.language)
            meta = {
                **{k: getattr(seed, k) for k in ("kind", "task", "language", "topic", "persona", "rollouts")},
                "max_tokens": max_tokens,
                # a thinking teacher thinks before it writes a question too: its budget comes on top of the cap
                "question_max_tokens": (
                    gen.math.problem_max_tokens if is_math else (gen.chat.question_max_tokens if gen.chat else 0)
                )
                + (gen.sampling.thinking_token_budget or 0),
                "solve_instruction": solve_instruction(seed.language) if is_math else None,
                "question_regex": question_regex(seed.language, gen.chat.question_max_tokens)
                if seed.task == "instruct_answer" and gen.chat and self._question_form
                else None,
                "question_seed": request_seed(gen.seed, seed.key, "question") if seeded else None,
                "answer_seeds": [
                    request_seed(gen.seed, seed.key, "answer", r) if seeded else None for r in range(seed.rollouts)
                ],
                "system_prompt": system,
                **(self._turns(seed) if seed.task == "instruct_answer" and gen.chat and gen.chat.turns > 1 else {}),
                "answer_prefix": gen.code.answer_prefix if is_code and not structured else None,
                "answer_regex": layout_regex(max_tokens) if is_code and structured else None,
            }
            yield Document(text=seed.prompt, id=seed.key, metadata=meta)

    def _turns(self, seed: PromptSeed) -> dict[str, Any]:
        """What a conversation of generate.chat.turns needs: how many, the language's follow-up meta-prompt, and
        who the user is (the persona, else the language's word for the user)."""
        shipped = load_languages()[seed.language]
        turns = self.recipe.generate.chat.turns
        return {"turns": turns, "follow_up": shipped["follow_up"], "user": seed.persona or shipped["user"]}

    # ------------------------------------------------------------------ run

    def state(self, run_dir: Path) -> str:
        """The top-up rounds recorded for this run: a new round makes the stage run again."""
        rounds = load_rounds(run_dir)
        return hashlib.sha256(orjson.dumps(rounds)).hexdigest()[:16] if rounds else ""

    def run(self, inputs: dict[str, Path], outputs: dict[str, Path], work_dir: Path, ctx: RunContext) -> StageResult:
        gen = self.recipe.generate
        # round 0 is the recipe's own prompts; each top-up round has its own datatrove work folder,
        # so finished rounds are skipped by datatrove's completion markers
        skipped = _Skipped(self._answered(ctx))
        # Magpie's prompts are written first, by the teacher itself, and asked in round 0 with the recipe's own
        written = self._magpie(ctx, work_dir / "magpie") if gen.magpie else None
        own = expand_seeds(gen, self.base_dir)
        rounds = [(work_dir, skipped.filter(itertools.chain(own, written.seeds) if written else own))]
        for r, extra in enumerate(load_rounds(ctx.run_dir), start=1):
            rounds.append((work_dir / f"top-up-{r}", top_up_seeds(gen, extra, r)))
        restarts_before = sum(t.restarts for t in ctx.endpoints())
        asked = _Asked()
        for work, seeds in rounds:
            # distinct within a round; a top-up round's keys hold its number, so rounds never share a prompt
            prompts = asked.count(distinct(seeds, work / "sort-prompts"))
            self._infer(ctx, self.documents(prompts), work)
        if not asked.prompts and skipped.prompts:
            raise StageError(
                f"every one of the {skipped.prompts} prompts of generate.sources was answered in what "
                f"publish.to holds: nothing new to ask (add prompts, or set generate.answer_again: true)"
            )
        if not asked.prompts:
            raise StageError("no prompts to generate: quotas are 0 and the prompt sources are empty")
        if skipped.prompts:
            ctx.log(f"{skipped.prompts} prompts of generate.sources skipped: publish.to holds their answers")
        ctx.log(f"{asked.prompts} prompts asked, {asked.rollouts} rollouts expected")
        expected = asked.rollouts
        made = _Made()
        rows = self._rows(ctx, [work / "raw" for work, _ in rounds], made)
        # in (kind, language, id) order, whatever order the tasks finished in: a replayed chunk's rows come in
        # twice, side by side, and are written once
        with stage_writer(outputs["rows"], SAMPLE_FEATURES) as writer:
            last = None
            for row in sorted_rows(rows, ["kind", "language", "id"], SAMPLE_FEATURES, work_dir / "sort"):
                if row["id"] == last:
                    made.duplicates += 1
                    continue
                last = row["id"]
                made.add(row)
                writer.write(row)
            missing = expected - made.rows - sum(made.drops.get(r, 0) for r in _NO_QUESTION)
            if missing:  # raised inside: the shards written are removed
                raise StageError(
                    f"generation lost {missing} of {expected} rollouts (see {work_dir / 'logs'}); "
                    "run again to resume, finished requests are not sent twice"
                )
        return StageResult(
            rows_in=expected,
            rows_out=made.rows,
            output_fingerprint=fingerprint_files(writer.paths),
            drops=dict(made.drops),
            stats=GenerateStats(
                # the tokens are every round's, so the seconds are too (from the throughput files: a round found
                # done generates nothing now)
                **made.stats(active_seconds([work / THROUGHPUT for work, _ in rounds]), asked.prompts),
                top_up_rounds=len(rounds) - 1,
                teacher_restarts=sum(t.restarts for t in ctx.endpoints()) - restarts_before,
                tasks=min(gen.tasks, asked.prompts),  # never more tasks than prompts
                teacher_tokens_per_second_timeline=timeline([work / THROUGHPUT for work, _ in rounds]),
                skipped_answered_prompts=skipped.prompts,
                **({"magpie": written.stats()} if written else {}),
            ),
        )

    def _magpie(self, ctx: RunContext, work: Path) -> Written:
        """The user turns the teacher writes itself (generate.magpie), checked and deduplicated: a pass of its
        own, resumable like the others, whose kept turns are asked with round 0."""
        from transformers import AutoTokenizer

        recipe = self.recipe
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(recipe.teacher, ctx.log))
        run_inference(
            ctx.endpoints(),
            magpie_documents(recipe.generate, tokenizer),
            work,
            magpie_rollout,
            functools.partial(magpie_config, recipe),
            ctx.console,
            "writing prompts (magpie)",
            recipe.generate.records_per_chunk,
            executor=recipe.generate,
        )
        with datatrove_logs_to(work / "datatrove.log"):
            written = select(recipe.generate.magpie, JsonlReader(str(work / "raw"), compression=None).run())
        dropped = ", ".join(f"{reason} {n}" for reason, n in written.dropped.most_common())
        ctx.log(
            f"magpie: the teacher wrote {written.asked} user turns; {len(written.seeds)} kept"
            + (f" (dropped: {dropped})" if dropped else "")
            + (f", {written.surplus} past their quota" if written.surplus else "")
        )
        return written

    def _answered(self, ctx: RunContext) -> set[int]:
        """With publish.append: the prompts the target already answers, which `sources` are not asked again."""
        publish, gen = self.recipe.publish, self.recipe.generate
        if publish is None or not publish.append or gen.answer_again or not gen.sources:
            return set()
        return answered_prompts(publish, self.base_dir, RunFolder(ctx.run_dir).target_copy)

    def _infer(self, ctx: RunContext, docs: Iterable[Document], work_dir: Path) -> None:
        """The teacher's rollouts of these prompts (their times in the pass's throughput files)."""
        recipe = self.recipe
        run_inference(
            ctx.endpoints(),
            docs,
            work_dir,
            rollout,
            functools.partial(teacher_config, recipe),
            ctx.console,
            "generating",
            recipe.generate.records_per_chunk,
            whole_responses=recipe.teacher.return_routed_experts,
            executor=recipe.generate,
        )

    def _rows(self, ctx: RunContext, raws: list[Path], made: _Made) -> Iterator[dict]:
        """datatrove's documents (one per prompt) as sample rows (one per rollout), counting into `made` what
        does not become a row."""
        recipe, gen = self.recipe, self.recipe.generate
        teacher = recipe.teacher
        revision = teacher.revision or ""
        if teacher.is_builtin:
            from dataengine.teacher.builtin import build_key

            revision = f"build-{build_key(teacher.model.split(':', 1)[1], teacher.builtin)}"
        created = datetime.now(UTC).isoformat()
        gen_hash = config_hash(self, recipe)  # part of every row id: a changed recipe makes new rows
        thinking = _ReasoningTokens(teacher, ctx.log)
        with datatrove_logs_to(raws[0].parent / "datatrove.log"):
            for doc in (doc for raw in raws for doc in JsonlReader(str(raw), compression=None).run()):
                meta = doc.metadata
                for result in meta["rollout_results"]:
                    made.question_tokens += result["question_tokens"]
                    if not result["answers"]:
                        made.drops[result.get("empty_reason") or "empty_question"] += meta["rollouts"]
                        continue
                    made.question_tokens += sum(
                        f["question_tokens"] for a in result["answers"] for f in a.get("follow_ups") or []
                    )
                    thoughts = [
                        split_reasoning(a["text"], a.get("reasoning"), a["finish_reason"]) for a in result["answers"]
                    ]
                    # a problem's solutions are checked together: where its own answer cannot be read, the
                    # majority of them is the reference
                    checks = (
                        check_solutions(result.get("reference_answer"), [t.answer for t in thoughts], meta["language"])
                        if meta["kind"] == "math"
                        else [None] * len(thoughts)
                    )
                    for index, (answer, thought, checked) in enumerate(
                        zip(result["answers"], thoughts, checks, strict=True)
                    ):
                        code = parse_code_answer(thought.answer) if meta["kind"] == "code" else None
                        talk = Conversation.of(result, answer, thought)
                        last, thought = talk.last, talk.thought  # the row's answer is its last assistant turn
                        routing = _answer_routing(last)
                        made.unreadable_routing += routing is False
                        yield {
                            "id": hashlib.sha256(f"{doc.id}\x1f{index}\x1f{gen_hash}".encode()).hexdigest()[:24],
                            "messages": talk.messages,
                            "kind": meta["kind"],
                            "language": meta["language"],
                            "topic": meta["topic"],
                            "persona": meta.get("persona"),
                            "task": meta["task"],
                            "teacher_model": teacher.model,
                            "teacher_revision": revision,
                            "sampling": {
                                **gen.sampling.model_dump(include=_SENT_SAMPLING),
                                "max_tokens": meta["max_tokens"],
                            },
                            "seed": answer["seed"],
                            "rollout_index": index,
                            "finish_reason": last["finish_reason"],
                            "prompt_tokens": last["prompt_tokens"],
                            "completion_tokens": talk.completion_tokens,
                            "turn_finish_reasons": talk.finish_reasons,
                            "turn_question_finish_reasons": talk.question_finish_reasons,
                            "reasoning": thought.reasoning,
                            "reasoning_tokens": thinking.tokens(thought.reasoning, last.get("reasoning_tokens")),
                            "reasoning_closed": thought.closed,
                            "instruction": doc.text,
                            "question_finish_reason": talk.question_finish_reason,
                            "run_id": ctx.run_id,
                            "recipe_hash": recipe.fingerprint(),
                            "created_at": created,
                            "code_problem": code.problem if code else None,
                            "code_solution": code.solution if code else None,
                            "code_tests": code.tests if code else None,
                            "code_parse_error": code.parse_error if code else None,
                            "reference_answer": result.get("reference_answer"),
                            "final_answer": checked.final_answer if checked else None,
                            "answer_verified": checked.verified if checked else None,
                            "verify_reason": checked.reason if checked else None,
                            "teacher_routing": routing or None,
                        }

    def summary(self, manifest: Manifest, outputs: dict[str, Path], console: Console) -> None:
        stats = manifest.stats
        table = Table(title=f"generated: {manifest.rows_out} rows", title_justify="left")
        table.add_column("kind/language")
        table.add_column("rows", justify="right")
        for key, count in stats["rows_by_kind_language"].items():
            table.add_row(key, str(count))
        console.print(table)
        console.print(
            f"tokens: {stats['prompt_tokens']} prompt, {stats['completion_tokens']} answer, "
            f"{stats['question_tokens']} question; {stats['teacher_tokens_per_second']} teacher tokens/s "
            f"over {stats['generation_seconds']}s; "
            f"finish reasons {stats['finish_reasons']}"
            + (f"; code answers parsed {stats['code_parsed']}/{stats['code_rows']}" if stats["code_rows"] else "")
        )
        if turns := stats.get("turns"):
            console.print(
                "assistant turns per conversation: " + ", ".join(f"{n}: {rows} rows" for n, rows in turns.items())
            )
        if reasoned := stats.get("reasoning_rows"):
            console.print(
                f"reasoning: {reasoned} of {manifest.rows_out} answers, "
                f"{stats['reasoning_tokens'] / reasoned:.0f} reasoning tokens on average"
            )
        if manifest.drops:
            console.print(f"dropped: {manifest.drops}")
        if magpie := stats.get("magpie"):
            dropped = ", ".join(f"{reason} {n}" for reason, n in magpie["dropped"].items())
            console.print(
                f"magpie: {magpie['kept']} of {magpie['asked']} user turns the teacher wrote were asked"
                + (f" (dropped: {dropped})" if dropped else "")
            )
        if skipped := stats.get("skipped_answered_prompts"):
            console.print(f"skipped {skipped} prompts of generate.sources: publish.to already holds their answers")
        if restarts := stats.get("teacher_restarts"):
            console.print(f"[yellow]the teacher was restarted {restarts} time(s) during generation[/yellow]")
        console.print(f"output: {outputs['rows']}")


@dataclass
class _Skipped:
    """Prompts of `sources` whose answers the publish target already holds (`answered`), left out and counted
    once each (a prompt file may repeat one)."""

    answered: set[int]
    skipped: set[int] = field(default_factory=set)

    @property
    def prompts(self) -> int:
        return len(self.skipped)

    def filter(self, seeds: Iterable[PromptSeed]) -> Iterator[PromptSeed]:
        for seed in seeds:
            key = prompt_hash(seed.prompt) if self.answered and seed.task == "answer" else None
            if key is not None and key in self.answered:
                self.skipped.add(key)
                continue
            yield seed


@dataclass
class _Asked:
    """The prompts of a generation and the rollouts they ask for, counted as they go to the teacher."""

    prompts: int = 0
    rollouts: int = 0

    def count(self, seeds: Iterable[PromptSeed]) -> Iterator[PromptSeed]:
        for seed in seeds:
            self.prompts += 1
            self.rollouts += seed.rollouts
            yield seed


@dataclass
class _Made:
    """What was counted making the sample rows of a generation, a row at a time as they stream to the shards."""

    drops: Counter = field(default_factory=Counter)
    question_tokens: int = 0
    duplicates: int = 0  # a resumed chunk replayed from its checkpoint
    unreadable_routing: int = 0  # answers whose routed_experts could not be read: the route stage replays them
    rows: int = 0
    groups: Counter = field(default_factory=Counter)
    finish_reasons: Counter = field(default_factory=Counter)
    code_rows: int = 0
    code_parsed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    routed_rows: int = 0  # answers that came back with the experts their tokens went to
    reasoning_rows: int = 0  # answers a thinking teacher reasoned before
    turns: Counter = field(default_factory=Counter)  # assistant turns per conversation -> rows (generate.chat.turns)
    reasoning_tokens: int = 0

    def add(self, row: dict) -> None:
        self.rows += 1
        self.groups[Group.of(row)] += 1
        self.finish_reasons[row["finish_reason"]] += 1
        self.code_rows += row["kind"] == "code"
        self.code_parsed += row["kind"] == "code" and row["code_parse_error"] is None
        self.prompt_tokens += row["prompt_tokens"]
        self.completion_tokens += row["completion_tokens"]
        self.routed_rows += row["teacher_routing"] is not None
        self.reasoning_rows += row["reasoning"] is not None
        self.turns[sum(m["role"] == "assistant" for m in row["messages"])] += 1
        self.reasoning_tokens += row["reasoning_tokens"] or 0

    def stats(self, seconds: float, prompts: int) -> dict[str, Any]:
        tokens = self.completion_tokens + self.question_tokens
        return {
            "prompts": prompts,
            "rows_by_kind_language": group_counts(self.groups),
            "finish_reasons": dict(self.finish_reasons),
            "code_parsed": self.code_parsed,
            "code_rows": self.code_rows,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "question_tokens": self.question_tokens,
            "generation_seconds": round(seconds, 2),
            # every token the teacher wrote (answers and questions) per second of generation, both over every
            # round and every resumed pass (the seconds from the throughput files)
            "teacher_tokens_per_second": round(tokens / seconds, 2) if seconds > 0 else None,
            "replayed_duplicates": self.duplicates,
            "routed_rows": self.routed_rows,
            "unreadable_routing": self.unreadable_routing,
            "reasoning_rows": self.reasoning_rows,
            # only where a conversation has more than one assistant turn
            **(
                {"turns": {str(n): self.turns[n] for n in sorted(self.turns)}} if max(self.turns, default=1) > 1 else {}
            ),
            "reasoning_tokens": self.reasoning_tokens,
        }


@dataclass
class Conversation:
    """A rollout as a row holds it: one answer, or a conversation of several turns (generate.chat.turns) whose
    last assistant turn is the row's answer, as its last question is the row's question (`question_finish_reason`).
    `finish_reasons` and `question_finish_reasons` hold each turn's (null for a row of one turn), for curation
    to check every turn."""

    messages: list[dict]
    last: dict
    thought: Reasoning
    completion_tokens: int
    question_finish_reason: str | None
    finish_reasons: list[str] | None = None
    question_finish_reasons: list[str] | None = None

    @classmethod
    def of(cls, result: dict, answer: dict, thought: Reasoning) -> Conversation:
        messages = [*result["messages"], {"role": "assistant", "content": thought.answer}]
        follow_ups = answer.get("follow_ups") or []
        if not follow_ups:
            return cls(messages, answer, thought, answer["completion_tokens"], result["question_finish_reason"])
        for turn in follow_ups:
            messages += [
                {"role": "user", "content": turn["question"]},
                {"role": "assistant", "content": answer_text(turn)},
            ]
        last = follow_ups[-1]
        return cls(
            messages,
            last,
            split_reasoning(last["text"], last.get("reasoning"), last["finish_reason"]),
            sum(t["completion_tokens"] for t in [answer, *follow_ups]),
            last["question_finish_reason"],
            [t["finish_reason"] for t in [answer, *follow_ups]],
            [result["question_finish_reason"], *(t["question_finish_reason"] for t in follow_ups)],
        )


class _ReasoningTokens:
    """The tokens of a row's reasoning: the server's count (vLLM's usage, with a reasoning parser), else counted
    with the teacher's tokenizer, loaded the first time a row has reasoning and the server gave no count (a
    parser counts nothing when the chat template, not the teacher, opened the reasoning)."""

    def __init__(self, teacher: TeacherConfig, log: Callable[[str], None]) -> None:
        self.teacher, self.log, self.tokenizer = teacher, log, None

    def tokens(self, reasoning: str | None, served: int | None) -> int | None:
        if reasoning is None:
            return None
        if served:
            return served
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.teacher, self.log))
        return len(self.tokenizer(reasoning, add_special_tokens=False)["input_ids"])


def _answer_routing(answer: dict) -> str | None | bool:
    """The answer tokens' routing as vLLM returned it with the answer (base64 .npy, [answer tokens - 1, layers,
    top_k]; the answer prefix of a code prompt is part of the prompt and has none); None when the response
    carried none, False when it could not be read."""
    payload = answer.get("routed_experts")
    if payload is None:
        return None
    try:
        return encode(answer_routing(payload, answer["prompt_tokens"]))
    except ValueError:
        return False
