"""The task executors (`dataengine/executors.py`) and the task loop (`teacher/tasks.py`), without a teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
from datatrove.data import Document
from datatrove.pipeline.readers import JsonlReader

from dataengine.errors import StageError
from dataengine.executors import failure, run_tasks
from dataengine.recipe import ExecutorSettings, TeacherConfig
from dataengine.teacher.inference import deal
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


def test_documents_are_dealt_to_one_file_per_task_and_read_back_whole(tmp_path):
    meta = {"kind": "code", "answer_seeds": [1, None], "sampling": {"t": 0.5}, "system_prompt": None}
    docs = [Document(text=f"prompt {i}", id=f"d{i:02d}", metadata=dict(meta, n=i)) for i in range(7)]

    def shares(tasks: int) -> list[list[Document]]:
        reader = JsonlReader(str(tmp_path / "docs"), compression=None, add_file_path=False)
        return [list(reader.run(None, rank, tasks)) for rank in range(tasks)]

    assert deal(iter(docs), tmp_path / "docs", 3) == 7
    dealt = shares(3)
    assert [[d.id for d in share] for share in dealt] == [["d00", "d03", "d06"], ["d01", "d04"], ["d02", "d05"]]
    assert dealt[1][0].text == "prompt 1" and dealt[1][0].metadata == dict(meta, n=1)  # nothing added or lost
    # fewer documents than tasks: a file per document, none empty (the pass runs on that many tasks)
    assert deal(docs[:2], tmp_path / "docs", 4) == 2
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == ["00000.jsonl", "00001.jsonl"]
    assert deal([], tmp_path / "docs", 4) == 0 and not (tmp_path / "docs").exists()
    # out of id order, a rerun could not count on each task's documents being where its checkpoints left them
    with pytest.raises(ValueError, match="documents out of id order: 'd02' after 'd03'"):
        deal([docs[3], docs[2]], tmp_path / "docs", 2)


def test_a_resumed_pass_counts_each_written_document_once(tmp_path):
    """datatrove's own checkpoint manager writes each document to its chunk's raw file and checkpoint both, and
    removes the checkpoint of a complete chunk: a resumed pass's progress starts at the documents written."""
    import asyncio

    from datatrove.pipeline.inference.checkpointing import CheckpointManager
    from datatrove.pipeline.writers import JsonlWriter

    from dataengine.teacher.inference import _finished

    async def write(rank: int, count: int) -> None:
        checkpoints = CheckpointManager(str(tmp_path / "checkpoints"), records_per_chunk=3)
        for n, chunk in zip(range(count), checkpoints.chunk_index_gen(), strict=False):
            await checkpoints.write_document(Document(text="", id=f"{rank}-{n}"), rank, chunk, raw)

    raw = JsonlWriter(str(tmp_path / "raw"), output_filename="${rank}_chunk_${chunk_index}.jsonl", compression=None)
    with raw:
        asyncio.run(write(0, 5))  # chunk 0 complete, chunk 1 two documents in
        asyncio.run(write(1, 2))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jsonl")) == [
        "checkpoints/00000/chunk_00001.jsonl",
        "checkpoints/00001/chunk_00000.jsonl",
        "raw/00000_chunk_0.jsonl",
        "raw/00000_chunk_1.jsonl",
        "raw/00001_chunk_0.jsonl",
    ]
    with (tmp_path / "checkpoints/00001/chunk_00000.jsonl").open("a") as cut:
        cut.write('{"id": "1-')  # a line a crash cut short
    assert _finished(tmp_path) == 7


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
