"""`scaler simulate`: replay recorded metrics through a pool's policy with a simulated clock, and show
what the policy would have done — a timeline of decisions and sizes, a summary, optionally a plot.

It runs the *same* evaluation code as the service (`policies.evaluate`, `remember`, `window_needed`)
and feeds it the way the engine does: one series of pool-level points per input, and a `PoolState`
with the members that serve or will serve, an operation in progress (`busy`, one at a time), the
completion times of the last actions, when each member entered service (warm-up) and the
stabilization history. The simulated pool: a scale-out creates members that boot for `--boot-delay`
(counted in the size and toward max meanwhile), then enter service; a scale-in takes the newest
members out of the size at once and drains them for `--drain-delay`. An action is complete — and its
cooldown starts — when the last member is in service or drained, like the lifecycle's operations.
It never touches the store, the orchestrator or a router, and reads nothing but the files and the
Prometheus server it is given.

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
  with an input named `size` reads that column as its input instead).
- long format, also accepted: the header `timestamp,input,value` and one row per input and time (rows
  in any order; a `size` row gives the recorded size); rows for inputs the pool does not read are
  ignored.

Recorded size and the simulated one. A per-member average measured on 4 members would not be the
same on the 3 members the simulation has. With `--scale-with-size` (the default when the recording
has a `size` column; `--no-scale-with-size` turns it off), each point of an `aggregate: avg` input is
rescaled to `value * recorded size / simulated members in service`, i.e. the same total load spread
evenly over the simulated members (no member in service: no data). Only `avg` inputs are rescaled:
sums are pool-wide already, and max/min/percentiles depend on how unevenly the load spreads. The
model is deliberately simple: it ignores per-member baselines (idle CPU), uneven ECMP hashing, and
load that the real system shed or queued because it was short of capacity. Without it the recording
is replayed as is whatever the simulated size — fine for pool-wide inputs and alarms, optimistic or
pessimistic for per-member ones.

From Prometheus: `--prometheus URL --query INPUT=PROMQL …` runs one range query
(`/api/v1/query_range`) per input over `--from`/`--to` at `--step` and builds the same series; each
query must return at most one series (aggregate it: `avg(...)`, `sum(...)`). A step without a sample
is a point without data, except for alarm inputs where it means not firing (as `ALERTS{…}` behaves).
Prometheus itself fills steps from the last sample for up to its lookback delta (5 m by default).

Exit codes: 0 done, 1 the Prometheus server failed, 2 bad input (policy, CSV, query or option);
every problem in a file is reported as FILE:LINE:COL: message.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import statistics
import sys
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policies import (
    Cause,
    Decision,
    Input,
    Outcome,
    Point,
    PoolPolicy,
    PoolState,
    TargetRule,
    ThresholdRule,
    Verdict,
    effective_bounds,
    evaluate,
    format_duration,
    is_warming,
    parse_duration,
    remember,
    window_needed,
)
from scaler.errors import ConfigError, ScalerError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "Evaluation",
    "Happening",
    "Options",
    "Recorded",
    "Recording",
    "Result",
    "add_arguments",
    "cmd_simulate",
    "fetch_prometheus",
    "load_pool",
    "main",
    "parse_time",
    "plot",
    "read_csv",
    "render_text",
    "simulate",
    "summarize",
    "to_json",
]

SIZE_COLUMN = "size"
TIME_COLUMNS = ("timestamp", "time")
LONG_HEADER = ("input", "value")
MAX_PROBLEMS = 20
# Prometheus refuses range queries of more than 11,000 points per series.
PROM_MAX_POINTS = 10_000
EPS = 1e-6      # float slack when comparing times built as start + k * step

DEFAULT_BOOT_DELAY = 30.0
DEFAULT_DRAIN_DELAY = 10.0
DEFAULT_PROM_STEP = 10.0


# --- the recording ----------------------------------------------------------------------------------


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
        raise ConfigError([f"--to ({_stamp(end)}) is before --from ({_stamp(start)})"])
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


# --- the simulation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """How to run the simulation; times are epoch seconds, durations seconds."""

    boot_delay: float = DEFAULT_BOOT_DELAY
    drain_delay: float = DEFAULT_DRAIN_DELAY
    step: float | None = None           # evaluation interval; None = the recording's spacing
    start: float | None = None          # None = the recording's first timestamp
    end: float | None = None            # None = its last
    start_size: int | None = None       # None = recorded size at the start if any, else the min in force
    scale_with_size: bool | None = None   # None = when the recording has sizes


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One evaluation: the state the policy saw and what it decided."""

    t: float
    decision: Decision
    in_service: int
    booting: int
    draining: int


