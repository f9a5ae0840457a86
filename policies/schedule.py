"""Scheduled bounds: which schedules are active at a given time, and the pool's effective min/max.

Pure: `now` is an argument (epoch seconds) and nothing here reads the clock. Cron expressions are
read by croniter in the schedule's own time zone (zoneinfo), so "0 8 * * 1-5" in Europe/Paris
follows daylight saving time. The last-fire lookup is memoised per minute, which keeps it a pure
function of its arguments while thousands of pools share one schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import croniter
from croniter.croniter import CroniterError

from policies.durations import format_duration
from policies.model import PoolPolicy, Schedule


@lru_cache(maxsize=8192)
def _last_fire(cron: str, timezone: str, minute: int) -> float | None:
    # Cron fires on whole minutes: the last fire at or before any instant of `minute` is the last
    # fire at or before its first second. croniter's get_prev is strict, hence the +1 s.
    start = datetime.fromtimestamp(minute * 60 + 1, ZoneInfo(timezone))
    try:
        return float(croniter(cron, start).get_prev(float))
    except CroniterError:
        return None     # never fired in croniter's search range


def last_fire(cron: str, timezone: str, now: float) -> float | None:
    """Epoch seconds of the last time `cron` fired at or before `now`, None if never."""
    return _last_fire(cron, timezone, int(now // 60))


def active_since(schedule: Schedule, now: float) -> float | None:
    """When the current period of `schedule` started, or None if it is not active at `now`."""
    start = last_fire(schedule.cron, schedule.timezone, now)
    if start is None or now >= start + schedule.duration:
        return None
    return start


@dataclass(frozen=True, slots=True)
class Bounds:
    """The min and max in force, and where each comes from ('' = the pool's own bound, else the
    schedule's name, with a note when one was moved to meet the other)."""

    min: int
    max: int
    min_from: str = ""
    max_from: str = ""

    def __str__(self) -> str:
        def one(key: str, value: int, source: str) -> str:
            return f"{key} {value}" + (f" ({source})" if source else "")
        return f"{one('min', self.min, self.min_from)}, {one('max', self.max, self.max_from)}"


def effective_bounds(policy: PoolPolicy, now: float) -> Bounds:
    """The pool's bounds at `now`: its own, overridden bound by bound by active schedules.

    The last-listed active schedule that sets a bound wins. If the winners cross (min > max), the
    one listed later wins and the other bound moves to meet it; the pool's own bounds rank first.
    """
    lo, hi = policy.min, policy.max
    lo_rank, hi_rank = -1, -1
    lo_from = hi_from = ""
    for rank, s in enumerate(policy.schedules):
        if active_since(s, now) is None:
            continue
        if s.min is not None:
            lo, lo_rank, lo_from = s.min, rank, f"schedule {s.name}"
        if s.max is not None:
            hi, hi_rank, hi_from = s.max, rank, f"schedule {s.name}"
    if lo > hi:
        if hi_rank > lo_rank:
            lo, lo_from = hi, f"lowered to max of {hi_from or 'the pool'}"
        else:
            hi, hi_from = lo, f"raised to min of {lo_from or 'the pool'}"
    return Bounds(lo, hi, lo_from, hi_from)


def describe_schedule(schedule: Schedule, now: float) -> str:
    """'business-hours: active since 08:00 (Europe/Paris), 1h20m left' or '…: inactive'."""
    since = active_since(schedule, now)
    if since is None:
        return f"{schedule.name}: inactive"
    local = datetime.fromtimestamp(since, ZoneInfo(schedule.timezone)).strftime("%Y-%m-%d %H:%M")
    left = since + schedule.duration - now
    return f"{schedule.name}: active since {local} ({schedule.timezone}), {format_duration(left)} left"


__all__ = ["Bounds", "active_since", "describe_schedule", "effective_bounds", "last_fire"]
