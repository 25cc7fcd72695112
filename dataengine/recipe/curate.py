"""The `curate` block: the filters on the teacher's answers (with filters of your own), the code checks, dedup,
decontamination, and the blocks of the stages curation feeds (`judge`, `balance`)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from dataengine.recipe.base import ADDED, PACE, StrictModel, http_url, stage_block
from dataengine.recipe.executor import ExecutorSettings


class FilterSwitch(StrictModel):
    enabled: bool = Field(True, description="run this step")


class LengthConfig(StrictModel):
    enabled: bool = Field(True, description="run this step")
    min_chars: int = Field(16, ge=0, description="shorter answers are dropped (too_short)")
    max_chars: int = Field(20000, ge=1, description="longer answers are dropped (too_long)")


class RefusalConfig(StrictModel):
    enabled: bool = Field(True, description="run this step")
    extra_phrases: list[str] = Field(default_factory=list, description="more phrases, matched in every language")


class QuestionCheckConfig(StrictModel):
    enabled: bool = Field(True, description="run this step")
    max_echo: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description="a generated question sharing more than this share of its word trigrams (character trigrams "
        "in scripts without spaces) with the meta-prompt, less its topic and persona, echoes it "
        "(question_echoes_prompt)",
    )


class LanguageCheckConfig(StrictModel):
    enabled: bool = Field(True, description="run this step")
    min_confidence: float = Field(0.5, ge=0.0, le=1.0, description="below this the answer is dropped as uncertain")


class ReasoningCheckConfig(StrictModel):
    """A thinking teacher's reasoning (the row's `reasoning`); rows without reasoning pass."""

    enabled: bool = Field(True, description="run this step")
    max_tokens: int | None = Field(
        None, ge=1, description="reasoning longer than this many tokens is dropped (reasoning_too_long); null: no cap"
    )
    same_language: bool = Field(
        False,
        description="the reasoning must be in the language asked, like the answer (reasoning_wrong_language); "
        "off by default: many teachers reason in English whatever the language of the question",
    )
    min_copied_chars: int = Field(
        64,
        ge=1,
        description="an answer of at least this many characters that the reasoning already holds verbatim is "
        "dropped (answer_copied_from_reasoning): the student would learn to say everything twice",
    )


class ProseQualityConfig(StrictModel):
    """Gopher-style quality rules, on chat answers in spaced scripts only (never on code)."""

    enabled: bool = Field(True, description="run this step")
    min_words: int = Field(5, ge=0, description="fewer words: dropped (gopher_short_doc)")
    max_words: int = Field(5000, ge=1, description="more words: dropped (gopher_long_doc)")


def snake_case(name: str) -> str:
    """NoDigits -> no_digits, HTTPCheck -> http_check: a class's name as a step name."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _import_target(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*", value, re.ASCII):
        raise ValueError("must be module:attribute, e.g. my_filters:NoDigits")
    return value


# the steps curation ships, whose names a custom filter must not take: its drops would be counted as theirs
# (with the fields of FiltersConfig); dedup's rejected files are recognised by these prefixes
_SHIPPED_STEPS = ("code_parse", "code_tests", "decontamination")
_DEDUP_STEPS = ("exact_dedup", "near_dedup")