@dataclass(frozen=True, slots=True)
class Happening:
    """A line of the timeline: an action decided, an action completed, or a hold."""

    t: float
    kind: str                  # scale_out | scale_in | ready | drained | hold | evaluation
    size: int                  # the size after it
    text: str
    cause: str = ""
    rule: str | None = None
    before: int | None = None  # for actions: the size before
    seq: int = 0               # evaluations done before it (an action: including the one that decided it)


@dataclass
class Result:
    policy: PoolPolicy
    recording: Recording
    options: Options
    start: float
    end: float
    step: float
    start_size: int
    scaled: tuple[str, ...]                # inputs rescaled by size
    evaluations: list[Evaluation]
    happenings: list[Happening]            # actions and completions (holds are derived when rendering)
    fed: dict[str, list[Point]]            # every point as fed to evaluation (after rescaling)
    end_size: int = 0                      # the size after the last evaluation
    pending: str | None = None             # an operation still running at the end
    dry_run: bool = False                  # the policy says dry_run (simulated as if it acted)


@dataclass
class _Op:
    kind: Outcome
    started: float
    done_at: float
    count: int
    before: int
    after: int

    def describe(self) -> str:
        return f"{'scale-out' if self.kind is Outcome.SCALE_OUT else 'scale-in'} {self.before} → {self.after}"


@dataclass
class _Pool:
    in_service: list[float]        # when each member entered service
    booting: int = 0
    draining: int = 0
    op: _Op | None = None
    last_out: float | None = None
    last_in: float | None = None

    @property
    def current(self) -> int:
        return len(self.in_service) + self.booting


def simulate(policy: PoolPolicy, recording: Recording, options: Options | None = None) -> Result:
    """Replay `recording` through `policy`. Pure: no I/O, no clock. Raises ConfigError when the
    options do not fit the recording (no step, an empty range)."""
    options = options or Options()
    # A dry-run policy would only say "would scale": the simulation is a dry run by nature, and
    # acting is what shows the consequences.
    dry_run = policy.dry_run
    if dry_run:
        policy = policy.model_copy(update={"dry_run": False})
    first, last = recording.start, recording.end
    start = options.start if options.start is not None else first
    end = options.end if options.end is not None else last
    if start is None or end is None:
        raise ConfigError([f"{recording.source}: no data to simulate"])
    if end < start:
        raise ConfigError([f"the end ({_stamp(end)}) is before the start ({_stamp(start)})"])
    step = options.step if options.step is not None else recording.spacing
    if step is None or step <= 0:
        raise ConfigError([f"{recording.source}: cannot tell the evaluation interval from a single timestamp: "
                           "give --step"])
    if options.boot_delay < 0 or options.drain_delay < 0:
        raise ConfigError(["--boot-delay and --drain-delay must not be negative"])
    has_sizes = bool(recording.sizes)
    scale = options.scale_with_size if options.scale_with_size is not None else has_sizes
    if scale and not has_sizes:
        raise ConfigError([f"{recording.source}: --scale-with-size needs the recorded size (a '{SIZE_COLUMN}' "
                           "column)"])
    scaled = tuple(name for name, inp in policy.inputs.items()
                   if scale and not inp.is_alarm and inp.aggregate == "avg")
    if options.start_size is not None:
        start_size = options.start_size
    else:
        rec = _recorded_size_at(recording.sizes, start)
        bounds = effective_bounds(policy, start)
        start_size = (min(bounds.max, max(bounds.min, round(rec))) if rec is not None else bounds.min)
    if start_size < 0:
        raise ConfigError(["--start-size must be 0 or more"])

    # Members present at the start are already warm.
    pool = _Pool(in_service=[-math.inf] * start_size)
    series: dict[str, deque[Point]] = {name: deque() for name in policy.inputs}
    fed: dict[str, list[Point]] = {name: [] for name in policy.inputs}
    keep = window_needed(policy)
    pts = [p for p in recording.points if p.t <= end + EPS]
    history: tuple[tuple[float, int], ...] = ()
    evaluations: list[Evaluation] = []
    happenings: list[Happening] = []
    i = 0

    def feed(p: Recorded) -> None:
        value, why = p.value, p.why
        if p.input in scaled and value is not None and p.size is not None and p.size > 0:
            # The load spreads over every member in service, warming ones included; the engine reads
            # only the warm ones, and nothing when there is none.
            serving = len(pool.in_service)
            if serving == 0:
                value, why = None, "no member in service (simulated)"
            elif all(is_warming(policy, since, p.t) for since in pool.in_service):
                value, why = None, "every member in service is warming up (simulated)"
            else:
                value = value * p.size / serving
        point = Point(p.t, value, why)
        s = series[p.input]
        s.append(point)
        fed[p.input].append(point)
        # Keep the newest point whatever its age: an alarm's state holds until the next notification.
        while len(s) > 1 and s[0].t < p.t - keep:
            s.popleft()

    def complete(op: _Op) -> None:
        if op.kind is Outcome.SCALE_OUT:
            pool.in_service += [op.done_at] * op.count
            pool.booting -= op.count
            pool.last_out = op.done_at
            happenings.append(Happening(op.done_at, "ready", pool.current,
                                        f"+{op.count} in service after {format_duration(op.done_at - op.started)} "
                                        "boot", before=op.before, seq=len(evaluations)))
        else:
            pool.draining -= op.count
            pool.last_in = op.done_at
            happenings.append(Happening(op.done_at, "drained", pool.current,
                                        f"-{op.count} drained and deleted after "
                                        f"{format_duration(op.done_at - op.started)}", before=op.before,
                                        seq=len(evaluations)))
        pool.op = None

    n_ticks = int((end - start) / step + EPS) + 1
    for k in range(n_ticks):
        now = start + k * step
        # Everything up to `now`, in time order: recorded points and the completion of the running
        # action (a completion at the same time as a point comes first: the new members are measured).
        while True:
            done = pool.op.done_at if pool.op is not None else math.inf
            nxt = pts[i].t if i < len(pts) else math.inf
            if min(done, nxt) > now + EPS:
                break
            if pool.op is not None and done <= nxt:
                complete(pool.op)
            else:
                feed(pts[i])
                i += 1
        state = PoolState(current=pool.current, toward_max=pool.current,
                          busy=pool.op.describe() if pool.op else None,
                          last_scale_out_at=pool.last_out, last_scale_in_at=pool.last_in,
                          in_service_since=tuple(s for s in pool.in_service if math.isfinite(s)),
                          recommendations=history)
        decision = evaluate(policy, series, state, now)
        history = remember(policy, history, now, decision)
        evaluations.append(Evaluation(now, decision, len(pool.in_service), pool.booting, pool.draining))
        if not decision.acts:
            continue
        before = pool.current
        if decision.outcome is Outcome.SCALE_OUT:
            n = decision.desired - before
            pool.booting += n
            pool.op = _Op(Outcome.SCALE_OUT, now, now + options.boot_delay, n, before, decision.desired)
        else:
            n = before - decision.desired
            # The newest members go first, as the engine picks its victims.
            pool.in_service.sort()
            del pool.in_service[len(pool.in_service) - n:]
            pool.draining += n
            pool.op = _Op(Outcome.SCALE_IN, now, now + options.drain_delay, n, before, decision.desired)
        happenings.append(Happening(now, str(decision.outcome), decision.desired, decision.reason,
                                    str(decision.cause), decision.rule, before, seq=len(evaluations)))
    pending = None
    if pool.op is not None:
        pending = f"{pool.op.describe()} still in progress at the end (done at +{_elapsed(pool.op.done_at - start)})"
    return Result(policy, recording, options, start, end, step, start_size, scaled, evaluations, happenings,
                  fed, pool.current, pending, dry_run)


