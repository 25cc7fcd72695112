"""A run killed while datatrove saves a finished chunk's number: the next run resumes the pass, asking only what
was left.

datatrove records a task's last finished chunk in `checkpoints/last_chunk/<rank>.txt` by emptying the file and
then writing the number; a SIGKILL between the two (found by tests/test_e2e_lifecycle.py under load) left the file
empty, and every later run failed with `ValueError: invalid literal for int()`. Here a real pass over a stand-in
teacher finishes two chunks and stops when the teacher dies; the file is then emptied as the kill left it. And the
pass's last chunk, which datatrove records while its raw file is still open, is on disk before it is recorded.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from datatrove.data import Document
from datatrove.pipeline.inference.checkpointing import CheckpointManager
from rich.console import Console

from dataengine.errors import StageError
from dataengine.recipe import parse_recipe
from dataengine.teacher.inference import inference_config, mend_last_chunk, run_inference
from dataengine.teacher.server import TeacherEndpoint
from tests.conftest import JsonHandler, serving

PER_CHUNK = 2
DOCUMENTS = 6


class _Teacher(JsonHandler):
    """Answers the documents in `answering` (by the request's `user` tag); asked another, it dies (a 500, and its
    health check fails from then on). Records what it was asked."""

    answering: set[str] = set()
    asked: list[str] = []
    dead = False

    def do_GET(self) -> None:  # noqa: N802 (http.server's name) -- the health check
        self._send(503 if self.dead else 200, b'{"data": []}')

    def do_POST(self) -> None:  # noqa: N802
        document = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["user"]
        type(self).asked.append(document)
        if self.dead or document not in self.answering:
            type(self).dead = True
            self._send(500, b'{"error": {"message": "EngineCore died", "type": "InternalServerError", "code": 500}}')
            return
        choice = {"index": 0, "message": {"role": "assistant", "content": "yes"}, "finish_reason": "stop"}
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        self._send(200, json.dumps({"id": "r", "choices": [choice], "usage": usage}).encode())


async def _ask(document: Document, generate, *, on_done) -> str:
    started = time.time()
    result = await generate({"messages": [{"role": "user", "content": document.text}], "user": document.id})
    on_done(1, started)
    return result.text


def _pass(url: str, work: Path, documents: int = DOCUMENTS) -> None:
    teacher = f"teacher: {{model: teacher, endpoint: '{url}', recovery: {{max_attempts: 1, backoff_s: 0.01}}}}"
    recipe = parse_recipe(f"name: t\n{teacher}\ngenerate: {{chat: {{languages: [{{code: en, quota: 1}}]}}}}\n")
    docs = [Document(text=f"question {i}", id=f"p{i:02d}") for i in range(documents)]
    run_inference(
        [TeacherEndpoint(recipe.teacher, work / "unused.log", print)],
        docs,
        work,
        _ask,
        lambda root: inference_config("teacher", root, {"max_tokens": 4}, concurrency=1, timeout=10),
        Console(file=io.StringIO()),
        "asking",
        records_per_chunk=PER_CHUNK,
    )


def _written(work: Path) -> list[str]:
    lines = [line for path in (work / "raw").glob("*.jsonl") for line in path.read_text().splitlines()]
    return sorted(json.loads(line)["id"] for line in lines)


def test_a_pass_resumes_after_a_kill_emptied_the_record_of_its_last_chunk(tmp_path):
    work = tmp_path / "work"
    _Teacher.asked = []
    with serving(_Teacher) as url:
        # one request at a time: the first four documents (chunks 0 and 1) are answered; the teacher dies on the
        # fifth, and the pass ends there once the teacher does not come back
        _Teacher.answering, _Teacher.dead = {f"p{i:02d}" for i in range(4)}, False
        with pytest.raises(StageError, match="did not answer after 1 attempts"):
            _pass(url, work)
        record = work / "checkpoints" / "last_chunk" / "00000.txt"
        assert record.read_text() == "1" and _written(work) == [f"p{i:02d}" for i in range(4)]
        record.write_text("")  # what a SIGKILL between datatrove's truncation and its write leaves

        _Teacher.asked, _Teacher.answering, _Teacher.dead = [], {f"p{i:02d}" for i in range(DOCUMENTS)}, False
        _pass(url, work)

    assert _Teacher.asked == ["p04", "p05"]  # nothing finished was asked again
    assert _written(work) == [f"p{i:02d}" for i in range(DOCUMENTS)]  # each once


def test_the_last_chunk_is_on_disk_before_it_is_recorded_finished(tmp_path, monkeypatch):
    """5 documents in chunks of 2: the last chunk holds one. datatrove records it finished at the end of the pass,
    while its raw file is still open; a kill there must not find a finished record over unwritten rows."""
    on_disk: dict[int, int] = {}
    record = CheckpointManager.update_last_chunk_index

    async def recording(self, rank: int) -> None:  # what the raw files hold as each chunk is recorded
        for path in (tmp_path / "work" / "raw").glob("*_chunk_*.jsonl"):
            chunk = int(path.stem.rsplit("_", 1)[1])
            on_disk.setdefault(chunk, len(path.read_text().splitlines()))
        await record(self, rank)

    monkeypatch.setattr(CheckpointManager, "update_last_chunk_index", recording)
    _Teacher.asked, _Teacher.answering, _Teacher.dead = [], {f"p{i:02d}" for i in range(5)}, False
    with serving(_Teacher) as url:
        _pass(url, tmp_path / "work", documents=5)
    assert on_disk == {0: 2, 1: 2, 2: 1}


def _chunk(folder: Path, name: str, ids: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps({"id": i, "text": ""}) + "\n" for i in ids))


@pytest.mark.parametrize(
    ("left", "mended"),
    [
        # chunk 0 finished; chunk 1 finished too but its checkpoint was still there when the run died
        ({"raw": {0: ["a", "b"], 1: ["c", "d"]}, "checkpoints": {1: ["c", "d"]}}, "0"),
        # chunk 1's raw file holds one document of two: not finished
        ({"raw": {0: ["a", "b"], 1: ["c"]}, "checkpoints": {}}, "0"),
        # nothing finished: no record, so datatrove starts the pass from its checkpoints alone
        ({"raw": {0: ["a"]}, "checkpoints": {0: ["a"]}}, None),
    ],
)
def test_the_mended_record_names_the_last_chunk_every_one_before_which_finished(tmp_path, left, mended):
    raw, checkpoints = tmp_path / "raw", tmp_path / "checkpoints"
    for chunk, ids in left["raw"].items():
        _chunk(raw, f"00003_chunk_{chunk}.jsonl", ids)
    for chunk, ids in left["checkpoints"].items():
        _chunk(checkpoints / "00003", f"chunk_{chunk:05d}.jsonl", ids)
    record = checkpoints / "last_chunk" / "00003.txt"
    record.parent.mkdir(parents=True)
    record.write_text("")
    mend_last_chunk(checkpoints, raw, 3, PER_CHUNK)
    assert (record.read_text() if record.exists() else None) == mended
    assert [p.name for p in record.parent.iterdir()] == ([record.name] if mended else [])


def test_a_record_that_reads_is_left_as_it_is(tmp_path):
    record = tmp_path / "checkpoints" / "last_chunk" / "00000.txt"
    record.parent.mkdir(parents=True)
    record.write_text("4")  # datatrove's own, whatever the folders say
    mend_last_chunk(tmp_path / "checkpoints", tmp_path / "raw", 0, PER_CHUNK)
    assert record.read_text() == "4"
