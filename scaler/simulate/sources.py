"""Reads a recording for one pool: a CSV file (wide or long format) or Prometheus range queries, into a
`Recording`. It only reads — it evaluates nothing and writes nothing; what the user must fix is a
ConfigError (FILE:LINE:COL: message for a file), a server that cannot answer a ScalerError.

Recorded series (CSV, UTF-8; blank lines and lines starting with `#` are skipped)

    timestamp,sessions,cpu,HighLatency,size
    2024-05-14T09:00:00Z,3.1,22,0,1
    2024-05-14T09:00:05Z,3.4,,0,1          <- no cpu data at 09:00:05
    1715677210,3.9,24,1,1                  <- epoch seconds work too

- `timestamp`: epoch seconds or ISO 8601 (a time without a zone is UTC); strictly increasing.
- one column per input of the policy, named as under `inputs:`, holding the **pool-level** value the
  engine would have computed (already aggregated across members, e.g. the average of
  current_sessions). An empty cell, `nan` or `inf` is a point without data at that time (missing data,
  as when a collection fails); a missing row is a gap (stale after `stale_after`). Columns the pool
  does not read are ignored.
- alarm inputs (`source: alarm`, including alarms a rule declares implicitly) are columns too: 1 while
  firing, 0 once resolved; an empty cell means no notification then (the previous state holds; before
  the first one, not firing).
- `size` (optional): the number of in-service members the recorded values were measured on (a pool
  with an input named `size` reads that column as its input instead). What the backtest does with it:
  `scaler.simulate.backtest`.
- long format, also accepted: the header `timestamp,input,value` and one row per input and time (rows
  in any order; a `size` row gives the recorded size); rows for inputs the pool does not read are
  ignored.

From Prometheus: `--prometheus URL --query INPUT=PROMQL …` runs one range query
(`/api/v1/query_range`) per input over `--from`/`--to` at `--step` and builds the same series; each
query must return at most one series (aggregate it: `avg(...)`, `sum(...)`). A step without a sample
is a point without data, except for alarm inputs where it means not firing (as `ALERTS{…}` behaves).
Prometheus itself fills steps from the last sample for up to its lookback delta (5 m by default).
"""

from __future__ import annotations

import csv
import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policies import PoolPolicy
from scaler.errors import ConfigError, ScalerError
from scaler.simulate.recording import EPS, SIZE_COLUMN, Recorded, Recording, format_time, parse_time

if TYPE_CHECKING:
    import httpx

__all__ = ["MAX_PROBLEMS", "fetch_prometheus", "read_csv"]

TIME_COLUMNS = ("timestamp", "time")
LONG_HEADER = ("input", "value")
MAX_PROBLEMS = 20
# Prometheus refuses range queries of more than 11,000 points per series.
PROM_MAX_POINTS = 10_000


# --- CSV --------------------------------------------------------------------------------------------


def _columns(line: str, fields: Sequence[str]) -> list[int]:
    """1-based character column where each field starts (quotes make it approximate)."""
    out, pos = [], 0
    for f in fields:
        found = line.find(f, pos) if '"' in line else pos
        start = found if found >= 0 else pos
        out.append(start + 1)
        pos = start + len(f) + 1
    return out


def _median_spacing(times: Sequence[float]) -> float | None:
    diffs = [b - a for a, b in itertools.pairwise(sorted(set(times))) if b - a > 0]
    return statistics.median(diffs) if diffs else None


class _Problems:
    """Collects FILE:LINE:COL problems; stops counting after MAX_PROBLEMS."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []
        self.dropped = 0

    def add(self, line: int, col: int, message: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(f"{self.path}:{line}:{col}: {message}")
        else:
            self.dropped += 1

    def full(self) -> bool:
        return len(self.items) >= MAX_PROBLEMS

    def raise_if_any(self) -> None:
        if self.items:
            more = [f"{self.path}: … and {self.dropped} more problems"] if self.dropped else []
            raise ConfigError(self.items + more)


def _number(text: str) -> float | None:
    """A cell's value: None when empty, nan or inf (no data); ValueError when not a number."""
    s = text.strip()
    if not s:
        return None
    value = float(s)
    return value if math.isfinite(value) else None


