"""The backtest loop: `simulate()` replays a `Recording` through a pool's policy with a simulated clock
and pool, using the service's own evaluation code. Pure: no I/O, no clock, and never the store, the
orchestrator or a router.

It runs the *same* evaluation code as the service (`policies.evaluate`, `remember`, `window_needed`)
and feeds it the way the engine does: one series of pool-level points per input, and a `PoolState`
with the members that serve or will serve, an operation in progress (`busy`, one at a time), the
completion times of the last actions, when each member entered service (warm-up) and the
stabilization history. The simulated pool: a scale-out creates members that boot for `--boot-delay`
(counted in the size and toward max meanwhile), then enter service; a scale-in takes the newest
members out of the size at once and drains them for `--drain-delay`. An action is complete — and its
cooldown starts — when the last member is in service or drained, like the lifecycle's operations.

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
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from policies import (
    Decision,
    Outcome,
    Point,
    PoolPolicy,
    PoolState,
    effective_bounds,
    evaluate,
    format_duration,
    is_warming,
    remember,
    window_needed,
)
from scaler.errors import ConfigError
from scaler.simulate.recording import (
    EPS,
    SIZE_COLUMN,
    Recorded,
    Recording,
    format_elapsed,
    format_time,
    recorded_size_at,
)

__all__ = ["DEFAULT_BOOT_DELAY", "DEFAULT_DRAIN_DELAY", "Evaluation", "Happening", "Options", "Result", "simulate"]

DEFAULT_BOOT_DELAY = 30.0
DEFAULT_DRAIN_DELAY = 10.0


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
        raise ConfigError([f"the end ({format_time(end)}) is before the start ({format_time(start)})"])
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
        rec = recorded_size_at(recording.sizes, start)
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
        pending = (f"{pool.op.describe()} still in progress at the end "
                   f"(done at +{format_elapsed(pool.op.done_at - start)})")
    return Result(policy, recording, options, start, end, step, start_size, scaled, evaluations, happenings,
                  fed, pool.current, pending, dry_run)