def _recorded_size_at(sizes: Sequence[tuple[float, float]], t: float) -> float | None:
    """The recorded size at `t` (the last one recorded by then; before any, the first one)."""
    return _recorded_sizes(sizes, [t])[0] if sizes else None


def _recorded_sizes(sizes: Sequence[tuple[float, float]], times: Sequence[float]) -> list[float]:
    """`_recorded_size_at` for each of `times` (ascending), in one pass."""
    out, j = [], 0
    for t in times:
        while j + 1 < len(sizes) and sizes[j + 1][0] <= t + EPS:
            j += 1
        out.append(sizes[j][1])
    return out


# --- summary and rendering --------------------------------------------------------------------------


def _elapsed(seconds: float) -> str:
    """00:04:10 (with tenths when not whole)."""
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    whole = int(s + EPS)
    frac = s - whole
    text = f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"
    if frac > 0.05:
        text += f".{round(frac * 10) % 10}"
    return sign + text


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def summarize(result: Result) -> dict[str, Any]:
    """The summary block as data (seconds are simulated time: each evaluation counts for `step`)."""
    evs, step = result.evaluations, result.step
    total = len(evs) * step
    sizes = [e.decision.current for e in evs]
    policy = result.policy
    actions = [h for h in result.happenings if h.kind in ("scale_out", "scale_in")]
    outs = [h for h in actions if h.kind == "scale_out"]
    ins = [h for h in actions if h.kind == "scale_in"]
    holds: dict[str, dict[str, float]] = {}
    for e in evs:
        d = e.decision
        if d.outcome is Outcome.HOLD:
            h = holds.setdefault(str(d.cause), {"count": 0, "seconds": 0.0})
            h["count"] += 1
            h["seconds"] += step
    rules: dict[str, dict[str, Any]] = {}
    for i, rule in enumerate(policy.rules):
        verdicts = [e.decision.verdicts[i] for e in evs]
        no_data = sum(step for v in verdicts if v.verdict is Verdict.NO_DATA)
        if isinstance(rule, TargetRule):
            name = policy.input_of(rule)
            above = within = below = 0.0
            for e, v in zip(evs, verdicts, strict=True):
                value = e.decision.inputs.get(name)
                if v.verdict is Verdict.NO_DATA or value is None:
                    continue
                if abs(value / rule.target - 1) <= rule.tolerance + 1e-12:
                    within += step
                elif value > rule.target:
                    above += step
                else:
                    below += step
            rules[rule.name] = {"kind": "target", "condition": f"{rule.input} target {rule.target:g} "
                                f"±{rule.tolerance * 100:g}%", "above_s": above, "within_s": within,
                                "below_s": below, "no_data_s": no_data}
        else:
            held = sum(step for v in verdicts if v.verdict in (Verdict.FIRE, Verdict.PENDING))
            fired = sum(step for v in verdicts if v.verdict is Verdict.FIRE)
            condition = rule.condition() if isinstance(rule, ThresholdRule) else f"alarm {rule.alarm} firing"
            rules[rule.name] = {"kind": "threshold" if isinstance(rule, ThresholdRule) else "alarm",
                                "condition": condition, "held_s": held, "fired_s": fired, "no_data_s": no_data}
    missing = {name: sum(step for e in evs if e.decision.inputs.get(name) is None)
               for name in policy.inputs if not policy.inputs[name].is_alarm}
    recorded = None
    if result.recording.sizes:
        rec = _recorded_sizes(result.recording.sizes, [e.t for e in evs])
        if rec:
            recorded = {"mean": sum(rec) / len(rec), "member_seconds": sum(rec) * step, "min": min(rec),
                        "max": max(rec)}
    return {
        "pool": policy.name,
        "start": result.start,
        "end": result.end,
        "step_s": step,
        "duration_s": total,
        "evaluations": len(evs),
        "boot_delay_s": result.options.boot_delay,
        "drain_delay_s": result.options.drain_delay,
        "scaled_with_size": list(result.scaled),
        "size": {
            "start": result.start_size,
            "end": result.end_size,
            "min": min(sizes, default=result.start_size),
            "max": max(sizes, default=result.start_size),
            "mean": sum(sizes) / len(sizes) if sizes else float(result.start_size),
            "member_seconds": sum(sizes) * step,
        },
        "recorded_size": recorded,
        "actions": {
            "scale_out": len(outs),
            "scale_in": len(ins),
            "members_added": sum(h.size - (h.before or 0) for h in outs),
            "members_removed": sum((h.before or 0) - h.size for h in ins),
            "bound_corrections": sum(1 for h in actions if h.cause in (Cause.BELOW_MIN, Cause.ABOVE_MAX)),
            "by_rule": dict(Counter(h.rule for h in actions if h.rule)),
        },
        "time_at_max_s": sum(step for e in evs
                             if e.decision.bounds is not None and e.decision.current >= e.decision.bounds.max),
        "time_at_min_s": sum(step for e in evs
                             if e.decision.bounds is not None and e.decision.current <= e.decision.bounds.min),
        "time_busy_s": sum(step for e in evs if e.booting or e.draining),
        "rules": rules,
        "no_data_s": missing,
        "holds": holds,
        "pending": result.pending,
    }


