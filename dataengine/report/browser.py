"""report.html's row browser: a seeded sample of the rows the run kept and rejected, per kind/language group,
with why each rejected row was dropped, the judge's verdict and the router's entropy where the run has them,
filtered in the page by group, kept/rejected and drop reason (a few lines of inline script, nothing fetched).

The rows are read lazily (`rows.frames.scan`): a first pass over a few small columns counts each group's rows
and picks its sample by a seeded hash of the ids; only the picked rows' texts are read. The section's bytes are
capped whatever the run's size: a fixed number of rows per group, texts cut, and a byte budget the rows fill
round-robin across the groups. Rows are untrusted text: everything is escaped into the HTML.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from dataengine import numbers
from dataengine.rows import JUDGE_CRITERIA
from dataengine.rows.frames import scan, shard_paths
from dataengine.run_folder import RunFolder

SAMPLE_ROWS = 10  # rows per group and status (rejected: per group and drop reason)
TEXT_CHARS = 600  # of a longer message or rationale, the first 2/3 and last 1/3 of this many characters
LAST_TURNS = 6  # of a longer conversation, the last turns: the answer and what it answers
SECTION_BYTES = 200_000  # the browser's share of report.html, in UTF-8 bytes, at most
# the stages that keep some rows and reject others, in pipeline order: the last that ran holds the run's kept rows
SORTING = ("curate", "judge", "balance")
UNRECORDED = "unrecorded"  # the drop reason of a rejected row written before rows recorded one
_TEXT_COLUMNS = ("messages", "drop_step", "judge_scores", "judge_score", "judge_rationale")

STYLE = """
#rows .filters label { margin-right: 1rem; } #rows-summary { color: #666; }
#rows details { border-left: 3px solid #4a7; padding: 0.2rem 0.6rem; margin: 0.4rem 0; }
#rows details.rejected { border-left-color: #c54; } #rows summary { cursor: pointer; }
#rows .turn { margin: 0.4rem 0; } #rows .role { font-weight: bold; color: #555; }
#rows pre { white-space: pre-wrap; margin: 0.1rem 0 0 1rem; font: 13px/1.4 ui-monospace, monospace; }
#rows .cut, #rows .preview { color: #888; } #rows .rationale { font-style: italic; }
"""

# Hides what the three filters leave out and counts what stays; the counts of the run's rows come from the
# `rows-cells` blob (group, status, reason, rows), so the totals hold for rows the sample left out too.
_SCRIPT = """
(() => {
  const pick = ["group", "status", "reason"].map((k) => document.getElementById("rows-" + k));
  const rows = [...document.querySelectorAll("#rows-list details")];
  const cells = JSON.parse(document.getElementById("rows-cells").textContent);
  const summary = document.getElementById("rows-summary");
  const fits = (values) => pick.every((s, i) => s.value === "" || s.value === values[i]);
  function update() {
    let shown = 0;
    for (const row of rows) {
      row.hidden = !fits([row.dataset.group, row.dataset.status, row.dataset.reason]);
      shown += row.hidden ? 0 : 1;
    }
    const total = cells.reduce((n, c) => n + (fits(c) ? c[3] : 0), 0);
    summary.textContent = `${shown} sampled rows shown, of ${total} rows of the run that match.`;
  }
  pick.forEach((s) => s.addEventListener("change", update));
  update();
})();
"""


@dataclass(frozen=True)
class Cell:
    """A group's rows of one status (rejected: of one drop reason): how many the run has, the sample's ids."""

    group: str
    status: str  # kept | rejected
    reason: str  # "" for kept rows
    rows: int
    ids: list[str]  # in seeded-hash order


def _e(value: object) -> str:
    return html.escape(str(value))


def seed_of(run_id: str) -> int:
    """The sample's seed: the run's, so a report written again shows the same rows."""
    return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:8], "little")


def _sources(run: RunFolder) -> list[tuple[str, Path]]:
    """(status, folder) of every output with rows to sample: the last sorting stage's kept rows, every sorting
    stage's rejected ones. Only finished stages count: a crashed judge's folder is no verdict."""
    done = [stage for stage in SORTING if run.manifest(stage) is not None]
    found = [("kept", run.folder(done[-1]))] if done else []
    found += [("rejected", run.folder(stage, "rejected")) for stage in done]
    return [(status, folder) for status, folder in found if folder is not None]


def sample(frame: pl.LazyFrame, status: str, seed: int) -> list[Cell]:
    """Each group's (and drop reason's) row count and sample: the rows whose ids hash lowest, seeded (polars'
    hash: the same rows for one polars version). Read from the id and group columns, streamed: the counts in a
    first pass, then the few candidates of each sample in a second."""
    names = frame.collect_schema().names()
    reason = pl.col("drop_reason") if status == "rejected" and "drop_reason" in names else pl.lit(None, pl.String)
    keyed = frame.select(
        "id",
        group=pl.concat_str("kind", pl.lit("/"), "language", ignore_nulls=True),  # a group, even of a row lacking one
        reason=reason.fill_null(UNRECORDED if status == "rejected" else ""),
        key=pl.col("id").hash(seed),
    )
    counts = keyed.group_by("group", "reason").agg(rows=pl.len()).collect(engine="streaming")
    spread = 4
    while (picked := _candidates(keyed, counts, spread)) is None:
        spread *= 8
    return [
        Cell(c["group"], status, c["reason"], c["rows"], picked.get((c["group"], c["reason"]), []))
        for c in counts.iter_rows(named=True)
    ]


def _candidates(keyed: pl.LazyFrame, counts: pl.DataFrame, spread: int) -> dict[tuple[str, str], list[str]] | None:
    """(group, reason) -> the ids of its SAMPLE_ROWS lowest keys, in key order. Keys are spread evenly over the
    64-bit range, so a cell of n rows keeps those under spread x SAMPLE_ROWS / n of it: about spread x
    SAMPLE_ROWS rows a cell, never the whole run held to rank. None when some cell drew fewer than its sample
    (unlikely: the caller widens the spread)."""
    share = spread * SAMPLE_ROWS / pl.col("rows")
    bound = pl.when(share >= 1).then(pl.lit(2**64 - 1, pl.UInt64)).otherwise((share * 2.0**64).cast(pl.UInt64))
    drawn = (
        keyed.join(counts.lazy().select("group", "reason", bound=bound), on=["group", "reason"])
        .filter(pl.col("key") <= pl.col("bound"))
        .select("group", "reason", "id", "key")
        .collect(engine="streaming")
        .sort("key", "id")
    )
    picked: dict[tuple[str, str], list[str]] = {}
    for group, reason, row_id, _ in drawn.iter_rows():
        if len(ids := picked.setdefault((group, reason), [])) < SAMPLE_ROWS:
            ids.append(row_id)
    short = any(
        len(picked.get((c["group"], c["reason"]), [])) < min(c["rows"], SAMPLE_ROWS)
        for c in counts.iter_rows(named=True)
    )
    return None if short else picked


def _fetch(folder: Path, ids: list[str], columns: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The picked rows' `columns` (those the shards have), by id: only these rows become Python objects. A shard
    at a time: over all of them at once, polars (2.1) may decode a whole text column when few rows match."""
    found: dict[str, dict[str, Any]] = {}
    for path in shard_paths(folder):
        frame = pl.scan_parquet(path)
        names = frame.collect_schema().names()
        picked = frame.filter(pl.col("id").is_in(ids)).select("id", *(c for c in columns if c in names))
        found |= {row["id"]: row for row in picked.collect().iter_rows(named=True)}
    return found


