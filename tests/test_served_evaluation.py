"""The teacher's side of evaluation from a served teacher's logprobs (`teacher/logprobs.py`), against a stand-in
of vLLM's completions endpoint on loopback; the real server's figure is checked against the teacher loaded in
transformers in tests/test_e2e_distill.py."""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer

import pytest

from dataengine.errors import StageError
from dataengine.teacher.logprobs import answer_nll
from tests.conftest import JsonHandler

# the logprob the stand-in gives every answer token: token t gets -t / 10
SEQUENCES = [[5, 6, 7, 8, 9], [3, 4, 10, 11]]
STARTS = [3, 2]


class StandinVLLM(JsonHandler):
    """vLLM's completions endpoint with prompt_logprobs: at each position the top-1 (token 1) and, unless
    `top_only`, the token that is there, as vLLM returns it."""

    top_only = False

    def do_GET(self):  # /health and /v1/models, which TRL's client asks first
        self._send(200, json.dumps({"data": [{"id": "teacher"}]}).encode())

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        choices = []
        for sequence in body["prompt"]:
            positions = [None]
            for token in sequence[1:]:
                given = {"1": {"logprob": -0.01, "rank": 1}}
                if not self.top_only:
                    given[str(token)] = {"logprob": -token / 10, "rank": 2}
                positions.append(given)
            choices.append({"index": len(choices), "text": "x", "prompt_logprobs": positions})
        self._send(200, json.dumps({"choices": choices}).encode())


@pytest.fixture
def standin():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandinVLLM)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    StandinVLLM.top_only = False


def test_the_teachers_loss_on_each_answer_comes_from_the_logprobs_of_the_tokens_that_are_there(standin):
    nll = answer_nll(standin, SEQUENCES, STARTS, max_concurrent_requests=2)
    assert nll == pytest.approx([(8 + 9) / 10, (10 + 11) / 10])  # answer tokens only, never the prompt's


def test_an_endpoint_that_gives_only_the_top_k_is_refused_with_what_to_do(standin):
    StandinVLLM.top_only = True
    with pytest.raises(StageError) as refused:
        answer_nll(standin, SEQUENCES, STARTS, max_concurrent_requests=1)
    message = str(refused.value)
    assert f"the teacher at {standin} did not return the logprob of every answer token (got 0 of 2)" in message
    assert "train.evaluate.teacher: local" in message