def _timeline(result: Result, every: bool) -> list[Happening]:
    """Actions and completions, plus holds: every evaluation with `every`, else when the cause changes."""
    lines: list[Happening] = []
    acts = result.happenings        # in the order they happened
    j = 0
    last_cause: str | None = None
    for k, e in enumerate(result.evaluations):
        while j < len(acts) and acts[j].seq <= k:
            lines.append(acts[j])
            j += 1
        d = e.decision
        if d.acts:
            lines.append(acts[j])   # the action this evaluation decided
            j += 1
            last_cause = None
            continue
        cause = str(d.cause)
        if every or cause != last_cause:
            lines.append(Happening(e.t, "hold", d.current, d.reason, cause, d.rule))
        last_cause = cause
    lines += acts[j:]
    return lines


def _line(h: Happening, start: float) -> str:
    if h.kind in ("scale_out", "scale_in"):
        size = f"{h.before} → {h.size}"
        text = h.text if h.cause == Cause.RULE else f"[{h.cause}] {h.text}"
    elif h.kind == "hold":
        size, text = str(h.size), f"[{h.cause}] {h.text}"
    else:
        size, text = str(h.size), h.text
    return f"{_elapsed(h.t - start)}  {h.kind:<9}  {size:<6} {text}"


def render_text(result: Result, summary: Mapping[str, Any], *, every: bool = False,
                policy_path: str = "") -> list[str]:
    """The timeline and the summary block, as lines."""
    s = summary
    out = [f"simulating pool {result.policy.name}" + (f" of {policy_path}" if policy_path else "")
           + f" on {result.recording.source}",
           f"  {_stamp(result.start)} → {_stamp(result.end)} ({format_duration(result.end - result.start)}), "
           f"evaluating every {format_duration(result.step)}; boot {format_duration(result.options.boot_delay)}, "
           f"drain {format_duration(result.options.drain_delay)}; start size {result.start_size}"]
    if result.dry_run:
        out.append("  the policy is dry_run: simulated as if it acted")
    if result.scaled:
        out.append(f"  {', '.join(result.scaled)} rescaled by recorded size / simulated size "
                   "(--no-scale-with-size to replay as recorded)")
    elif result.recording.sizes:
        out.append("  replayed as recorded (no rescaling by size)")
    out.append("")
    out += [_line(h, result.start) for h in _timeline(result, every)]
    total = s["duration_s"] or 1.0
    size, act = s["size"], s["actions"]
    out += ["", "summary",
            f"  period          {format_duration(result.end - result.start)}, {s['evaluations']} evaluations "
            f"every {format_duration(s['step_s'])}",
            f"  size            start {size['start']}, end {size['end']}, min {size['min']}, max {size['max']}, "
            f"mean {size['mean']:.2f}; {size['member_seconds'] / 3600:.2f} member-hours"]
    rec = s["recorded_size"]
    if rec:
        out.append(f"  recorded size   min {rec['min']:g}, max {rec['max']:g}, mean {rec['mean']:.2f}; "
                   f"{rec['member_seconds'] / 3600:.2f} member-hours")
    out.append(f"  actions         {act['scale_out']} scale-out"
               + (f" (+{act['members_added']})" if act["members_added"] else "")
               + f", {act['scale_in']} scale-in" + (f" (-{act['members_removed']})" if act["members_removed"] else "")
               + (f", {act['bound_corrections']} of them bound corrections"
                                                  if act["bound_corrections"] else "")
               + (" — " + ", ".join(f"{r}: {n}" for r, n in act["by_rule"].items()) if act["by_rule"] else ""))
    out.append(f"  at max          {format_duration(s['time_at_max_s'])} ({_pct(s['time_at_max_s'], total)}); "
               f"at min {format_duration(s['time_at_min_s'])} ({_pct(s['time_at_min_s'], total)}); "
               f"an action in progress {format_duration(s['time_busy_s'])} ({_pct(s['time_busy_s'], total)})")
    for i, (name, r) in enumerate(s["rules"].items()):
        head = "  rules           " if i == 0 else "                  "
        if r["kind"] == "target":
            text = (f"{r['condition']}: above {format_duration(r['above_s'])}, within "
                    f"{format_duration(r['within_s'])}, below {format_duration(r['below_s'])}")
        else:
            text = (f"{r['condition']} held {format_duration(r['held_s'])} ({_pct(r['held_s'], total)}), "
                    f"fired {format_duration(r['fired_s'])}")
        if r["no_data_s"]:
            text += f", no data {format_duration(r['no_data_s'])}"
        out.append(f"{head}{name}: {text}")
    holds = sorted(s["holds"].items(), key=lambda kv: -kv[1]["seconds"])
    out.append("  holds by cause  " + ", ".join(f"{c} {format_duration(h['seconds'])} ({h['count']:g})"
                                               for c, h in holds))
    missing = {k: v for k, v in s["no_data_s"].items() if v}
    if missing:
        out.append("  no data         " + ", ".join(f"{k} {format_duration(v)}" for k, v in missing.items()))
    if s["pending"]:
        out.append(f"  at the end      {s['pending']}")
    return out


