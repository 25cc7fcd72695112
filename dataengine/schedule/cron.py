"""Cron expressions: next due times (croniter) and systemd's calendar syntax (the recipe checks their syntax).

Five fields are standard cron (minute hour day-of-month month day-of-week). A sixth field in front gives
seconds, which only the foreground scheduler, systemd and Slurm can honour.
"""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter

from dataengine.errors import UserError

MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]


def has_seconds(expr: str) -> bool:
    return len(expr.split()) == 6


def due_times(expr: str, timezone: str, after: datetime) -> croniter:
    """An iterator of due times (aware datetimes in `timezone`) strictly after `after`."""
    return croniter(
        expr, after.astimezone(ZoneInfo(timezone)), ret_type=datetime, second_at_beginning=has_seconds(expr)
    )


def next_time(expr: str, timezone: str, after: datetime, previous: datetime | None = None) -> datetime:
    """The first due time strictly after `after`. When clocks go back, a wall-clock time that comes twice
    (02:30 CEST, then 02:30 CET) is due once, as in cron: one equal on the wall to `previous` is skipped."""
    it = due_times(expr, timezone, after)
    due = it.get_next(datetime)
    while previous is not None and _wall(due) == _wall(previous.astimezone(due.tzinfo)):
        due = it.get_next(datetime)
    return due


def _wall(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None)


def on_calendar(expr: str) -> str:
    """The same schedule as a systemd OnCalendar= value (`Wed *-*-1/2 3:00:00`): systemd writes steps as
    `start/step` and weekdays by name; the timezone is appended by the caller."""
    fields = expr.split()
    second, (minute, hour, day, month, weekday) = (fields[0], fields[1:]) if len(fields) == 6 else ("0", fields)
    if day != "*" and weekday != "*":
        # cron runs when either matches; systemd only when both do
        raise UserError(
            f"{expr!r} restricts both day of month and weekday, which systemd reads differently: "
            "use one of them, or export to crontab/k8s"
        )
    date = f"*-{_systemd(_month_numbers(month))}-{_systemd(day)}"
    time = f"{_systemd(hour)}:{_systemd(minute)}:{_systemd(second)}"
    return f"{_weekdays(weekday)} {date} {time}" if weekday != "*" else f"{date} {time}"


def _systemd(field: str) -> str:
    # cron "*/15" is systemd "0/15"; "a-b/n" is "a..b/n"; lists and plain values are the same
    parts = []
    for part in field.split(","):
        base, _, step = part.partition("/")
        base = "0" if base == "*" and step else base
        base = base.replace("-", "..")
        parts.append(f"{base}/{step}" if step else base)
    return ",".join(parts)


def _weekdays(field: str) -> str:
    def name(value: str) -> str:
        return DAYS[int(value) % 7] if value.isdigit() else value.capitalize()[:3]

    parts = []
    for part in field.split(","):
        if "/" in part:
            raise UserError(f"weekday steps ({part!r}) have no systemd equivalent; list the days instead")
        first, _, last = part.partition("-")
        parts.append(f"{name(first)}..{name(last)}" if last else name(first))
    return ",".join(parts)


def _month_numbers(field: str) -> str:
    # systemd reads months as numbers only
    return re.sub(r"[A-Za-z]{3}", lambda m: str(MONTHS.index(m.group(0).lower()) + 1), field)
