"""The one fake clock of the tests: time that moves only when the test moves it."""

from __future__ import annotations

# A plausible wall-clock time (2023-11-14T22:13:20Z), so timestamps look like timestamps.
EPOCH = 1_700_000_000.0


class ManualClock:
    """A wall clock (`now`, seconds since the epoch) and a monotonic clock (`mono`) that stand still
    until the test moves them.

    - `clock()` and `clock.time()` return `now`; `clock.monotonic()` returns `mono`. Pass the clock
      itself (or `clock.time`) where code takes a wall clock, `clock.monotonic` where it takes a
      monotonic one.
    - `clock.advance(s)` moves both by `s` seconds. To jump to a moment, set `clock.now`; to step the
      wall clock alone (NTP), change `clock.now` and leave `mono`.
    """

    def __init__(self, now: float = EPOCH, *, mono: float = 100.0) -> None:
        self.now = now
        self.mono = mono

    def __call__(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds

    def __repr__(self) -> str:
        return f"ManualClock(now={self.now!r}, mono={self.mono!r})"
