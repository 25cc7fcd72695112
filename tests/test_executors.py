"""The task executors (`dataengine/executors.py`) and the task loop (`teacher/tasks.py`), without a teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
from datatrove.data import Document

from dataengine.errors import StageError
from dataengine.executors import failure, run_tasks
from dataengine.recipe import ExecutorSettings, TeacherConfig
from dataengine.teacher.inference import Shard
from dataengine.teacher.server import TeacherEndpoint
from dataengine.teacher.tasks import TaskTeacher, run_until_done


def _fail_on_rank_one(data, rank: int = 0, world_size: int = 1):
    if rank == 1:
        raise RuntimeError("the endpoint of task 1 went away")
    yield from data or []


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_task_leaves_its_siblings_to_finish(tmp_path, workers):
    settings = ExecutorSettings(tasks=3, workers=workers)
    unfinished = run_tasks(settings, "t", [_fail_on_rank_one], 3, tmp_path / "logs")
    assert unfinished == [1]
    assert sorted(p.name for p in (tmp_path / "logs" / "completions").iterdir()) == ["00000", "00002"]
    assert failure(tmp_path / "logs", unfinished) == "RuntimeError: the endpoint of task 1 went away"
    # a rerun runs only the unfinished task
    assert run_tasks(settings, "t", [lambda data, rank=0, world_size=1: iter(())], 3, tmp_path / "logs") == []


def test_shards_split_the_documents_by_id_whatever_their_order():
    docs = [Document(text=str(i), id=f"d{i:02d}") for i in range(7)]
    shares = [[d.id for d in Shard(docs[::-1]).run(None, rank, 3)] for rank in range(3)]
    assert sorted(sum(shares, [])) == [d.id for d in docs]  # every document once
    assert shares[0] == [d.id for d in Shard(docs).run(None, 0, 3)] == ["d00", "d03", "d06"]


def test_an_unfinished_stage_resumes_only_on_the_tasks_it_started_with(tmp_path):
    endpoint = TeacherEndpoint(TeacherConfig(model="m", endpoint="http://127.0.0.1:9"), tmp_path / "log")
    (tmp_path / "tasks").write_text("2")
    with pytest.raises(StageError, match=r"generating of this run started on 2 task\(s\).*tasks: 2, or delete"):
        run_until_done([endpoint], ExecutorSettings(tasks=4), lambda teacher: [], 4, tmp_path, "generating")
    # a finished pass is finished whatever tasks says now: nothing runs, nothing asks the endpoint
    for rank in range(2):
        path = Path(tmp_path / "logs" / "completions" / f"{rank:05d}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    run_until_done([endpoint], ExecutorSettings(tasks=4), lambda teacher: [], 4, tmp_path, "generating")


def test_a_pass_an_earlier_version_began_is_not_resumed_in_another_order(tmp_path):
    endpoint = TeacherEndpoint(TeacherConfig(model="m", endpoint="http://127.0.0.1:9"), tmp_path / "log")
    (tmp_path / "raw").mkdir()  # written, no record of its tasks, not finished
    with pytest.raises(StageError, match="an earlier version of dataengine began .* delete that folder"):
        run_until_done([endpoint], ExecutorSettings(), lambda teacher: [], 1, tmp_path, "generating")
    (tmp_path / "logs" / "completions").mkdir(parents=True)
    (tmp_path / "logs" / "completions" / "00000").write_text("")  # ...finished: its one task is done
    run_until_done([endpoint], ExecutorSettings(), lambda teacher: [], 1, tmp_path, "generating")


def test_a_task_that_fails_says_why_wherever_it_runs(tmp_path):
    teacher = TaskTeacher(("http://127.0.0.1:9",), ("http://127.0.0.1:9/v1/models",), logs=str(tmp_path))
    with pytest.raises(ValueError), teacher.open(3) as (url, _):
        assert url == "http://127.0.0.1:9"
        raise ValueError("the rollout could not parse the answer")
    assert failure(tmp_path, [3]) == "ValueError: the rollout could not parse the answer"
