"""A run never downloads the builtin teacher's weights, and an endpoint that goes away is waited for."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from dataengine.errors import StageError
from dataengine.recipe import parse_recipe
from dataengine.teacher.builtin import BUILTIN_MODELS, _cached_gguf, _cached_wheel
from dataengine.teacher.server import STRUCTURED_OUTPUTS, TeacherEndpoint, free_port, server_command

RECIPE = """
name: t
teacher:
  model: builtin:smollm2-moe
  {extra}
generate:
  chat:
    languages:
      - {{code: en, quota: 2}}
"""


def _validate(recipe: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {"DATAENGINE_CACHE": str(cache), "PATH": "/usr/bin:/bin", "HOME": str(cache), "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-m", "dataengine.cli", "validate", str(recipe)], capture_output=True, text=True, env=env
    )


def test_missing_weights_fail_validation_and_name_the_command_that_fetches_them(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(extra=""))
    done = _validate(recipe, tmp_path / "empty-cache")
    assert done.returncode == 2, done.stderr
    assert "dataengine teacher build" in done.stderr and "teacher.builtin.source" in done.stderr
    assert not (tmp_path / "empty-cache" / "wheels").exists()  # nothing was downloaded


def test_a_local_wheel_is_used_and_a_missing_one_is_named(tmp_path):
    wheel = _cached_wheel(BUILTIN_MODELS["smollm2-moe"])
    if wheel is None:
        pytest.fail("the builtin teacher's wheel is not in the cache: `make test` fetches it (make teacher)")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(extra=f"builtin: {{source: {wheel}}}"))
    assert _validate(recipe, tmp_path / "empty-cache").returncode == 0
    recipe.write_text(RECIPE.format(extra="builtin: {source: ./nowhere.whl}"))
    done = _validate(recipe, tmp_path / "empty-cache")
    assert done.returncode == 2 and f"teacher.builtin.source: file not found: {tmp_path / 'nowhere.whl'}" in done.stderr


@pytest.mark.slow
def test_teacher_build_prints_the_folder_and_no_library_bars(tmp_path):
    """`make demo`'s set-up step shows what the engine says, not transformers' weight-loading and shard-writing
    bars (a build, ~30 s)."""
    gguf = _cached_gguf(BUILTIN_MODELS["smollm2-moe"])
    if not gguf.is_file():
        pytest.fail("the builtin teacher's weights are not in the cache: `make test` fetches them (make teacher)")
    recipe = tmp_path / "r.yaml"  # the cache is empty, so it builds; two experts, the smaller build
    recipe.write_text(RECIPE.format(extra=f"builtin: {{source: {gguf}, num_experts: 2}}"))
    cache = tmp_path / "cache"
    env = {"DATAENGINE_CACHE": str(cache), "PATH": "/usr/bin:/bin", "HOME": str(cache), "COLUMNS": "400"}
    build = [sys.executable, "-m", "dataengine.cli", "teacher", "build", str(recipe)]
    done = subprocess.run(build, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder.parent == cache / "models" and (folder / "config.json").is_file()
    assert "building builtin teacher smollm2-moe (2 copies experts, top-2)" in done.stdout
    assert "Loading weights" not in done.stderr and "Writing model shards" not in done.stderr, done.stderr
    # the dense parent was dequantised once into the cache, for the students cut from it and the next build
    (dense,) = (cache / "models").glob("SmolLM2-135M-Instruct.Q4_1-dense-*")
    assert "dequantising the dense parent SmolLM2-135M-Instruct.Q4_1.gguf once" in done.stdout
    assert (dense / "dataengine_dense.json").is_file() and (dense / "model.safetensors").is_file()
    # built already (make demo and make test ask every time): the folder, before any library is loaded
    (cache / "build.log").unlink()
    again = subprocess.run(build, capture_output=True, text=True, env=env)
    assert again.returncode == 0 and again.stdout.strip() == str(folder), again.stdout + again.stderr
    assert not (cache / "build.log").exists()


def _endpoint(port: int, attempts: int) -> TeacherEndpoint:
    extra = f"endpoint: http://127.0.0.1:{port}\n  recovery: {{max_attempts: {attempts}, backoff_s: 0.2}}"
    recipe = parse_recipe(RECIPE.format(extra=extra), "r.yaml")
    lines: list[str] = []
    endpoint = TeacherEndpoint(recipe.teacher, Path("unused.log"), lines.append)
    endpoint.lines = lines
    return endpoint


class _Models(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.end_headers()
        self.wfile.write(b'{"data": []}')

    def log_message(self, *args: object) -> None:
        pass


def test_an_endpoint_that_comes_back_is_waited_for():
    port = free_port("127.0.0.1")
    endpoint = _endpoint(port, attempts=4)
    server: list[HTTPServer] = []

    def come_back() -> None:
        time.sleep(0.5)
        server.append(HTTPServer(("127.0.0.1", port), _Models))
        server[0].serve_forever()

    threading.Thread(target=come_back, daemon=True).start()
    try:
        assert endpoint.recover("Connection refused") is True
        assert "is not answering" in endpoint.lines[0] and "answers again" in endpoint.lines[-1]
        assert endpoint.recover("a bad request") is False  # healthy: the failure was not the teacher's
    finally:
        server[0].shutdown()


def test_an_endpoint_that_stays_away_fails_with_one_clear_message():
    endpoint = _endpoint(free_port("127.0.0.1"), attempts=2)
    with pytest.raises(StageError, match=r"did not answer after 2 attempts \(teacher.recovery\).*run again"):
        endpoint.recover("Connection refused")
    assert len(endpoint.lines) == 2


def test_the_batch_throughput_knobs_reach_the_vllm_command():
    chat = "generate: {chat: {languages: [{code: en, quota: 1}]}}\n"
    knobs = (
        "{max_num_seqs: 256, max_num_batched_tokens: 8192, enable_prefix_caching: false, gpu_memory_utilization: 0.9}"
    )
    recipe = parse_recipe(f"name: t\nteacher: {{model: m, vllm: {knobs}}}\n" + chat)
    cmd = server_command(recipe.teacher, "/models/m", 8000)
    flags = " ".join(cmd)
    assert "--max-num-seqs 256" in flags and "--max-num-batched-tokens 8192" in flags
    assert "--no-enable-prefix-caching" in cmd and "--gpu-memory-utilization 0.9" in flags
    # left unset, vLLM's defaults hold: no flag is passed
    plain = server_command(parse_recipe("name: t\nteacher: {model: m}\n" + chat).teacher, "/models/m", 8000)
    assert not [f for f in plain if "prefix-caching" in f or "batched-tokens" in f or "num-seqs" in f]


def test_the_servers_structured_outputs_allow_no_newlines_unless_the_recipe_says_otherwise():
    """So that a small model under a JSON schema cannot write newlines between keys and values until max_tokens;
    a recipe's own `--structured-outputs-config` comes after the engine's, and vLLM takes the last."""
    chat = "generate: {chat: {languages: [{code: en, quota: 1}]}}\n"
    cmd = server_command(parse_recipe("name: t\nteacher: {model: m}\n" + chat).teacher, "/models/m", 8000)
    assert cmd[cmd.index("--structured-outputs-config") + 1] == STRUCTURED_OUTPUTS
    own = "{model: m, vllm: {extra_args: [--structured-outputs-config.backend, guidance]}}"
    cmd = server_command(parse_recipe(f"name: t\nteacher: {own}\n" + chat).teacher, "/models/m", 8000)
    assert cmd.index("--structured-outputs-config") < cmd.index("--structured-outputs-config.backend")
