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


def timeline(paths: list[Path], bins: int = 40) -> list[list[float]]:
    """[[seconds since the first rollout, teacher tokens/s in that bin], ...] over bins of equal width;
    bins with no finished rollout (a pause between a crash and its resume) are left out."""
    events = sorted(
        (float(t), int(n))
        for path in paths
        if path.is_file()
        for t, n in (line.split("\t") for line in path.read_text().splitlines() if "\t" in line)
    )
    if len(events) < 2:
        return []
    start, end = events[0][0], events[-1][0]
    width = max((end - start) / bins, 1.0)
    tokens: dict[int, int] = {}
    for t, n in events:
        slot = min(int((t - start) / width), bins - 1)
        tokens[slot] = tokens.get(slot, 0) + n
    return [[round((slot + 0.5) * width, 1), round(n / width, 2)] for slot, n in sorted(tokens.items())]