def _routing(run: RunFolder, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The route stage's per-row figures of the picked rows (none without a route stage)."""
    folder = run.folder("route") if run.manifest("route") is not None else None
    return {} if folder is None else _fetch(folder, ids, ("router_entropy", "router_margin"))


def _cut(text: str | None) -> str:
    """A text of at most TEXT_CHARS characters: a long one's start and end, which show how it began and how it
    ended (cut off, repeating itself)."""
    text = text or ""
    if len(text) <= TEXT_CHARS:
        return _e(text)
    head, tail = TEXT_CHARS * 2 // 3, TEXT_CHARS // 3
    cut = f'<span class="cut"> [… {len(text) - head - tail} of {len(text)} characters cut …] </span>'
    return f"{_e(text[:head])}{cut}{_e(text[-tail:])}"


def _turns(messages: list[dict[str, Any]] | None) -> str:
    messages = messages or []
    shown = messages[-LAST_TURNS:]
    earlier = len(messages) - len(shown)
    note = f'<p class="cut">{earlier} earlier turns not shown</p>' if earlier else ""
    return note + "".join(
        f'<div class="turn"><span class="role">{_e(m.get("role") or "?")}</span>'
        f"<pre>{_cut(m.get('content'))}</pre></div>"
        for m in shown
    )


def _preview(messages: list[dict[str, Any]] | None) -> str:
    """The question, as far as a line shows it: the last user turn's first words."""
    asked = [m.get("content") or "" for m in messages or [] if m.get("role") == "user"]
    text = " ".join(asked[-1].split()) if asked else ""
    return _e(text[:80] + ("…" if len(text) > 80 else ""))


def _verdict(row: dict[str, Any]) -> str:
    if row.get("judge_score") is None and not row.get("judge_rationale"):
        return ""
    scores = row.get("judge_scores") or {}
    each = ", ".join(f"{name} {scores[name]}" for name in JUDGE_CRITERIA if scores.get(name) is not None)
    return f" · judge {_e(numbers.metric(row.get('judge_score')))}" + (f" ({_e(each)})" if each else "")


def _router(routed: dict[str, Any] | None) -> str:
    if routed is None:
        return ""
    entropy, margin = routed.get("router_entropy"), routed.get("router_margin")
    return f" · router entropy {_e(numbers.metric(entropy))} nats, margin {_e(numbers.metric(margin))}"


def _row_html(cell: Cell, row: dict[str, Any], routed: dict[str, Any] | None) -> str:
    dropped = ""
    if cell.status == "rejected":
        step = row.get("drop_step") or UNRECORDED
        dropped = f" · dropped at <code>{_e(step)}</code>: <code>{_e(cell.reason)}</code>"
    head = (
        f"<b>{cell.status}</b> {_e(cell.group)} · <code>{_e(row['id'])}</code>{dropped}{_verdict(row)}"
        f'{_router(routed)} <span class="preview">{_preview(row.get("messages"))}</span>'
    )
    rationale = row.get("judge_rationale")
    said = f'<p class="rationale">judge: {_cut(rationale)}</p>' if rationale else ""
    return (
        f'<details class="{cell.status}" data-group="{_e(cell.group)}" data-status="{cell.status}" '
        f'data-reason="{_e(cell.reason)}"><summary>{head}</summary>{_turns(row.get("messages"))}{said}</details>'
    )


def _fill(made: dict[tuple[int, int], str], budget: int) -> dict[tuple[int, int], str]:
    """The rows (keyed by cell, rank) that fit in `budget` bytes, taken round-robin across the cells (every
    group's first row, then every group's second, ...): a run with many groups shows fewer rows of each, never
    none of some."""
    shown: dict[tuple[int, int], str] = {}
    for key in sorted(made, key=lambda cell_rank: (cell_rank[1], cell_rank[0])):
        if (size := len(made[key].encode())) <= budget:
            shown[key] = made[key]
            budget -= size
    return shown


def _script_json(value: object) -> str:
    """JSON to sit in a <script> element: no `<`, `>` or `&`, so no text in it can close the element."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _select(name: str, label: str, everything: str, values: Iterable[str]) -> str:
    options = "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)
    return f'<label>{label} <select id="rows-{name}"><option value="">{everything}</option>{options}</select></label>'


def _caps(run: RunFolder, sources: list[tuple[str, Path]], left_out: int) -> str:
    """What the browser shows of the run, and its caps."""
    where = {
        status: " and ".join(f"{folder.name}/" for s, folder in sources if s == status) or "no folder"
        for status in ("kept", "rejected")
    }
    over = f" The byte cap left out {left_out} sampled rows." if left_out else ""
    return (
        f'<p class="sub">Kept rows are those in {_e(where["kept"])}, rejected ones those in {_e(where["rejected"])}. '
        f"A sample, so the page stays small whatever the run's size: at most {SAMPLE_ROWS} kept rows per "
        f"kind/language group and {SAMPLE_ROWS} rejected rows per group and drop reason, picked by a hash of "
        f"each row's id seeded by the run id ({_e(run.run_id)}), so a report written again shows the same rows; "
        f"of a message or the judge's rationale longer than {TEXT_CHARS} characters, its first "
        f"{TEXT_CHARS * 2 // 3} and last {TEXT_CHARS // 3}; of a conversation, its last {LAST_TURNS} turns; "
        f"this browser at most {SECTION_BYTES // 1000} KB of the page, its rows taken round-robin across the "
        f"groups.{over}</p>"
    )


def section(run: RunFolder) -> str:
    """The row browser's <section>, at most SECTION_BYTES; it says what is missing when curation has not run."""
    title = "<h2>Rows, kept and rejected</h2>"
    sources = [(status, folder, frame) for status, folder in _sources(run) if (frame := scan(folder)) is not None]
    if not sources:
        missing = '<p class="empty">Nothing to show: curation has not run.</p>'
        return f'<section id="rows" data-drawn="false">{title}{missing}</section>'
    seed = seed_of(run.run_id)
    placed: list[tuple[int, Cell]] = []  # (source, cell)
    texts: dict[tuple[int, str], dict[str, Any]] = {}  # (source, id) -> the row's texts
    for s, (status, folder, frame) in enumerate(sources):
        cells = sample(frame, status, seed)
        picked = [i for cell in cells for i in cell.ids]
        texts |= {(s, i): row for i, row in _fetch(folder, picked, _TEXT_COLUMNS).items()}
        placed += [(s, cell) for cell in cells]
    placed.sort(key=lambda sc: (sc[1].group, sc[1].status != "kept", sc[1].reason))
    routing = _routing(run, [i for _, cell in placed for i in cell.ids])
    made = {
        (c, rank): _row_html(cell, texts[(s, i)], routing.get(i))
        for c, (s, cell) in enumerate(placed)
        for rank, i in enumerate(cell.ids)
        if (s, i) in texts
    }
    cells = [cell for _, cell in placed]
    blob = [[cell.group, cell.status, cell.reason, cell.rows] for cell in cells]
    filters = (
        '<p class="filters">'
        + _select("group", "group", "all", sorted({cell.group for cell in cells}))
        + _select("status", "rows", "kept and rejected", ["kept", "rejected"])
        + _select("reason", "drop reason", "any", sorted({cell.reason for cell in cells} - {""}))
        + '</p><p id="rows-summary"></p>'
    )
    folders = [(status, folder) for status, folder, _ in sources]

    def page(shown: dict[tuple[int, int], str]) -> str:
        return (
            f'<section id="rows" data-drawn="true">{title}{_caps(run, folders, len(made) - len(shown))}{filters}'
            f'<div id="rows-list">{"".join(shown[k] for k in sorted(shown))}</div>'
            f'<script type="application/json" id="rows-cells">{_script_json(blob)}</script>'
            f"<script>{_SCRIPT}</script></section>"
        )

    # what the rows may fill: the cap less the rest of the section, measured with every row left out (the most
    # its caps line can say)
    return page(_fill(made, SECTION_BYTES - len(page({}).encode())))