class CustomFilter(StrictModel):
    """A datatrove filter of your own: a `BaseFilter` subclass, built with `args`, run after the shipped filters
    and before decontamination. Its `filter(doc)` sees the answer as `doc.text` and the row as `doc.metadata`;
    the rows it drops land in rejected/ with its name as the step and its reason. `dataengine validate` imports
    and builds it, so keep its constructor cheap (load models in `filter`)."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    class_: Annotated[str, AfterValidator(_import_target)] = Field(
        alias="class",
        description="module:attribute, importable from the recipe's folder or the environment "
        "(my_filters:NoDigits is my_filters.py next to the recipe); the module file under the recipe's folder "
        "is part of curation's key",
    )
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of its constructor")
    name: str | None = Field(
        None, description="the step in rejected/ and the report; default the class name in snake_case (no_digits)"
    )

    @field_validator("name")
    @classmethod
    def _step_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z][a-z0-9_]*", value):
            raise ValueError("a step name is lowercase letters, digits or '_', starting with a letter")
        return value

    @property
    def step(self) -> str:
        return self.name or snake_case(self.class_.rsplit(":", 1)[1])


class FiltersConfig(StrictModel):
    reasoning: ReasoningCheckConfig = Field(
        ReasoningCheckConfig(),
        description="a thinking teacher's reasoning: never closed (reasoning_unclosed), no answer after it "
        "(answer_missing), over its budget, in another language, or holding the answer verbatim",
        json_schema_extra=ADDED,
    )
    math: FilterSwitch = Field(
        FilterSwitch(),
        description="math rows: a problem cut off by its cap (problem_truncated), a solution math-verify did not "
        "verify (its verify_reason)",
        json_schema_extra=ADDED,
    )
    truncated: FilterSwitch = Field(FilterSwitch(), description="finish_reason=length or an unclosed code fence")
    length: LengthConfig = Field(LengthConfig(), description="empty, too short, too long answers")
    refusal: RefusalConfig = Field(RefusalConfig(), description="refusals, AI boilerplate, identity leaks")
    question: QuestionCheckConfig = Field(
        QuestionCheckConfig(),
        description="generated questions that are empty, address the user or echo the meta-prompt; answers that "
        "only ask back (phrase lists per language in dataengine/data/questions.yaml)",
    )
    repetition: FilterSwitch = Field(FilterSwitch(), description="datatrove's GopherRepetitionFilter, chat answers")
    language: LanguageCheckConfig = Field(LanguageCheckConfig(), description="answer in the language asked")
    prose_quality: ProseQualityConfig = Field(ProseQualityConfig(), description="Gopher quality, chat only")
    custom: list[CustomFilter] = Field(
        default_factory=list, description="your own datatrove filters, in this order, after the shipped ones"
    )

    @model_validator(mode="after")
    def _custom_steps_have_names_of_their_own(self) -> FiltersConfig:
        taken = {name: "a shipped step" for name in (*type(self).model_fields, *_SHIPPED_STEPS) if name != "custom"}
        for i, entry in enumerate(self.custom):
            step = entry.step
            if step in taken or step.startswith(_DEDUP_STEPS):
                other = taken.get(step, "dedup's (exact_dedup*, near_dedup*)")
                raise ValueError(f"custom[{i}]: step name {step!r} is already {other}; give it a `name` of its own")
            taken[step] = f"the step of custom[{i}]"
        return self


class CodeCheckConfig(StrictModel):
    """Code rows must parse and pass their own tests in the sandbox (a subprocess with limits)."""

    enabled: bool = Field(True, description="run this step")
    timeout_s: float = Field(10.0, gt=0, description="wall clock per run")
    cpu_s: int = Field(10, ge=1, description="CPU seconds (RLIMIT_CPU)")
    memory_mb: int = Field(512, ge=64, description="address space (RLIMIT_AS)")
    max_output_bytes: int = Field(16384, ge=256, description="output read back; more kills the run")
    max_processes: int = Field(16, ge=1, description="processes of the sandbox user (RLIMIT_NPROC)")
    # not output-neutral: the sandbox's timeout is wall clock, so more runs at once can fail a slow test
    parallel: int = Field(2, ge=1, description="sandboxed runs at a time")
    require_isolation: bool = Field(
        False, description="fail instead of warning when the bwrap process boundary cannot run here"
    )


class MinhashSettings(StrictModel):
    enabled: bool = Field(True, description="run this step")
    n_grams: int = Field(5, ge=1, description="word n-grams per shingle")
    num_buckets: int = Field(14, ge=1, description="LSH bands")
    hashes_per_bucket: int = Field(8, ge=1, description="rows per band; with num_buckets sets the threshold")


class DedupConfig(StrictModel):
    """Exact (normalised text) then MinHash near-duplicate removal over prompt + answer, per language."""

    exact: bool = Field(True, description="drop exact copies of prompt + answer")
    minhash: MinhashSettings = Field(MinhashSettings(), description="near-duplicates (datatrove MinhashDedup*)")
    reference: list[str] = Field(
        default_factory=list, description="folders of earlier curated/published parquet to dedup against"
    )


class BenchmarkFile(StrictModel):
    path: str = Field(description=".jsonl, .jsonl.gz or .parquet")
    field: str = Field("prompt", description="column holding the benchmark text")
    name: str | None = Field(None, description="label recorded on contaminated rows; default the file name")


class DecontaminationConfig(StrictModel):
    enabled: bool = Field(True, description="run this step")
    n: int = Field(8, ge=3, description="n-gram size, lowercased words")
    builtin: list[Literal["humaneval", "math_probe"]] = Field(
        ["humaneval"],
        description="benchmarks shipped with the package: HumanEval; math_probe, 24 grade-school word problems "
        "the project wrote (no registry package ships GSM8K or MGSM: give their files for those)",
    )
    files: list[BenchmarkFile] = Field(default_factory=list, description="your own benchmark files")


class BalanceConfig(StrictModel):
    """Routing-aware selection, after the route stage: of the kept rows, the subset whose combined expert load
    is as even as possible (greedy: each step adds the row that leaves the lowest mean per-layer CV of load;
    with many rows it weighs a random sample of the remaining ones per step). The rows left out go to
    `balance_rejected/` with reason `expert_balance`; later stages read `balanced/`."""

    by: Literal["experts"] = Field("experts", description="what to balance: the teacher's expert load")
    rows: int | None = Field(None, ge=1, description="how many kept rows to select")
    fraction: float | None = Field(None, gt=0, le=1, description="or which share of the kept rows to select")

    @model_validator(mode="after")
    def _one_size(self) -> BalanceConfig:
        if (self.rows is None) == (self.fraction is None):
            raise ValueError("give exactly one of `rows` or `fraction`")
        return self


class PairsConfig(StrictModel):
    """Of the judged rollouts of each prompt (generate.*.rollouts >= 2), the best answer the judge kept
    against the worst, in TRL's preference format (`prompt`, `chosen`, `rejected`), written to `preference/`,
    published as the `preference` config and trained on by `train.dpo`. For code, an answer whose tests
    passed beats one whose tests failed or did not run, whatever the scores (with curation's code checks on,
    every judged code row passed). Pairs are made from every row the judge scored, before `curate.balance`
    selects among the kept ones."""

    min_margin: float = Field(1.0, ge=0, le=4, description="least difference of mean score between chosen and rejected")


class JudgeConfig(StrictModel):
    """A model rates every row curation kept against a rubric (helpfulness, correctness, instruction following,
    and the language asked; for code, whether the tests are meaningful), from 1 to 5 each, with a one-sentence
    rationale. The verdict is requested under a JSON schema (OpenAI's `response_format`, vLLM's structured
    outputs), so it parses; a row whose verdict still cannot be read after `attempts` requests, or whose
    requests keep failing, is rejected with `judge_error`, never kept unjudged. Rows whose mean score is below
    `threshold` go to `judge_rejected/` with reason `judge_low`; later stages read `judged/`."""

    model: str | None = Field(
        None, description="served model name of a separate judge at `endpoint`; null: the run's teacher judges"
    )
    endpoint: str | None = Field(
        None, description="OpenAI-compatible server of the separate judge (needs `model`); it must honour JSON schemas"
    )
    threshold: float = Field(
        3.0, ge=1, le=5, description="rows whose mean score is below this are rejected (`judge_low`); 1 keeps all"
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="the judge's sampling temperature; 0 is greedy")
    max_tokens: int = Field(
        512,
        ge=32,
        description="verdict length cap: the rationale and the scores (a Chinese character can take 3 tokens); "
        "a verdict cut here does not read",
    )
    rationale_chars: int = Field(160, ge=20, description="the rationale's length cap (held by the JSON schema)")
    attempts: int = Field(
        3,
        ge=1,
        description="requests per row before an unreadable verdict rejects it (each retry a new request, sampled "
        "at temperature 0.7 at least)",
    )
    max_concurrent_requests: int = Field(8, ge=1, description="verdicts requested at once", json_schema_extra=PACE)
    # not output-neutral: a verdict that keeps timing out rejects its row (judge_error)
    request_timeout_s: float = Field(300.0, gt=0, description="one verdict request's timeout")
    pairs: PairsConfig | None = Field(
        None, description="preference pairs from the verdicts on rollouts of one prompt; null: none"
    )

    @field_validator("endpoint")
    @classmethod
    def _http_endpoint(cls, value: str | None) -> str | None:
        return http_url(value)

    @model_validator(mode="after")
    def _endpoint_with_model(self) -> JudgeConfig:
        if (self.model is None) != (self.endpoint is None):
            raise ValueError(
                "a separate judge needs both `model` (its served name) and `endpoint` (its URL); "
                "leave both out to have the teacher judge"
            )
        return self


class CurateConfig(ExecutorSettings):
    filters: FiltersConfig = Field(FiltersConfig(), description="filters on the teacher's answers")
    code: CodeCheckConfig = Field(CodeCheckConfig(), description="code rows: parse, then own tests in the sandbox")
    dedup: DedupConfig = Field(DedupConfig(), description="exact and near-duplicate removal")
    decontamination: DecontaminationConfig = Field(DecontaminationConfig(), description="benchmark n-gram overlap")
    balance: BalanceConfig | None = Field(
        None,
        description="select kept rows for an even expert load (needs a `route` block); null keeps them all",
        json_schema_extra=stage_block("balance"),
    )
    judge: JudgeConfig | None = Field(
        None,
        description="a model rates each kept row; rows under the threshold are rejected. null: no judge",
        json_schema_extra=stage_block("judge"),
    )
