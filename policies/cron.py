"""Validation of the cron expressions and time zones that policy schedules are written with.

Used by the policy model when a file is read; `policies.schedule` evaluates the schedules. Pure.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError

_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_EXAMPLE = "minute hour day-of-month month day-of-week, e.g. '0 8 * * 1-5'"


def check_cron(expr: str) -> str:
    """`expr` if it is a 5-field cron expression (or @daily…) that fires at least once; else ValueError."""
    text = " ".join(expr.split())
    if text.lower() in _MACROS:
        return text.lower()
    fields = text.split(" ") if text else []
    if len(fields) != 5:
        raise ValueError(f"not a cron expression: {expr!r} needs 5 fields ({_EXAMPLE}), got {len(fields)}")
    try:
        croniter(text, datetime(2000, 1, 1, tzinfo=UTC)).get_next(float)
    except CroniterBadDateError:        # e.g. "0 0 30 2 *" (February 30th)
        raise ValueError(f"cron {expr!r} never fires") from None
    except CroniterError as exc:
        raise ValueError(f"not a cron expression: {expr!r}: {exc} ({_EXAMPLE})") from None
    except (ValueError, KeyError) as exc:
        raise ValueError(f"not a cron expression: {expr!r}: {exc} ({_EXAMPLE})") from None
    return text


def check_timezone(name: str) -> str:
    """`name` if it is a known IANA time zone (Europe/Paris, UTC); else ValueError."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r} (use an IANA name such as UTC or Europe/Paris)") from None
    return name


__all__ = ["check_cron", "check_timezone"]
