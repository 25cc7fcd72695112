"""`dataengine teacher serve` starts vLLM for the recipe's teacher and stops it cleanly on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import tiny_recipe

pytestmark = pytest.mark.slow


def test_serve_answers_then_stops_on_ctrl_c(tmp_path):
    recipe = tiny_recipe(tmp_path)
    text = recipe.read_text().replace("vllm: {enforce_eager: true", "vllm: {port: 18731, enforce_eager: true")
    recipe.write_text(text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dataengine.cli", "teacher", "serve", str(recipe), "-o", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if "Ctrl-C to stop" in line or not line:
                break
        assert proc.poll() is None, "serve exited before the server was ready"
        models = httpx.get("http://127.0.0.1:18731/v1/models", timeout=10).json()
        assert models["data"][0]["id"] == "builtin:smollm2-moe"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get("http://127.0.0.1:18731/v1/models", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