def to_json(result: Result, summary: Mapping[str, Any], *, every: bool = False) -> dict[str, Any]:
    """Machine-readable output: the timeline (as printed) and the summary; with `every`, every
    evaluation with its inputs and verdicts too."""
    def item(h: Happening) -> dict[str, Any]:
        return {"t": h.t, "at": _elapsed(h.t - result.start), "kind": h.kind, "size": h.size, "before": h.before,
                "cause": h.cause or None, "rule": h.rule, "text": h.text}

    doc: dict[str, Any] = {"pool": result.policy.name, "source": result.recording.source,
                           "timeline": [item(h) for h in _timeline(result, every)], "summary": dict(summary)}
    if every:
        doc["evaluations"] = [
            {"t": e.t, "at": _elapsed(e.t - result.start), "outcome": str(e.decision.outcome),
             "current": e.decision.current, "desired": e.decision.desired, "recommended": e.decision.recommended,
             "cause": str(e.decision.cause), "reason": e.decision.reason, "bounds": str(e.decision.bounds),
             "in_service": e.in_service, "booting": e.booting, "draining": e.draining,
             "inputs": dict(e.decision.inputs),
             "verdicts": [{"rule": v.rule, "verdict": str(v.verdict), "desired": v.desired, "detail": v.detail}
                          for v in e.decision.verdicts]}
            for e in result.evaluations]
    return doc


