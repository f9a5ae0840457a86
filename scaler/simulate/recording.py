"""The recorded series a backtest replays (`Recorded` points in a `Recording`) and the times they carry:
parsing the times users write, printing instants and elapsed times. Data and text only: no file, no
network, no policy evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from policies import parse_duration

__all__ = [
    "EPS",
    "SIZE_COLUMN",
    "Recorded",
    "Recording",
    "format_elapsed",
    "format_time",
    "parse_time",
    "recorded_size_at",
    "recorded_sizes",
]

SIZE_COLUMN = "size"
EPS = 1e-6      # float slack when comparing times built as start + k * step


@dataclass(frozen=True, slots=True)
class Recorded:
    """One recorded point of an input: `value` None = no data then (`why` says where)."""

    t: float
    input: str
    value: float | None
    why: str = ""
    size: float | None = None       # the recorded pool size then (None: not recorded)


@dataclass(frozen=True)
class Recording:
    """Recorded points of a pool's inputs, oldest first, whatever their source."""

    source: str                                  # the file or the server, for messages
    points: list[Recorded]
    sizes: list[tuple[float, float]] = field(default_factory=list)   # (t, recorded size)
    spacing: float | None = None                 # typical interval between timestamps

    @property
    def start(self) -> float | None:
        times = [p.t for p in self.points] + [t for t, _ in self.sizes]
        return min(times) if times else None

    @property
    def end(self) -> float | None:
        times = [p.t for p in self.points] + [t for t, _ in self.sizes]
        return max(times) if times else None


def parse_time(text: str, *, now: float | None = None, base: float | None = None) -> float:
    """Epoch seconds of `text`: epoch seconds, ISO 8601 (no zone = UTC), `now`, `now-1h`, or
    `+DURATION` (after `base`, e.g. the recording's start). ValueError says what is accepted."""
    s = text.strip()
    if not s:
        raise ValueError("empty time")
    if s.startswith("+"):
        if base is None:
            raise ValueError(f"{text!r}: a relative time (+DURATION) needs a start to count from")
        return base + parse_duration(s[1:])
    if s.startswith("now"):
        rest = s[3:].strip()
        clock = now if now is not None else datetime.now(UTC).timestamp()
        if not rest:
            return clock
        if rest[0] in "+-":
            d = parse_duration(rest[1:])
            return clock - d if rest[0] == "-" else clock + d
        raise ValueError(f"not a time: {text!r} (use now, now-1h, …)")
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"not a time: {text!r}")
        return value
    try:
        when = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use epoch seconds or ISO 8601 such as "
                         "2024-05-14T09:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def format_time(t: float) -> str:
    """2024-05-14 09:00:00Z."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_elapsed(seconds: float) -> str:
    """00:04:10 (with tenths when not whole)."""
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    whole = int(s + EPS)
    frac = s - whole
    text = f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"
    if frac > 0.05:
        text += f".{round(frac * 10) % 10}"
    return sign + text


def recorded_size_at(sizes: Sequence[tuple[float, float]], t: float) -> float | None:
    """The recorded size at `t` (the last one recorded by then; before any, the first one)."""
    return recorded_sizes(sizes, [t])[0] if sizes else None


def recorded_sizes(sizes: Sequence[tuple[float, float]], times: Sequence[float]) -> list[float]:
    """`recorded_size_at` for each of `times` (ascending), in one pass."""
    out, j = [], 0
    for t in times:
        while j + 1 < len(sizes) and sizes[j + 1][0] <= t + EPS:
            j += 1
        out.append(sizes[j][1])
    return out
