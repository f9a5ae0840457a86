"""How rules read an input's series: member aggregates, time windows, missing data, sustained runs.

Pure and bounded: nothing here reads the clock (`now` is an argument) and every walk over a
series goes back at most as far as the rule needs (its `for` plus the input's `window`), so a
long history costs nothing extra. Series may be deques: they are only read from the end with
`reversed()`, never sliced or indexed in the middle.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from policies.durations import format_duration
from policies.model import Input


@dataclass(frozen=True, slots=True)
class Point:
    """One pool-level reading of an input at `t` (epoch seconds). `value` None = no data then,
    `why` says why.

    `complete` is False when some members had no data and `value` aggregates the others: good
    enough to grow on, never good enough to shrink on. Alarm inputs: 1 while firing, 0 resolved.
    """

    t: float
    value: float | None
    why: str = ""
    complete: bool = True


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 < q ≤ 100) by linear interpolation between the closest ranks
    (numpy's default): p50 of [1, 2, 3, 10] is 2.5, p100 is the max."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def aggregate(values: Iterable[float], how: str) -> float | None:
    """One value for the pool from one value per member (`how`: avg | max | min | sum | pNN);
    None when no member has a value: no data is never 0."""
    vals = list(values)
    if not vals:
        return None
    if how == "avg":
        return sum(vals) / len(vals)
    if how == "max":
        return max(vals)
    if how == "min":
        return min(vals)
    if how == "sum":
        return float(sum(vals))
    if how.startswith("p"):
        return percentile(vals, float(how[1:]))
    raise ValueError(f"unknown aggregate {how!r}")


@dataclass(frozen=True, slots=True)
class Reading:
    """What rules read of one input now. `value` None: no data (`why` says why). `complete`
    False: partial, or a stand-in (`on_missing: treat_as`), so never enough to shrink the pool."""

    value: float | None
    complete: bool
    why: str = ""
    stand_in: bool = False      # `value` is on_missing's treat_as, not a measurement


def _sliding(points: list[tuple[float, float | None]], window: float,
             over: str) -> list[tuple[float, float | None]]:
    """For each (t, v), oldest first, the `over` of the values in (t - window, t]. O(n): a running
    sum for avg, a monotonic deque of indices for max / min."""
    out: list[tuple[float, float | None]] = []
    better: Callable[[float, float], bool] = (lambda a, b: a >= b) if over == "max" else (lambda a, b: a <= b)
    mono: deque[int] = deque()
    total, count, j = 0.0, 0, 0
    for i, (t, v) in enumerate(points):
        if v is not None:
            total += v
            count += 1
            while mono and better(v, points[mono[-1]][1]):  # type: ignore[arg-type]
                mono.pop()
            mono.append(i)
        while points[j][0] <= t - window:
            old = points[j][1]
            if old is not None:
                total -= old
                count -= 1
            if mono and mono[0] == j:
                mono.popleft()
            j += 1
        if not count:
            out.append((t, None))
        elif over == "avg":
            out.append((t, total / count))
        else:
            out.append((t, points[mono[0]][1]))
    return out


class InputView:
    """One input's series as rules see it at `now`: the current reading, and how long a condition
    has held. `horizon` is the longest `for` of the rules that read it (bounds every walk)."""

    __slots__ = ("_windowed", "horizon", "inp", "now", "reading", "series", "stale_after")

    def __init__(self, inp: Input, series: Sequence[Point], now: float, stale_after: float,
                 horizon: float = 0.0) -> None:
        self.inp = inp
        self.series = series
        self.now = now
        self.stale_after = stale_after
        self.horizon = horizon
        self._windowed: list[tuple[float, float | None]] | None = None
        self.reading = self._read()

    # --- the current reading ----------------------------------------------------------------------

    def _problem(self) -> str | None:
        """Why the input has no current data (no point, stale, newest without value), else None."""
        s = self.series
        if not s:
            return "no sample yet"
        newest = s[-1]
        if self.now - newest.t > self.stale_after:
            return f"stale: newest sample is {format_duration(self.now - newest.t)} old"
        if newest.value is None and not self.inp.window:
            return newest.why or "no value"
        return None

    def _read(self) -> Reading:
        inp, s = self.inp, self.series
        if inp.is_alarm:
            # An alarm is state, not a measurement: its last notification holds until the next one.
            if not s:
                return Reading(0.0, True, "no notification yet")
            if s[-1].value is None:
                return Reading(None, False, s[-1].why or "alarm state unknown")
            return Reading(1.0 if s[-1].value > 0 else 0.0, True)
        problem = self._problem()
        if problem is None:
            if not inp.window:
                newest = s[-1]
                return Reading(newest.value, newest.complete, "" if newest.complete else newest.why)
            return self._read_window()
        stand_in = inp.on_missing.treat_as
        if stand_in is None:
            return Reading(None, False, problem)
        return Reading(stand_in, False, f"{problem} (read as {stand_in:g})", stand_in=True)

    def _read_window(self) -> Reading:
        inp, s = self.inp, self.series
        newest = s[-1]
        start = newest.t - inp.window
        stand_in = inp.on_missing.treat_as
        values: list[float] = []
        partial: list[str] = []
        later = newest.t
        for p in reversed(s):
            if p.t <= start:
                break
            if later - p.t > self.stale_after:
                partial.append(f"a gap of {format_duration(later - p.t)} in the window")
            later = p.t
            if p.value is None:
                if stand_in is not None:
                    values.append(stand_in)
                partial.append(p.why or "a point without value")
            else:
                values.append(p.value)
                if not p.complete:
                    partial.append(p.why or "a partial point")
        if s[0].t > start:      # the data does not reach back to the window's start yet
            partial.append(f"the {format_duration(inp.window)} window has "
                           f"{format_duration(newest.t - s[0].t)} of data so far")
        if not values:
            why = newest.why or f"no value in the last {format_duration(inp.window)}"
            if stand_in is None:
                return Reading(None, False, why)
            return Reading(stand_in, False, f"{why} (read as {stand_in:g})", stand_in=True)
        value = sum(values) / len(values) if inp.over == "avg" else (max(values) if inp.over == "max"
                                                                      else min(values))
        return Reading(value, not partial, "; ".join(dict.fromkeys(partial)))

    # --- runs ---------------------------------------------------------------------------------------

    def _raw_back(self) -> Iterator[tuple[float, float | None]]:
        """(t, value) newest first; with `treat_as`, missing points and a stale tail read as it."""
        s, stand_in = self.series, self.inp.on_missing.treat_as
        if stand_in is not None:
            if not s:
                yield self.now, stand_in
                return
            if self.now - s[-1].t > self.stale_after:
                # Data went missing when the newest point went stale: the stand-in run starts there.
                yield self.now, stand_in
                yield s[-1].t + self.stale_after, stand_in
        if self.inp.is_alarm:
            for p in reversed(s):
                yield p.t, None if p.value is None else (1.0 if p.value > 0 else 0.0)
            return
        for p in reversed(s):
            yield p.t, stand_in if p.value is None else p.value

    def _back(self) -> Iterator[tuple[float, float | None]]:
        """(t, value rules compare) newest first: window aggregates for windowed inputs."""
        if not self.inp.window:
            return self._raw_back()
        if self._windowed is None:
            limit = self.now - self.horizon - self.inp.window
            raw = []
            for t, v in self._raw_back():
                raw.append((t, v))
                if t <= limit:
                    break
            raw.reverse()
            self._windowed = _sliding(raw, self.inp.window, self.inp.over)
            self._windowed.reverse()
        return iter(self._windowed)

    def held(self, holds: Callable[[float], bool], need: float) -> float:
        """Seconds the condition has held up to `now`, looking back no further than `need`.

        It has held since the oldest point of the unbroken run of newest points that satisfy it; a
        point without data breaks the run, and so does a gap longer than `stale_after` (unless the
        gap reads as a stand-in that satisfies it; alarm states have no gaps). The walk stops as
        soon as the run reaches `need`: the answer is then at least `need`, which is all a rule asks.
        """
        stand_in = self.inp.on_missing.treat_as
        if stand_in is None and not self.inp.window and not self.inp.is_alarm:
            return self._held_plain(holds, need)
        gaps_break = not self.inp.is_alarm and (stand_in is None or not holds(stand_in))
        it = self._back()
        first = next(it, None)
        if first is None or first[1] is None or not holds(first[1]):
            return 0.0
        limit = self.now - need
        start = later = first[0]
        if start > limit:
            for t, v in it:
                if v is None or not holds(v) or (gaps_break and later - t > self.stale_after):
                    break
                start = later = t
                if t <= limit:
                    break
        return max(0.0, self.now - start)


    def _held_plain(self, holds: Callable[[float], bool], need: float) -> float:
        # The common case (no window, no stand-in) straight off the points: no tuples, no generator.
        s = self.series
        if not s:
            return 0.0
        it = reversed(s)
        p = next(it)
        if p.value is None or not holds(p.value):
            return 0.0
        limit, stale = self.now - need, self.stale_after
        start = p.t
        if start > limit:
            for p in it:
                if p.value is None or start - p.t > stale or not holds(p.value):
                    break
                start = p.t
                if start <= limit:
                    break
        return max(0.0, self.now - start)


def ceil_ratio(base: int, ratio: float) -> int:
    """ceil(base * ratio), ignoring float noise (3 * 40/30 must be 4, not 5)."""
    return max(0, math.ceil(base * ratio - 1e-9))


__all__ = ["InputView", "Point", "Reading", "aggregate", "ceil_ratio", "percentile"]
