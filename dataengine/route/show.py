"""`dataengine experts RUN_DIR`: the routing map in the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dataengine import numbers
from dataengine.experts import capacity
from dataengine.route.stage import balance_table, routed_by


def show(routing_map: dict, console: Console) -> None:
    console.print(balance_table(routing_map))
    if line := routed_by(routing_map):
        console.print(line)
    console.print(_slices(routing_map))
    if "capacity" in routing_map:  # maps written before capacity was measured have none
        console.print(_capacity(routing_map["capacity"]))
        console.print(capacity.replication(routing_map["capacity"]))
    console.print(_consistency(routing_map))
    if routing_map["js_divergence"]:
        console.print(_divergence(routing_map))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _slices(routing_map: dict) -> Table:
    table = Table(title="balance per slice (mean over layers)", title_justify="left")
    for column in ("slice", "rows", "answer tokens", "CV", "balancedness", "cold experts"):
        table.add_column(column, justify="left" if column == "slice" else "right")
    for field, groups in routing_map["slices"].items():
        for name, s in groups.items():
            table.add_row(
                escape(f"{field}={name}"),  # a slice's name comes from the rows (language, topic): text
                numbers.count(s["rows"]),
                numbers.count(s["tokens"]),
                numbers.metric(_mean(s["cv"])),
                numbers.metric(_mean(s["balancedness"])),
                numbers.count(sum(len(c) for c in s["cold"])),
            )
    return table


def _capacity(section: dict) -> Table:
    table = Table(
        title=f"token slots past their expert's capacity: {capacity.batches_of(section)}",
        title_justify="left",
    )
    for column in ("capacity factor", "dropped (mean over layers)", "worst layer", "dropped there"):
        table.add_column(column, justify="right")
    for s in capacity.summary(section):
        table.add_row(f"{s['factor']:g}", f"{s['mean']:.1%}", s["worst_layer"], f"{s['worst']:.1%}")
    return table


def _consistency(routing_map: dict) -> Table:
    table = Table(title="consecutive tokens with the same top-1 expert", title_justify="left")
    for column in ("layer", "same top-1", "random baseline"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    c = routing_map["consistency"]
    for layer, (same, base) in enumerate(zip(c["same_top1"], c["random_baseline"], strict=True)):
        table.add_row(str(layer), numbers.metric(same), numbers.metric(base))
    return table


def _divergence(routing_map: dict) -> Table:
    table = Table(
        title=f"Jensen-Shannon divergence of each language's routing from {escape(routing_map['divergence_from'])} "
        "(chat rows; per layer in map.json)",
        title_justify="left",
    )
    for column in ("language", "mean over layers", "max", "at layer"):
        table.add_column(column, justify="left" if column == "language" else "right")
    for language, values in routing_map["js_divergence"].items():
        peak = max(range(len(values)), key=values.__getitem__)
        table.add_row(
            escape(language), numbers.metric(sum(values) / len(values)), numbers.metric(values[peak]), str(peak)
        )
    return table
