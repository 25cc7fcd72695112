"""Where each task of a stage sends its requests, and running a stage's tasks until they are all done.

A stage that calls the teacher (generate, judge, score) runs as datatrove tasks on the recipe's executor. Task
`rank` talks to one of the run's endpoints (`endpoints[rank % len]`: the recipe's pool, or the one server the
run started), or, on Ray and Slurm without endpoints, to a vLLM server it starts itself on its own node and that
dies with it. A task whose endpoint stops answering fails alone; the run then recovers that endpoint (restarts
our server, waits for a lost one) and runs the unfinished tasks again, from their checkpoints.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dataengine.errors import StageError
from dataengine.executors import FAILURES, failure, record_failure, run_tasks
from dataengine.recipe import ExecutorSettings, TeacherConfig
from dataengine.teacher.server import TeacherEndpoint, TeacherServer, answers

# Health(): whether the task's endpoint still answers (checked every few seconds while requests are in flight)
Health = Callable[[], bool]
WATCH_S = 0.5  # how often the progress bar looks at what the tasks have written


@dataclass(frozen=True)
class TaskTeacher:
    """What task `rank` talks to: a running server of the pool (`urls[rank % len]`), or, with `own`, a server
    the task starts itself (its log in `log_dir`). Plain data: it travels to Ray workers and Slurm jobs."""

    urls: tuple[str, ...] = ()
    health_urls: tuple[str, ...] = ()
    own: TeacherConfig | None = None
    log_dir: str = ""
    logs: str = ""  # the pass's datatrove logging folder, where a failed task says why (`executors.failure`)

    @contextlib.contextmanager
    def open(self, rank: int) -> Iterator[tuple[str, Health]]:
        """The task's endpoint (root URL) and its health check, for as long as the task runs. A task that fails
        records why, wherever it runs (on Ray and Slurm the run sees only that it did not finish)."""
        try:
            if self.own is None:
                i = rank % len(self.urls)
                yield self.urls[i], functools.partial(answers, self.health_urls[i], 2.0)
                return
            with TeacherServer(self.own, Path(self.log_dir) / f"teacher-{rank:05d}.log") as server:
                yield server.base_url, server.alive
        except Exception as exc:
            if self.logs:
                record_failure(Path(self.logs), rank, exc)
            raise


def starts_own(teacher: TeacherConfig, settings: ExecutorSettings) -> bool:
    """Tasks on Ray or Slurm start a server each when the recipe names none: the teacher lives on their nodes."""
    return settings.executor != "local" and not teacher.urls


def run_until_done(
    endpoints: list[TeacherEndpoint],
    settings: ExecutorSettings,
    make_pipeline: Callable[[TaskTeacher], list],
    tasks: int,
    work_dir: Path,
    what: str,
) -> None:
    """Run `make_pipeline(teacher)` as `tasks` datatrove tasks (logs in `<work_dir>/logs`) until every task has
    finished: after a pass with unfinished tasks, the endpoints those tasks used are recovered and the
    unfinished tasks run again. Raises StageError when a failure is not the teacher's or recovery gives up;
    finished tasks (and the finished chunks of the others) are kept for the next run."""
    if _finished(work_dir):
        return
    _same_tasks(work_dir, tasks, what)
    teacher = endpoints[0].teacher
    own, logs, waits = starts_own(teacher, settings), work_dir / "logs", 0
    while True:
        shutil.rmtree(logs / FAILURES, ignore_errors=True)  # an earlier pass's failures are not this one's
        if own:
            plan = TaskTeacher(own=teacher, log_dir=str(work_dir / "servers"), logs=str(logs))
        else:
            used = endpoints[: min(len(endpoints), tasks)]
            for endpoint in used:
                endpoint.url()  # starts our own server on first use
                # datatrove would poll an endpoint that does not answer for minutes before its first request
                if not endpoint.healthy():
                    endpoint.recover("it does not answer")
            plan = TaskTeacher(tuple(e.url() for e in used), tuple(e.health_url() for e in used), logs=str(logs))
        # the work folder names the Slurm job: generate, score, judge, a top-up round
        unfinished = run_tasks(settings, work_dir.name, make_pipeline(plan), tasks, logs)
        if not unfinished:
            return
        why = failure(logs, unfinished)
        if own:
            # each task's server died with it: a new pass starts new ones
            waits += 1
            if waits > teacher.recovery.max_attempts:
                raise StageError(
                    f"{what}: {len(unfinished)} of {tasks} tasks failed {waits} time(s) (teacher.recovery."
                    f"max_attempts: {teacher.recovery.max_attempts}); the last failure: {why}. Servers' logs: "
                    f"{work_dir / 'servers'}. Finished requests are kept: run again to resume"
                )
            time.sleep(teacher.recovery.backoff_s * 2 ** (waits - 1))
            continue
        lost = sorted({rank % len(plan.urls) for rank in unfinished})
        # recover() raises once an endpoint stays away; False means it answers: the failure is not the teacher's
        if not [i for i in lost if endpoints[i].recover(why)]:
            raise StageError(f"{what} failed: {why}\nlog: {logs}; run again to resume")


def _recorded_tasks(work_dir: Path) -> int | None:
    """The tasks of the pass begun in `work_dir`; a pass an earlier version of dataengine began ran one."""
    record = work_dir / "tasks"
    if record.is_file():
        return int(record.read_text())
    return 1 if any((work_dir / part).exists() for part in ("raw", "checkpoints", "logs")) else None


def _finished(work_dir: Path) -> bool:
    """Every task of the recorded pass has datatrove's completion marker: nothing to run, whatever `tasks` says."""
    tasks, done = _recorded_tasks(work_dir), work_dir / "logs" / "completions"
    return tasks is not None and all((done / f"{rank:05d}").is_file() for rank in range(tasks))


def _same_tasks(work_dir: Path, tasks: int, what: str) -> None:
    """datatrove keeps each task's checkpoints by rank and resumes a task by the position of its documents, and
    a task's share of the work follows from the number of tasks: an unfinished pass resumes only on as many
    tasks as it started with, and only if this version ordered its documents."""
    before, record = _recorded_tasks(work_dir), work_dir / "tasks"
    if before is not None and not record.is_file():
        raise StageError(
            f"{what}: {work_dir} holds an unfinished pass an earlier version of dataengine began (it ordered the "
            "documents another way, so it cannot be resumed); delete that folder to start the pass over"
        )
    if before is not None and before != tasks:
        raise StageError(
            f"{what} of this run started on {before} task(s) and did not finish; resume it with tasks: {before}, "
            f"or delete {work_dir} to start it over on {tasks}"
        )
    work_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(str(tasks))


@contextlib.contextmanager
def watching(look: Callable[[], None]) -> Iterator[None]:
    """Call `look()` every WATCH_S while the block runs, and once after: tasks may run in other processes (or on
    other nodes), so a stage's progress bar follows the files they write instead of hearing from them."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(WATCH_S):
            look()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        look()
