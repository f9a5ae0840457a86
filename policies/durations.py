"""Parse and print human durations ("90s", "5m", "1h30m", "250ms"). Pure; no clock.

`Duration` and `PositiveDuration` are the pydantic field types of every duration in the policy
files and in scaler.yaml: a finite number of seconds, at least 0 (`Duration`: 0 has a meaning, such
as "no window" or "no cooldown") or more than 0 (`PositiveDuration`: where 0 would make what the
field configures fire always or never, e.g. `stale_after: 0` makes every input stale).
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator, Field

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str | int | float) -> float:
    """Seconds in `text`. A bare number is seconds. Raises ValueError naming the text."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        # .inf, .nan and 1e999 in YAML: "never" and "always" are not durations (and NaN compares
        # false with everything, so it would silently turn off what it configures).
        if not math.isfinite(text):
            raise ValueError(f"duration must be a finite number of seconds, got {text!r}")
        if text < 0:
            raise ValueError(f"duration must not be negative: {text!r}")
        return float(text)
    s = text.strip().replace(" ", "")
    if not s:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h30m)")
    if not math.isfinite(total):
        raise ValueError(f"duration is too long: {text!r}")
    return total


# A finite number of seconds, 0 or more; see the module's docstring.
Duration = Annotated[float, BeforeValidator(parse_duration)]
# A finite number of seconds, more than 0.
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


def format_duration(seconds: float) -> str:
    """Short readable form: 0.25 → '250ms', 75 → '1m15s', 3600 → '1h'."""
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    s = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            parts.append(f"{s // size}{unit}")
            s %= size
    if s or not parts:
        parts.append(f"{s}s")
    return "".join(parts)