# --- the plot ---------------------------------------------------------------------------------------


def plot(result: Result, path: Path, *, title: str = "") -> None:
    """A PNG: one panel per input (what rules read, with thresholds and targets), then the size.
    Matplotlib's Agg canvas directly (no pyplot, no display, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    policy, start = result.policy, result.start
    names = list(policy.inputs)
    fig = Figure(figsize=(14, 2.6 * (len(names) + 1) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names) + 1, 1, sharex=True,
                        gridspec_kw={"height_ratios": [1.0] * len(names) + [1.3]})
    ticks = [(e.t - start) / 60 for e in result.evaluations]

    def gaps(values: Sequence[float | None]) -> list[float]:
        return [math.nan if v is None else v for v in values]

    for ax, name in zip(axes[:-1], names, strict=True):
        inp: Input = policy.inputs[name]
        read = gaps([e.decision.inputs.get(name) for e in result.evaluations])
        if inp.is_alarm:
            ax.step(ticks, read, where="post", color="tab:purple", label=f"{name} (alarm {inp.alarm})")
            ax.set_ylim(-0.1, 1.2)
            ax.set_yticks([0, 1], ["resolved", "firing"])
        else:
            if result.scaled and name in result.scaled:
                raw = [p for p in result.recording.points if p.input == name]
                ax.plot([(p.t - start) / 60 for p in raw], gaps([p.value for p in raw]), color="0.7", lw=1,
                        label=f"{name} as recorded")
            ax.plot(ticks, read, color="tab:blue", lw=1.5, label=f"{name} as the rules read it ({inp.describe()})")
        for rule in policy.rules:
            if policy.input_of(rule) != name:
                continue
            if isinstance(rule, ThresholdRule):
                grows = rule.adjust.exact or rule.adjust.sign > 0
                value = next(v for v in (rule.above, rule.below, rule.at_least, rule.at_most) if v is not None)
                ax.axhline(value, ls="--", lw=1, color="tab:red" if grows else "tab:green",
                           label=f"{rule.name}: {rule.condition()}" + (f" for {format_duration(rule.for_s)}"
                                                                       if rule.for_s else ""))
            elif isinstance(rule, TargetRule):
                ax.axhline(rule.target, ls="--", lw=1, color="tab:orange", label=f"{rule.name}: target "
                                                                                 f"{rule.target:g}")
                ax.axhspan(rule.target * (1 - rule.tolerance), rule.target * (1 + rule.tolerance),
                           color="tab:orange", alpha=0.12)
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize="small")
        ax.grid(alpha=0.3)
    ax = axes[-1]
    sizes = [e.decision.current for e in result.evaluations]
    ax.step(ticks, sizes, where="post", color="black", lw=2, label="simulated size")
    ax.step(ticks, [e.decision.recommended for e in result.evaluations], where="post", color="tab:blue", lw=1,
            ls=":", label="recommended by the rules")
    ax.step(ticks, [e.decision.bounds.max if e.decision.bounds else math.nan for e in result.evaluations],
            where="post", color="tab:red", lw=0.8, alpha=0.6, label="max")
    ax.step(ticks, [e.decision.bounds.min if e.decision.bounds else math.nan for e in result.evaluations],
            where="post", color="tab:green", lw=0.8, alpha=0.6, label="min")
    if result.recording.sizes:
        ax.step([(t - start) / 60 for t, _ in result.recording.sizes], [v for _, v in result.recording.sizes],
                where="post", color="0.6", lw=1, ls="--", label="recorded size")
    outs = [h for h in result.happenings if h.kind == "scale_out"]
    ins = [h for h in result.happenings if h.kind == "scale_in"]
    if outs:
        ax.scatter([(h.t - start) / 60 for h in outs], [h.size for h in outs], marker="^", s=60,
                   color="tab:red", zorder=3, label="scale-out decided")
    if ins:
        ax.scatter([(h.t - start) / 60 for h in ins], [h.size for h in ins], marker="v", s=60,
                   color="tab:green", zorder=3, label="scale-in decided")
    for e0, e1 in zip(result.evaluations, result.evaluations[1:], strict=False):
        if e0.booting or e0.draining:
            ax.axvspan((e0.t - start) / 60, (e1.t - start) / 60, color="tab:gray", alpha=0.12, lw=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("members")
    ax.set_xlabel(f"minutes since {_stamp(start)} (shaded: an action in progress)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize="small")
    ax.grid(alpha=0.3)
    fig.suptitle(title or f"pool {policy.name}: simulated on {result.recording.source}")
    fig.savefig(path, dpi=100)


# --- command line -----------------------------------------------------------------------------------

EPILOG = """\
CSV (blank lines and # comments skipped):
  timestamp,<input>[,<input>…][,size]
  timestamp: epoch seconds or ISO 8601 (no zone = UTC), strictly increasing.
  one column per input of the pool (alarm inputs too: 1 firing, 0 resolved), holding the pool-level
  value (already aggregated across members); empty cell = no data then (alarms: no notification,
  the state holds). size (optional): the in-service members the values were measured on.
  Long format also accepted: header timestamp,input,value with one row per input and time.

--scale-with-size (default: on when the CSV has a size column) rescales aggregate: avg inputs to
value * recorded size / simulated members in service (same total load, spread evenly).

Times (--from/--to): epoch seconds, ISO 8601, now, now-1h, or +10m (after the recording's start, or
after --from). Exit codes: 0 done, 1 Prometheus failed, 2 bad input.

examples:
  scaler simulate --policy deploy/examples/policies/web.yaml --metrics deploy/examples/metrics/web.csv \\
      --boot-delay 45s --plot web.png
  scaler simulate --policy web.yaml --prometheus http://prom:9090 --from now-6h --step 15s \\
      --query sessions='avg(haproxy_frontend_current_sessions{job="lb"})'
"""


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of `scaler simulate` on `parser` (and make it run `cmd_simulate`)."""
    parser.description = ("Replay recorded metrics (a CSV file or a Prometheus server's range queries)\n"
                          "through a pool's policy with a simulated clock, using the service's own\n"
                          "evaluation code: the timeline of decisions and sizes, a summary, a plot.")
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--policy", required=True, metavar="FILE", help="the policy file")
    parser.add_argument("--pool", metavar="NAME", help="the pool, when the file has several")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--metrics", metavar="FILE.csv", help="recorded series (format below)")
    src.add_argument("--prometheus", metavar="URL", help="a Prometheus server to run range queries on")
    parser.add_argument("--query", action="append", default=[], metavar="INPUT=PROMQL",
                        help="with --prometheus: the query of one input (repeat for each input)")
    parser.add_argument("--from", dest="start", metavar="TIME",
                        help="start (default: the recording's first timestamp; required with --prometheus)")
    parser.add_argument("--to", dest="end", metavar="TIME",
                        help="end (default: the recording's last timestamp; now with --prometheus)")
    parser.add_argument("--step", type=_duration_arg, metavar="DURATION",
                        help="evaluation interval (default: the CSV's median spacing; "
                             f"{format_duration(DEFAULT_PROM_STEP)} with --prometheus, also its query step)")
    parser.add_argument("--boot-delay", type=_duration_arg, default=DEFAULT_BOOT_DELAY, metavar="DURATION",
                        help="from a scale-out decision to the new members in service "
                             f"(default {format_duration(DEFAULT_BOOT_DELAY)})")
    parser.add_argument("--drain-delay", type=_duration_arg, default=DEFAULT_DRAIN_DELAY, metavar="DURATION",
                        help="from a scale-in decision to the members drained and deleted "
                             f"(default {format_duration(DEFAULT_DRAIN_DELAY)})")
    parser.add_argument("--start-size", type=int, metavar="N",
                        help="members at the start (default: the recorded size then, else the min in force)")
    parser.add_argument("--scale-with-size", action=argparse.BooleanOptionalAction, default=None,
                        help="rescale avg inputs by recorded size / simulated size (default: on when the "
                             "recording has a size column)")
    parser.add_argument("--plot", metavar="OUT.png", help="write a PNG: the inputs with thresholds, then the size")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--verbose", dest="every_evaluation", action="store_true",
                        help="show every evaluation, not only actions and changes of hold cause")
    auth = parser.add_argument_group("Prometheus access")
    auth.add_argument("--bearer-token-file", metavar="FILE", help="send the token in this file (first line)")
    auth.add_argument("--basic-auth-user", metavar="USER")
    auth.add_argument("--basic-auth-password-file", metavar="FILE")
    auth.add_argument("--ca-file", metavar="FILE", help="PEM bundle to verify the server with")
    auth.add_argument("--timeout", type=_duration_arg, default=30.0, metavar="DURATION",
                      help="per query (default 30s)")
    parser.set_defaults(fn=cmd_simulate)


