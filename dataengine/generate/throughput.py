"""The teacher's tokens/s over time: one line per finished rollout in `.work/generate/throughput.tsv`.

Appended as rollouts finish, so a resumed generation adds to the same record; the stage's manifest keeps
a binned timeline of it for the run report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

FILE = "throughput.tsv"


@contextmanager
def recorder(path: Path) -> Iterator[Callable[[int], None]]:
    """A callback taking a rollout's token count: appends `<unix time> TAB <tokens>` and flushes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:

        def record(tokens: int) -> None:
            fh.write(f"{time.time():.3f}\t{tokens}\n")
            fh.flush()

        yield record


GAP_S = 120.0  # no rollout finished for this long: generation stopped (a crash, then a resume)


def timeline(paths: list[Path], bins: int = 40) -> list[list[float]]:
    """[[seconds since the first rollout, teacher tokens/s], ...]: each stretch of generation (split where it
    paused for GAP_S) gets bins of equal width, so a pause neither dilutes the rate nor hides the resume."""
    events = sorted(
        (float(t), int(n))
        for path in paths
        if path.is_file()
        for t, n in (line.split("\t") for line in path.read_text().splitlines() if "\t" in line)
    )
    if len(events) < 2:
        return []
    segments = [[events[0]]]
    for previous, event in zip(events, events[1:], strict=False):
        if event[0] - previous[0] > GAP_S:
            segments.append([])
        segments[-1].append(event)
    active = sum(seg[-1][0] - seg[0][0] for seg in segments) or 1.0
    first = events[0][0]
    points: list[list[float]] = []
    for seg in segments:
        span = seg[-1][0] - seg[0][0]
        count = max(1, round(bins * span / active))
        width = max(span / count, 1.0)
        tokens: dict[int, int] = {}
        for t, n in seg:
            slot = min(int((t - seg[0][0]) / width), count - 1)
            tokens[slot] = tokens.get(slot, 0) + n
        start = seg[0][0] - first
        points += [[round(start + (slot + 0.5) * width, 1), round(n / width, 2)] for slot, n in sorted(tokens.items())]
    return points
