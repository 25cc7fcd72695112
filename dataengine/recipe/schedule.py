"""The `schedule` block, and the cron grammar it accepts (`cron_problem`)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from dataengine.recipe.base import StrictModel

# what crontab, systemd and k8s all understand: *, numbers, 3-letter names, ranges, steps, lists (no L, W, #, ?, H)
_CRON_ATOM = r"(\*|\d+|[A-Za-z]{3})(-(\d+|[A-Za-z]{3}))?(/\d+)?"
_CRON_FIELD = re.compile(rf"{_CRON_ATOM}(,{_CRON_ATOM})*")


def cron_problem(expr: str) -> str | None:
    """Why `expr` is not a usable cron expression, or None."""
    from croniter import croniter

    fields = expr.split()
    if len(fields) not in (5, 6):
        return f"{expr!r} has {len(fields)} fields; cron needs 5 (minute hour day month weekday) or 6 (seconds first)"
    if not croniter.is_valid(expr, second_at_beginning=len(fields) == 6):
        return f"{expr!r} is not a valid cron expression"
    if not all(_CRON_FIELD.fullmatch(part) for part in fields):
        return f"{expr!r}: only numbers, names, '*', '/', '-' and ',' are supported (no croniter extensions)"
    # "0 2 * * * *": 02:00 daily with a stray '*', or (seconds first) 2 minutes past every hour. Taken as the
    # typo it usually is when the seconds-first reading runs every hour and the 5-field one at a set hour
    stray = len(fields) == 6 and fields[5] == "*" and fields[2] == "*" and fields[1] != "*"
    if stray and croniter.is_valid(" ".join(fields[:5])):
        return (
            f"{expr!r} is ambiguous: read with seconds first it is {describe(expr)!r}, while its first five fields "
            f"alone are {describe(' '.join(fields[:5]))!r}. Write the 5-field form (minute hour day month weekday); "
            f"for seconds first every hour, write the hours out: {' '.join([*fields[:2], '0-23', *fields[3:]])!r}"
        )
    return None


def describe(expr: str) -> str:
    """The cron line in words, read as the scheduler reads it (6 fields: seconds first), on a 24-hour clock."""
    from cron_descriptor import Options, get_description

    options = Options()
    options.use_24hour_time_format = True
    return get_description(expr, options)


class ScheduleConfig(StrictModel):
    """Scheduled batch runs (`dataengine schedule run`, or exported to crontab/systemd/k8s/slurm). Each run
    draws a fresh generation seed, recorded in runs/<name>/schedule.jsonl, and writes
    runs/<name>/scheduled/<UTC stamp>/; two runs of one recipe never overlap."""

    cron: str = Field(description="when: 5-field cron (minute hour day month weekday), or 6 with seconds first")
    timezone: str = Field("UTC", description="IANA timezone the cron expression is read in")
    incremental: bool = Field(
        True,
        description="each run dedups against what publish.to already holds and appends only new rows: the "
        "default of publish.append (needs a publish block to have an effect)",
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if problem := cron_problem(value):
            raise ValueError(problem)
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}; use an IANA name such as UTC or Europe/Paris") from None
        return value
