"""vLLM's own request fields reach a non-local endpoint: datatrove talks to one through the OpenAI client,
whose create() refuses keyword arguments that are not OpenAI's, so they travel in extra_body."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dataengine.generate.rollout import _payload
from dataengine.generate.stage import teacher_config
from dataengine.recipe import parse_recipe
from dataengine.teacher.inference import endpoint_server

# 127.0.0.2 is loopback too, but not a name datatrove treats as local: it takes the OpenAI client path
MINIMAL = """
name: remote
teacher: {{model: teacher, endpoint: "http://127.0.0.2:{port}"}}
generate: {{chat: {{languages: [{{code: en, quota: 1}}]}}}}
"""

ANSWER = {
    "id": "c",
    "object": "chat.completion",
    "created": 0,
    "model": "teacher",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def test_continue_final_message_and_structured_outputs_reach_a_remote_endpoint(monkeypatch: pytest.MonkeyPatch):
    # the OpenAI client gets vLLM's placeholder: it starts without OPENAI_API_KEY, and never sends the user's
    monkeypatch.setenv("OPENAI_API_KEY", "sk-the-users-own")
    bodies, keys = [], []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            keys.append(self.headers["Authorization"])
            data = json.dumps(ANSWER).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        recipe = parse_recipe(MINIMAL.format(port=httpd.server_port))
        config = teacher_config(recipe, recipe.teacher.endpoint)
        assert "sk-the-users-own" not in repr(config)  # datatrove writes its config out

        async def ask(payload: dict) -> dict:
            # made inside the loop, as datatrove's runner makes it: the server's init reaches for the running loop
            server = endpoint_server(config, 0, lambda: True, whole_responses=False)
            assert server.client is not None
            return await server._make_request(payload)

        payload = _payload([{"role": "user", "content": "hi"}], 16, "r/a0", 7, prefix="### Problem\n", regex="a+")
        response = asyncio.run(ask({**payload, "model": "teacher"}))
    finally:
        httpd.shutdown()
    assert response["choices"][0]["message"]["content"] == "ok"
    (body,) = bodies
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["structured_outputs"] == {"regex": "a+"}
    assert body["messages"][-1] == {"role": "assistant", "content": "### Problem\n"} and body["seed"] == 7
    assert keys == ["Bearer EMPTY"]  # vLLM's placeholder for a server without --api-key
