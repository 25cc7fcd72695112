"""The teacher's tokens/s over time: one line per finished rollout in `.work/<stage>/throughput/`.

Each line holds when the rollout started and ended and the tokens the teacher wrote for it. Each process that
runs rollouts (a datatrove task, here or on another node) appends to a file of its own, as rollouts finish, so
a resumed generation adds to the same record; the progress bar follows the files (`Follower`), and the stage's manifest
keeps a binned timeline of them for the run report.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

FOLDER = "throughput"
GAP_S = 120.0  # no rollout running for this long: generation stopped (a crash, then a resume)


@contextmanager
def recorder(folder: Path) -> Iterator[Callable[[int, float], None]]:
    """A callback taking a rollout's token count and start time: appends `start TAB end TAB tokens` to this
    process's file in `folder` (one writer per file: appends from several processes, or over NFS, interleave)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{socket.gethostname()}-{os.getpid()}.tsv", "a") as fh:

        def record(tokens: int, started: float) -> None:
            fh.write(f"{started:.3f}\t{time.time():.3f}\t{tokens}\n")
            fh.flush()

        yield record


class Follower:
    """The rollouts and tokens the files in `folder` gained since it was made, and the span from the first of
    those rollouts' start to the last one's end; reads only the bytes added since the last call."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: dict[Path, int] = {}
        self._reset()
        self()  # what the files hold already is not counted
        self._reset()

    def _reset(self) -> None:
        self.rollouts = self.tokens = 0
        self.first, self.last = math.inf, -math.inf

    def __call__(self) -> tuple[int, int]:
        for path in sorted(self.folder.glob("*.tsv")) if self.folder.is_dir() else []:
            with open(path, "rb") as fh:
                fh.seek(self.seen.get(path, 0))
                added = fh.read()
            whole = added[: added.rfind(b"\n") + 1]  # a line being written is read next time
            self.seen[path] = self.seen.get(path, 0) + len(whole)
            for line in whole.splitlines():
                start, end, tokens = line.split(b"\t")
                self.rollouts += 1
                self.tokens += int(tokens)
                self.first, self.last = min(self.first, float(start)), max(self.last, float(end))
        return self.rollouts, self.tokens

    @property
    def seconds(self) -> float:
        """From the first rollout's start to the last one's end: the time the teacher was generating, without the
        server's start or the executor's."""
        return max(self.last - self.first, 0.0) if self.rollouts else 0.0


def _rollouts(folders: list[Path]) -> list[tuple[float, float, int]]:
    paths = [path for folder in folders if folder.is_dir() for path in folder.glob("*.tsv")]
    rows = [line.split("\t") for path in paths for line in path.read_text().splitlines()]
    return sorted((float(start), float(end), int(tokens)) for start, end, tokens in (r for r in rows if len(r) == 3))


def _stretches(rollouts: list[tuple[float, float, int]]) -> list[list[tuple[float, float, int]]]:
    """Rollouts grouped into stretches of generation: a new stretch starts after GAP_S with none running."""
    stretches: list[list[tuple[float, float, int]]] = []
    end = float("-inf")
    for rollout in rollouts:
        if rollout[0] > end + GAP_S:
            stretches.append([])
        stretches[-1].append(rollout)
        end = max(end, rollout[1])
    return stretches


def timeline(folders: list[Path], bins: int = 40) -> list[list[float]]:
    """[[seconds since generation began, teacher tokens/s], ...]. A rollout's tokens are spread over the
    time it ran (concurrent rollouts finishing together are no burst), and each stretch of generation gets
    bins of equal width, so a pause between a crash and its resume neither dilutes the rate nor hides."""
    rollouts = _rollouts(folders)
    if not rollouts:
        return []
    stretches = _stretches(rollouts)
    spans = [(s[0][0], max(r[1] for r in s)) for s in stretches]
    active = sum(end - start for start, end in spans) or 1.0
    first = spans[0][0]
    points: list[list[float]] = []
    for stretch, (start, end) in zip(stretches, spans, strict=True):
        count = max(1, round(bins * (end - start) / active))
        width = max((end - start) / count, 1.0)
        tokens = [0.0] * count
        for r_start, r_end, n in stretch:
            _spread(tokens, (r_start - start) / width, (r_end - start) / width, n)
        points += [
            [round(start - first + (i + 0.5) * width, 1), round(t / width, 2)] for i, t in enumerate(tokens) if t
        ]
    return points


def active_seconds(folders: list[Path]) -> float:
    """Seconds rollouts were running, over every pass that wrote to `folders` (resumed ones and top-up rounds
    included), without the pauses between them. Each folder (a round) on its own: the stages between two
    rounds are no generation, however short."""
    return sum(max(r[1] for r in s) - s[0][0] for folder in folders for s in _stretches(_rollouts([folder])))


def rate(folders: list[Path]) -> float | None:
    """Tokens per second of the time rollouts were running (the stretches, without the pauses between a
    crash and its resume): what a pass of documents read back from checkpoints does not inflate."""
    active = active_seconds(folders)
    return round(sum(r[2] for r in _rollouts(folders)) / active, 2) if active > 0 else None


def _spread(bins: list[float], lo: float, hi: float, tokens: int) -> None:
    """Add `tokens` to the bins between positions lo and hi (in bin widths, within [0, len(bins)]), in
    proportion to the overlap; a rollout of no measurable length goes to the bin it is in."""
    if hi - lo <= 0:
        bins[min(int(lo), len(bins) - 1)] += tokens
        return
    for i in range(int(lo), min(math.ceil(hi), len(bins))):
        bins[i] += tokens * (min(hi, i + 1) - max(lo, i)) / (hi - lo)