def read_csv(path: Path, pool: PoolPolicy) -> Recording:
    """Read a recording for `pool` (see the module docstring for the format). Raises ConfigError
    with every problem as FILE:LINE:COL: message (the first MAX_PROBLEMS of them)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([f"{path}: cannot read: {reason}"]) from exc
    problems = _Problems(path)
    rows: list[tuple[int, str, list[str]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        rows.append((number, line, next(csv.reader([line]))))
    if not rows:
        raise ConfigError([f"{path}:1:1: the file has no header (expected timestamp,<input>,…)"])
    head_line, head_text, header = rows[0]
    names = [h.strip() for h in header]
    head_cols = _columns(head_text, header)
    if not names or names[0].lower() not in TIME_COLUMNS:
        raise ConfigError([f"{path}:{head_line}:1: the first column must be 'timestamp' (epoch seconds or "
                           f"ISO 8601), got {names[0] if names else ''!r}"])
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            problems.add(head_line, head_cols[i], f"column {name!r} appears twice (columns {seen[name] + 1} and "
                                                  f"{i + 1})")
        seen[name] = i
    problems.raise_if_any()
    if tuple(n.lower() for n in names[1:]) == LONG_HEADER:
        return _read_long(path, pool, rows[1:], problems)
    return _read_wide(path, pool, head_line, names, rows[1:], problems)


def _missing_inputs(pool: PoolPolicy, have: Sequence[str]) -> list[str]:
    return [name for name in pool.inputs if name not in have]


def _read_wide(path: Path, pool: PoolPolicy, head_line: int, names: list[str],
               rows: list[tuple[int, str, list[str]]], problems: _Problems) -> Recording:
    missing = _missing_inputs(pool, names)
    if missing:
        have = ", ".join(names)
        for name in missing:
            what = "alarm input" if pool.inputs[name].is_alarm else "input"
            problems.add(head_line, 1, f"no column for {what} {name!r} of pool {pool.name} (columns: {have}; "
                                       f"pool {pool.name} reads {', '.join(pool.inputs)})")
        problems.raise_if_any()
    size_at = names.index(SIZE_COLUMN) if SIZE_COLUMN in names and SIZE_COLUMN not in pool.inputs else None
    used = [(names.index(name), name, pool.inputs[name]) for name in pool.inputs]
    points: list[Recorded] = []
    sizes: list[tuple[float, float]] = []
    last_t: float | None = None
    last_line = 0
    size: float | None = None
    for number, line, fields in rows:
        if problems.full():
            problems.add(number, 1, "")     # only counted
            continue
        cols = _columns(line, fields)
        if len(fields) != len(names):
            problems.add(number, 1, f"{len(fields)} fields, the header has {len(names)}")
            continue
        try:
            t = parse_time(fields[0])
        except ValueError as exc:
            problems.add(number, cols[0], f"timestamp: {exc}")
            continue
        if last_t is not None and t <= last_t:
            problems.add(number, cols[0], f"timestamp {fields[0].strip()} is not after the one on line {last_line}")
            continue
        last_t, last_line = t, number
        if size_at is not None:
            try:
                got = _number(fields[size_at])
                if got is not None and got < 0:
                    raise ValueError
            except ValueError:
                problems.add(number, cols[size_at], f"{SIZE_COLUMN}: not a size: {fields[size_at].strip()!r}")
                continue
            if got is not None:
                size = got
                sizes.append((t, got))
        for at, name, inp in used:
            cell = fields[at]
            try:
                value = _number(cell)
            except ValueError:
                problems.add(number, cols[at], f"{name}: not a number: {cell.strip()!r}")
                continue
            if inp.is_alarm:
                if value is not None:       # an empty alarm cell: no notification, the state holds
                    points.append(Recorded(t, name, value, size=size))
            elif value is None:
                why = "no value" if not cell.strip() else f"{cell.strip()}"
                points.append(Recorded(t, name, None, f"{why} in {path.name} line {number}", size))
            else:
                points.append(Recorded(t, name, value, size=size))
    problems.raise_if_any()
    return Recording(str(path), points, sizes, _median_spacing([p.t for p in points] + [t for t, _ in sizes]))


def _read_long(path: Path, pool: PoolPolicy, rows: list[tuple[int, str, list[str]]],
               problems: _Problems) -> Recording:
    got: list[tuple[float, int, str, float | None, int]] = []
    seen: dict[tuple[str, float], int] = {}
    for number, line, fields in rows:
        if problems.full():
            problems.add(number, 1, "")
            continue
        cols = _columns(line, fields)
        if len(fields) != 3:
            problems.add(number, 1, f"{len(fields)} fields, the header has 3 (timestamp,input,value)")
            continue
        try:
            t = parse_time(fields[0])
        except ValueError as exc:
            problems.add(number, cols[0], f"timestamp: {exc}")
            continue
        name = fields[1].strip()
        if not name:
            problems.add(number, cols[1], "input: empty")
            continue
        if name not in pool.inputs and name != SIZE_COLUMN:
            continue
        try:
            value = _number(fields[2])
            if name == SIZE_COLUMN and value is not None and value < 0:
                raise ValueError
        except ValueError:
            problems.add(number, cols[2], f"{name}: not a {'size' if name == SIZE_COLUMN else 'number'}: "
                                          f"{fields[2].strip()!r}")
            continue
        if (name, t) in seen:
            problems.add(number, cols[0], f"{name}: a second value at {fields[0].strip()} (first on line "
                                          f"{seen[(name, t)]})")
            continue
        seen[(name, t)] = number
        got.append((t, number, name, value, cols[2]))
    names = {name for _, _, name, _, _ in got}
    for name in _missing_inputs(pool, sorted(names)):
        problems.add(1, 1, f"no row for input {name!r} of pool {pool.name} (pool {pool.name} reads "
                           f"{', '.join(pool.inputs)})")
    problems.raise_if_any()
    got.sort(key=lambda r: (r[0], r[1]))
    sizes = [(t, v) for t, _, name, v, _ in got if name == SIZE_COLUMN and v is not None]
    points: list[Recorded] = []
    size: float | None = None
    for t, number, name, value, _ in got:
        if name == SIZE_COLUMN:
            size = value if value is not None else size
            continue
        if pool.inputs[name].is_alarm and value is None:
            continue
        why = "" if value is not None else f"no value in {path.name} line {number}"
        points.append(Recorded(t, name, value, why, size))
    return Recording(str(path), points, sizes, _median_spacing([r[0] for r in got]))



# --- Prometheus -------------------------------------------------------------------------------------


def fetch_prometheus(url: str, queries: Mapping[str, str], pool: PoolPolicy, start: float, end: float,
                     step: float, *, headers: Mapping[str, str] | None = None, verify: Any = True,
                     timeout_s: float = 30.0, transport: httpx.BaseTransport | None = None) -> Recording:
    """One range query per input of `pool` over [start, end] every `step` seconds. ConfigError for
    what the user must fix (a missing or bad query, several series); ScalerError when the server
    cannot answer. `transport` is for tests (httpx.MockTransport)."""
    import httpx

    base = url.rstrip("/")
    problems = [f"--query: no query for input {name!r} of pool {pool.name} (write --query {name}=PROMQL)"
                for name in pool.inputs if name not in queries]
    problems += [f"--query {name}=…: pool {pool.name} has no input {name!r} (inputs: {', '.join(pool.inputs)})"
                 for name in queries if name not in pool.inputs]
    if problems:
        raise ConfigError(problems)
    if step <= 0:
        raise ConfigError(["--step must be more than 0"])
    if end < start:
        raise ConfigError([f"--to ({format_time(end)}) is before --from ({format_time(start)})"])
    n_steps = int((end - start) / step + EPS) + 1
    grid = [start + k * step for k in range(n_steps)]
    points: list[Recorded] = []
    with httpx.Client(timeout=timeout_s, verify=verify, headers=dict(headers or {}), trust_env=False,
                      transport=transport) as client:
        for name, query in queries.items():
            inp = pool.inputs[name]
            values: dict[int, float | None] = {}
            for first in range(0, n_steps, PROM_MAX_POINTS):
                last = min(n_steps, first + PROM_MAX_POINTS) - 1
                values.update(_range_query(client, base, name, query, grid[first], grid[last], step, start,
                                           timeout_s))
            for k, t in enumerate(grid):
                if k in values:
                    v = values[k]
                    points.append(Recorded(t, name, v, "" if v is not None else "NaN in Prometheus"))
                elif inp.is_alarm:
                    points.append(Recorded(t, name, 0.0))
                else:
                    points.append(Recorded(t, name, None, "no sample in Prometheus at this step"))
    points.sort(key=lambda p: p.t)
    return Recording(base, points, [], step)


def _range_query(client: httpx.Client, base: str, name: str, query: str, start: float, end: float,
                 step: float, origin: float, timeout_s: float) -> dict[int, float | None]:
    import httpx

    what = f"--query {name}={query}"
    try:
        r = client.post(f"{base}/api/v1/query_range",
                        data={"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}",
                              "timeout": f"{timeout_s:g}"})
    except httpx.HTTPError as exc:
        raise ScalerError(f"prometheus {base}: {type(exc).__name__}: {exc}") from exc
    if r.status_code in (401, 403):
        raise ScalerError(f"prometheus {base}: HTTP {r.status_code} (credentials refused or missing)")
    try:
        doc = r.json()
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("status") == "error":
        kind, error = doc.get("errorType", "unknown"), doc.get("error", "")
        if kind == "bad_data":
            raise ConfigError([f"{what}: Prometheus said bad_data: {error}"])
        raise ScalerError(f"prometheus {base}: {what}: Prometheus said {kind}: {error}")
    if r.status_code != 200 or not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise ScalerError(f"prometheus {base}: {what}: HTTP {r.status_code}, not a Prometheus API answer")
    data = doc["data"]
    if data.get("resultType") != "matrix":
        raise ConfigError([f"{what}: the result is a {data.get('resultType')}, not a range vector"])
    result = data.get("result") or []
    if len(result) > 1:
        shown = "; ".join("{" + ", ".join(f'{k}="{v}"' for k, v in sorted((s.get("metric") or {}).items())) + "}"
                          for s in result[:3])
        raise ConfigError([f"{what}: returned {len(result)} series, one is needed: aggregate it, e.g. "
                           f"avg({query}) (series: {shown}{' …' if len(result) > 3 else ''})"])
    out: dict[int, float | None] = {}
    try:
        for stamp, text in (result[0]["values"] if result else []):
            v = float(text)
            out[round((float(stamp) - origin) / step)] = v if math.isfinite(v) else None
    except (KeyError, TypeError, ValueError) as exc:
        raise ScalerError(f"prometheus {base}: {what}: malformed matrix: {exc!r}") from exc
    return out
