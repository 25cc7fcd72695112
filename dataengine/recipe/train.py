"""The `train` block: the student and where it starts (a model, the teacher's experts merged, pruning), the
trainer's settings of each phase (SFT, distillation, DPO), the held-out evaluation and `accelerate launch`."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from dataengine.recipe.base import ADDED, LOGGING, FolderName, StrictModel


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
    """A student made from the teacher's own experts (Mixtral- and Qwen3-MoE-architecture teachers), scored once
    on the run's rows (`expert_score`). By default a dense student at the teacher's active size: the teacher's
    embeddings, attention, norms and tokenizer, each layer's experts merged into one MLP (the dense sibling
    architecture, Mistral or Qwen3); merging an upcycled MoE's identical experts gives back its dense parent
    exactly. With `keep_experts`, an MoE student instead: the teacher with fewer experts per layer."""

    merge_experts: Literal["routing", "uniform", "top"] = Field(
        "routing",
        description="weights of the merge: routing = each expert's `expert_score`, uniform, or top = the "
        "highest-scoring expert alone",
    )
    expert_score: Literal["frequency", "reap"] = Field(
        "frequency",
        description="how much each expert matters: frequency = its share of the rows' routing (the routing map's "
        "load over the kept rows' answer tokens where the recipe routes, else counted over `sample_rows` training "
        "rows' prompt and answer tokens); reap = REAP's mean of gate weight x output norm over the tokens routed "
        "to it, on `sample_rows` training rows",
        json_schema_extra=ADDED,
    )
    keep_experts: int | None = Field(
        None,
        ge=1,
        description="an MoE student: keep this many experts per layer, the highest by `expert_score`, with their "
        "router rows (top-k capped at it); null merges into a dense student",
        json_schema_extra=ADDED,
    )
    sample_rows: int = Field(
        64, ge=1, description="training rows the experts are scored on, where they are", json_schema_extra=ADDED
    )

    @model_validator(mode="after")
    def _merge_or_keep(self) -> FromTeacherConfig:
        # by value: a recipe read back from a run folder's recipe.json has every key, merge_experts' default too
        if self.keep_experts is not None and self.merge_experts != "routing":
            raise ValueError(
                f"merge_experts: {self.merge_experts} merges into a dense student, keep_experts keeps an MoE: give one"
            )
        return self


class StudentConfig(StrictModel):
    name: FolderName = Field("student", description="folder under students/ that receives the final model")
    model: str | None = Field(None, description="Hub id, local folder or builtin:<name> to start from")
    revision: str | None = Field(None, description="Hub revision of `model`")
    from_teacher: FromTeacherConfig | None = Field(
        None, description="start from the teacher's experts: merged into a dense model, or fewer of them kept"
    )
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
    teacher: Literal["served", "local"] | None = Field(
        "served",
        description="the teacher's row beside the student's: its perplexity on its own held-out answers and the "
        "share of them that passed curation's code and language checks. served: from the logprobs of the run's "
        "teacher (the endpoint, or the vLLM server the run starts), as scoring asks for them; local: loads it in "
        "transformers in the evaluating process (`plan` says how much memory); null skips it. true and false "
        "read as served and null",
    )
    compare_inits: list[StudentConfig] = Field(
        default_factory=list,
        description="other starts, each a `train.student` block labelled by its `name`, measured untrained on the "
        "held-out rows beside the student (KL, perplexity): what each choice of init costs",
    )

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_switch(cls, value: object) -> object:
        # the field was a switch before `served` existed: recipes that say true or false keep their meaning
        return {True: "served", False: None}.get(value, value) if isinstance(value, bool) else value

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


# how a training conversation carries a thinking teacher's reasoning (rows/reasoning.py)
ReasoningFormat = Literal["think_tags", "template"]


class TrainConfig(StrictModel):
    student: StudentConfig = Field(description="the model that learns")
    reasoning_format: ReasoningFormat = Field(
        "think_tags",
        description="how the student learns a thinking teacher's reasoning (rows with `reasoning`), in SFT, scoring "
        "and evaluation alike: `think_tags` puts it before the answer in the assistant turn, in <think>…</think>; "
        "`template` gives it to the chat template as the turn's `reasoning_content` (templates with a thinking "
        "section, e.g. Qwen3's; refused for a template that would drop it)",
        json_schema_extra=ADDED,
    )
    sft: SFTSettings | None = Field(SFTSettings(), description="sequence-level distillation; null skips it")
    distill: DistillSettings | None = Field(None, description="logit distillation after SFT; null skips it")
    dpo: DPOSettings | None = Field(
        None, description="preference optimisation on the judge's pairs, after the phases above; null skips it"
    )
    evaluate: EvaluateSettings = Field(EvaluateSettings(), description="held-out split and evaluation")
    launch: LaunchSettings | None = Field(
        None,
        # not output-neutral: the processes multiply the global batch
        description="run each phase through `accelerate launch` on several processes; null: in this process",
    )

    @model_validator(mode="after")
    def _something_to_train(self) -> TrainConfig:
        if (self.sft is None or not self.sft.enabled) and self.distill is None and self.dpo is None:
            raise ValueError("nothing to train: enable `sft` or set `distill` or `dpo`")
        return self
