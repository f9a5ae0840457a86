"""Pure policy evaluation: (policy, input series, pool state, now) → Decision with a reason.

No I/O, no clock, no database: `now` and every sample are arguments, so the same code runs in the
service, in tests and (later) in a backtest. Every hold carries the reason nothing happened.

Combining rules (as AWS and Nomad do, so the pool only shrinks when everything agrees):
- scale out if any rule fires asking for more; the largest step wins;
- scale in only if no rule asks for more, no input lacks data, and a rule fires asking for less;
  the smallest step wins;
- bounds are hard: below min → grow to min, above max → shrink to max, whatever the rules say;
- members counted against `max` include booting and failed ones.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice

from policies.durations import format_duration
from policies.model import Aggregate, PoolPolicy, ThresholdRule


@dataclass(frozen=True, slots=True)
class Point:
    """One aggregated reading of an input. `value` None = no data then, `why` says why.

    `complete` is False when some members had no data and `value` aggregates the others: good
    enough to grow on, never good enough to shrink on.
    """

    t: float
    value: float | None
    why: str = ""
    complete: bool = True


class Outcome(enum.StrEnum):
    SCALE_OUT = "scale_out"
    SCALE_IN = "scale_in"
    HOLD = "hold"


class Verdict(enum.StrEnum):
    FIRE = "fire"          # condition held for the whole `for` window
    PENDING = "pending"    # condition holds now, not yet for long enough
    QUIET = "quiet"        # condition does not hold
    NO_DATA = "no_data"    # the input has no fresh value


@dataclass(frozen=True, slots=True)
class RuleVerdict:
    rule: str
    verdict: Verdict
    step: int              # signed members asked for when FIRE, else 0
    detail: str


@dataclass(frozen=True, slots=True)
class PoolState:
    """What the pool looks like now, as the caller counts it.

    `current`: members that serve or will serve (creating … in_service).
    `toward_max`: `current` plus failed members not yet cleaned up.
    `busy`: a description of the operation in progress, if any; nothing new starts meanwhile.
    `last_scale_out_at` / `last_scale_in_at`: completion times of the last actions (epoch seconds).
    """

    current: int
    toward_max: int | None = None
    busy: str | None = None
    last_scale_out_at: float | None = None
    last_scale_in_at: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    current: int
    desired: int
    reason: str
    rule: str | None = None
    verdicts: tuple[RuleVerdict, ...] = ()
    inputs: Mapping[str, float | None] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def acts(self) -> bool:
        """True when the caller should change the pool's size."""
        return self.outcome is not Outcome.HOLD and not self.dry_run


def aggregate(values: Iterable[float], how: Aggregate) -> float | None:
    """One value for the pool from one value per member; None when no member has a value."""
    vals = list(values)
    if not vals:
        return None
    if how is Aggregate.AVG:
        return sum(vals) / len(vals)
    if how is Aggregate.MAX:
        return max(vals)
    if how is Aggregate.MIN:
        return min(vals)
    return sum(vals)


def latest(series: Sequence[Point], now: float, stale_after: float) -> Point | None:
    """The newest point if it is fresh and has a value, else None."""
    if not series:
        return None
    p = series[-1]
    if p.value is None or now - p.t > stale_after:
        return None
    return p


def rule_verdict(rule: ThresholdRule, series: Sequence[Point], current: int, now: float,
                 stale_after: float) -> RuleVerdict:
    """How one threshold rule reads its input's series at `now`.

    The condition has held "for D" when every point of the last D seconds satisfies it and the
    run of satisfying points started at least D ago; a point without data, or a gap between two
    points longer than `stale_after`, breaks the run.
    """
    newest = series[-1] if series else None
    if newest is None:
        return RuleVerdict(rule.name, Verdict.NO_DATA, 0, f"no data for input {rule.input!r} yet")
    if newest.value is None:
        why = f": {newest.why}" if newest.why else ""
        return RuleVerdict(rule.name, Verdict.NO_DATA, 0, f"no data for input {rule.input!r}{why}")
    if now - newest.t > stale_after:
        age = format_duration(now - newest.t)
        return RuleVerdict(rule.name, Verdict.NO_DATA, 0,
                           f"input {rule.input!r} is stale: newest sample is {age} old")
    if not rule.holds(newest.value):
        return RuleVerdict(rule.name, Verdict.QUIET, 0, f"{rule.input}={newest.value:.4g}, "
                           f"needs {rule.condition().split(' ', 1)[1]}")
    start = newest.t
    later_t = newest.t
    for p in islice(reversed(series), 1, None):   # series may be a deque: no slicing
        if p.value is None or not rule.holds(p.value) or later_t - p.t > stale_after:
            break
        start = p.t
        later_t = p.t
    held = now - start
    if held + 1e-9 < rule.for_s:
        return RuleVerdict(rule.name, Verdict.PENDING, 0,
                           f"{rule.condition()} ({newest.value:.4g}) for {format_duration(held)} "
                           f"of {format_duration(rule.for_s)}")
    return RuleVerdict(rule.name, Verdict.FIRE, rule.adjust.step(current),
                       f"{rule.condition()} ({newest.value:.4g}) for {format_duration(held)}")