def load_pool(path: Path, pool: str | None) -> PoolPolicy:
    """The pool's policy from one file, validated as `scaler policy check` does (without scaler.yaml)."""
    from scaler.config import check_policy_paths

    policies, problems = check_policy_paths([path], None)
    if problems:
        raise ConfigError(problems)
    if pool is None:
        if len(policies) > 1:
            raise ConfigError([f"{path}: the file has pools {', '.join(sorted(policies))}: choose one with --pool"])
        return next(iter(policies.values()))
    if pool not in policies:
        raise ConfigError([f"{path}: no pool {pool!r} (pools: {', '.join(sorted(policies))})"])
    return policies[pool]


def _time_arg(option: str, text: str | None, *, base: float | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_time(text, base=base)
    except ValueError as exc:
        raise ConfigError([f"{option}: {exc}"]) from None


def _prometheus(args: argparse.Namespace, policy: PoolPolicy) -> tuple[Recording, float, float, float]:
    from urllib.parse import urlsplit

    from pydantic import ValidationError

    from collectors.httpfetch import HttpOptions

    parts = urlsplit(args.prometheus)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError([f"--prometheus: {args.prometheus!r} is not an http(s) URL"])
    if "@" in parts.netloc:
        raise ConfigError(["--prometheus: credentials do not belong in the URL: use --basic-auth-user and "
                           "--basic-auth-password-file, or --bearer-token-file"])
    if args.start is None:
        raise ConfigError(["--from is required with --prometheus (e.g. --from now-1h)"])
    start = _time_arg("--from", args.start, base=None)
    assert start is not None
    end = _time_arg("--to", args.end, base=start)
    end = end if end is not None else parse_time("now")
    step = args.step if args.step is not None else DEFAULT_PROM_STEP
    queries: dict[str, str] = {}
    for q in args.query:
        name, sep, expr = q.partition("=")
        if not sep or not name.strip() or not expr.strip():
            raise ConfigError([f"--query {q!r}: write INPUT=PROMQL"])
        if name.strip() in queries:
            raise ConfigError([f"--query: input {name.strip()!r} has two queries"])
        queries[name.strip()] = expr.strip()
    if (args.basic_auth_user is None) != (args.basic_auth_password_file is None):
        raise ConfigError(["--basic-auth-user and --basic-auth-password-file go together"])
    http: dict[str, Any] = {"timeout_s": min(args.timeout, 60.0)}
    if args.bearer_token_file:
        http["bearer_token"] = {"file": args.bearer_token_file}
    if args.basic_auth_user:
        http["basic_auth"] = {"username": args.basic_auth_user, "password": {"file": args.basic_auth_password_file}}
    if args.ca_file:
        http["ca_file"] = args.ca_file
    try:
        opts = HttpOptions.model_validate(http)
    except ValidationError as exc:
        raise ConfigError([f"Prometheus access: {e['msg'].removeprefix('Value error, ')}"
                           for e in exc.errors()]) from None
    rec = fetch_prometheus(args.prometheus, queries, policy, start, end, step, headers=opts.auth_headers(),
                           verify=opts.verify(), timeout_s=args.timeout)
    return rec, start, end, step


def cmd_simulate(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    """Run `scaler simulate` with parsed `args`; prints the result, returns the exit code."""
    start: float | None
    end: float | None
    step: float | None
    try:
        policy = load_pool(Path(args.policy), args.pool)
        if args.prometheus:
            recording, start, end, step = _prometheus(args, policy)
        else:
            if args.query:
                raise ConfigError(["--query goes with --prometheus"])
            recording = read_csv(Path(args.metrics), policy)
            start = _time_arg("--from", args.start, base=recording.start)
            end = _time_arg("--to", args.end, base=start if start is not None else recording.start)
            step = args.step
        options = Options(boot_delay=args.boot_delay, drain_delay=args.drain_delay, step=step, start=start,
                          end=end, start_size=args.start_size, scale_with_size=args.scale_with_size)
        result = simulate(policy, recording, options)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except ScalerError as exc:
        print(f"scaler simulate: {exc}", file=sys.stderr)
        return 1
    summary = summarize(result)
    if args.json:
        out(json.dumps(to_json(result, summary, every=args.every_evaluation), indent=2, default=str))
    else:
        for line in render_text(result, summary, every=args.every_evaluation, policy_path=args.policy):
            out(line)
    if args.plot:
        try:
            plot(result, Path(args.plot), title=f"pool {policy.name} ({args.policy}) on {recording.source}")
        except OSError as exc:
            print(f"scaler simulate: cannot write {args.plot}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        if not args.json:
            out(f"plot written to {args.plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m scaler.simulate …`, the same as `scaler simulate …`."""
    parser = argparse.ArgumentParser(prog="scaler simulate")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
