"""Turns monotonically increasing counters into per-second rates, without ever inventing a rate.

HAProxy counters restart from 0 on every reload and SNMP counters on every reboot; a naive delta then
reads as a huge negative (or, with wrap arithmetic, huge positive) rate and drives a bad scaling
decision. This tracker reports no rate at all for any interval it cannot vouch for: the first reading,
a reset (the source's start marker moved, or the counter went down without a plausible wrap), a gap
longer than `max_gap_s`, or a clock that did not move forward. It then re-baselines on the new reading.

It is pure: timestamps are passed in, it never reads the clock, sleeps or does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal

__all__ = ["COUNTER32", "COUNTER64", "RateResult", "RateStatus", "RateTracker"]

COUNTER32 = 2**32
COUNTER64 = 2**64

RateStatus = Literal["ok", "wrapped", "first", "reset", "gap", "clock", "invalid"]


@dataclass(frozen=True, slots=True)
class RateResult:
    """`rate` is per second, or None when the interval cannot be trusted; `status` says why.

    ok       rate from a plain increase (or no change)
    wrapped  rate across one counter wrap (only with a `modulus`)
    first    first reading of this series (or first after `forget`/an invalid value)
    reset    the start marker changed, or the counter decreased without a plausible wrap
    gap      the previous reading is older than `max_gap_s`
    clock    the timestamp did not advance past the previous one
    invalid  the value is NaN or infinite; the series' baseline is dropped
    """

    rate: float | None
    status: RateStatus


@dataclass(frozen=True, slots=True)
class _Reading:
    value: int | float
    timestamp: float
    start: float | None


class RateTracker:
    """Per-(target key, series) counter baselines.

    `max_gap_s`: a previous reading older than this gives no rate (None: no limit); averaging over a
    long outage hides what happened in it. `start_tolerance_s`: how far the start marker may move and
    still be "the same process" — 0 for HAProxy's integral `haproxy_process_start_time_seconds`, a few
    seconds when the caller derives it as `now - sysUpTime`, which jitters with polling latency.
    """

    def __init__(self, *, max_gap_s: float | None = 60.0, start_tolerance_s: float = 0.0) -> None:
        if max_gap_s is not None and max_gap_s <= 0:
            raise ValueError("max_gap_s must be positive")
        if start_tolerance_s < 0:
            raise ValueError("start_tolerance_s must not be negative")
        self.max_gap_s = max_gap_s
        self.start_tolerance_s = start_tolerance_s
        self._state: dict[str, dict[Hashable, _Reading]] = {}

    def update(
        self,
        key: str,
        series: Hashable,
        value: int | float,
        timestamp: float,
        *,
        start: float | None = None,
        modulus: int | None = None,
    ) -> RateResult:
        """Record `value` read at `timestamp` (seconds) and return the rate since the previous reading.

        `start` is the source's start/epoch marker (a process start time, a boot time); when it differs
        from the previous one by more than `start_tolerance_s` the counter was reset. `modulus`
        (`COUNTER32`, `COUNTER64`) allows one wrap when the counter decreased and no reset was seen.
        """
        per_key = self._state.setdefault(key, {})
        if not math.isfinite(value) or not math.isfinite(timestamp):
            per_key.pop(series, None)
            return RateResult(None, "invalid")
        previous = per_key.get(series)
        per_key[series] = _Reading(value, timestamp, start)
        if previous is None:
            return RateResult(None, "first")
        if self._restarted(previous.start, start):
            return RateResult(None, "reset")
        elapsed = timestamp - previous.timestamp
        if elapsed <= 0:
            return RateResult(None, "clock")
        if self.max_gap_s is not None and elapsed > self.max_gap_s:
            return RateResult(None, "gap")
        delta = value - previous.value
        if delta >= 0:
            return RateResult(delta / elapsed, "ok")
        if modulus is not None and 0 <= value < modulus and previous.value < modulus:
            wrapped = value + modulus - previous.value
            # A real wrap between two polls advances the counter by well under half its range; a
            # larger "wrapped" delta is far likelier an undetected reset, which must not become a
            # huge rate. (A counter fast enough to wrap past half per poll cannot be measured anyway.)
            if wrapped <= modulus // 2:
                return RateResult(wrapped / elapsed, "wrapped")
        return RateResult(None, "reset")

    def forget(self, key: str) -> None:
        """Drop every baseline of `key` (a member that left the pool)."""
        self._state.pop(key, None)

    def keys(self) -> list[str]:
        """Target keys that hold baselines (for tests and for pruning by the caller)."""
        return list(self._state)

    def _restarted(self, before: float | None, now: float | None) -> bool:
        if before is None and now is None:
            return False
        if before is None or now is None:
            # The marker appeared or vanished: the source changed under us, so trust no delta across it.
            return True
        return abs(now - before) > self.start_tolerance_s