def cooldown_left(policy: PoolPolicy, state: PoolState, direction: Outcome, now: float) -> float:
    """Seconds until an action in `direction` is allowed again (0 = allowed now)."""
    period = policy.cooldown.scale_out if direction is Outcome.SCALE_OUT else policy.cooldown.scale_in
    last = max((t for t in (state.last_scale_out_at, state.last_scale_in_at) if t is not None), default=None)
    return 0.0 if last is None else max(0.0, last + period - now)


def evaluate(policy: PoolPolicy, series: Mapping[str, Sequence[Point]], state: PoolState,
             now: float) -> Decision:
    """Decide the pool's desired size now. Never raises for missing data: that is a hold."""
    current = state.current
    toward_max = state.toward_max if state.toward_max is not None else current
    inputs = {name: (p.value if (p := latest(series.get(name, ()), now, policy.stale_after)) else None)
              for name in policy.inputs}
    verdicts = tuple(rule_verdict(r, series.get(r.input, ()), current, now, policy.stale_after)
                     for r in policy.rules)

    def decide(outcome: Outcome, desired: int, reason: str, rule: str | None = None) -> Decision:
        if outcome is not Outcome.HOLD and policy.dry_run:
            reason = f"dry-run: would {outcome.value.replace('_', '-')} to {desired}: {reason}"
        return Decision(outcome, current, desired, reason, rule, verdicts, inputs, policy.dry_run)

    def hold(reason: str) -> Decision:
        return Decision(Outcome.HOLD, current, current, reason, None, verdicts, inputs, policy.dry_run)

    if state.busy:
        return hold(f"{state.busy} in progress")
    # Bounds are hard and come before rules and cooldowns.
    if current < policy.min:
        if toward_max >= policy.max:
            return hold(f"below min ({current} < {policy.min}) but at max counting failed members "
                        f"({toward_max} of {policy.max})")
        return decide(Outcome.SCALE_OUT, policy.min, f"below min: {current} < {policy.min}")
    if current > policy.max:
        return decide(Outcome.SCALE_IN, policy.max, f"above max: {current} > {policy.max}")

    outs = [v for v in verdicts if v.verdict is Verdict.FIRE and v.step > 0]
    ins = [v for v in verdicts if v.verdict is Verdict.FIRE and v.step < 0]
    missing = [v.detail for v in verdicts if v.verdict is Verdict.NO_DATA]
    missing += [f"input {name!r} is partial: {p.why}" for name in policy.inputs
                if (p := latest(series.get(name, ()), now, policy.stale_after)) and not p.complete]

    if outs:
        win = max(outs, key=lambda v: v.step)
        if toward_max >= policy.max:
            extra = f", {toward_max - current} failed" if toward_max > current else ""
            return hold(f"{win.rule} asks {win.step:+d} but the pool is at max ({current} of "
                        f"{policy.max}{extra})")
        left = cooldown_left(policy, state, Outcome.SCALE_OUT, now)
        if left > 0:
            return hold(f"{win.rule} asks {win.step:+d} but scale-out cooldown has "
                        f"{format_duration(left)} left")
        desired = min(policy.max - (toward_max - current), current + win.step)
        return decide(Outcome.SCALE_OUT, desired, f"{win.rule}: {win.detail}", win.rule)
    if ins:
        win = max(ins, key=lambda v: v.step)   # steps are negative: the max is the smallest step
        if missing:
            names = "; ".join(missing)
            return hold(f"{win.rule} asks {win.step:+d} but scale-in needs every input: {names}")
        if current <= policy.min:
            return hold(f"{win.rule} asks {win.step:+d} but the pool is at min ({policy.min})")
        left = cooldown_left(policy, state, Outcome.SCALE_IN, now)
        if left > 0:
            return hold(f"{win.rule} asks {win.step:+d} but scale-in cooldown has "
                        f"{format_duration(left)} left")
        desired = max(policy.min, current + win.step)
        return decide(Outcome.SCALE_IN, desired, f"{win.rule}: {win.detail}", win.rule)
    if missing:
        return hold("no rule fired; " + "; ".join(missing))
    pending = [v for v in verdicts if v.verdict is Verdict.PENDING]
    if pending:
        return hold("waiting: " + "; ".join(f"{v.rule}: {v.detail}" for v in pending))
    return hold("no rule fired: " + "; ".join(f"{v.rule}: {v.detail}" for v in verdicts))


def window_needed(policy: PoolPolicy) -> float:
    """Seconds of history evaluation can look at; older points may be dropped."""
    return max([0.0, *(r.for_s for r in policy.rules)]) + 2 * policy.stale_after


__all__ = [
    "Decision", "Outcome", "Point", "PoolState", "RuleVerdict", "Verdict", "aggregate",
    "cooldown_left", "evaluate", "rule_verdict", "window_needed",
]
