"""The `score` block: the teacher's top-k logprobs on the kept rows."""

from __future__ import annotations

from pydantic import Field

from dataengine.recipe.base import PACE
from dataengine.recipe.executor import ExecutorSettings


class ScoreConfig(ExecutorSettings):
    """The teacher's top-k logprobs for every answer token of the kept rows (vLLM `prompt_logprobs`)."""

    top_k: int = Field(20, ge=1, le=1000, description="logprobs kept per token; at most teacher.vllm.max_logprobs")
    batch_size: int = Field(8, ge=1, description="sequences per request; also the resumable unit")
    max_concurrent_requests: int = Field(
        4, ge=1, description="requests in flight to the teacher", json_schema_extra=PACE
    )
