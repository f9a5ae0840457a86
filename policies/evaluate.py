"""Pure policy evaluation: (policy, input series, pool state, now) → Decision with a reason.

No I/O, no clock, no database: `now`, every sample and the recent history are arguments, so the
same code runs in the service, in tests and in a backtest. Every hold carries the reason nothing
happened, in words an operator reads at 3 a.m., and a machine-readable `cause`.

Combining rules (as AWS, Nomad and the HPA do, so the pool only shrinks when everything agrees):
- each rule has an opinion — a size it asks for — or none: a threshold or alarm rule has one only
  when it fires; a target-tracking rule with data always has one (in tolerance: keep the size);
- scale out if any opinion is above the current size; the largest wins;
- scale in only if every opinion is below the current size (the largest of them, i.e. the smallest
  step, wins), every input a rule reads has fresh and complete data, no member is warming up, and
  the stabilization window agrees;
- bounds (scheduled ones included) are hard and come first: below min → grow to min, above max →
  shrink to max, whatever the rules say and without waiting for cooldowns;
- members counted against `max` include booting and failed ones;
- rules size the pool from the members they measured: with `warmup`, members still warming are
  left out of the inputs (by the caller) and counted as already added (here).
"""

from __future__ import annotations

import enum
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from policies.durations import format_duration
from policies.model import AlarmRule, Input, PoolPolicy, TargetRule, ThresholdRule
from policies.schedule import Bounds, effective_bounds
from policies.series import InputView, Point, aggregate, ceil_ratio


class Outcome(enum.StrEnum):
    SCALE_OUT = "scale_out"
    SCALE_IN = "scale_in"
    HOLD = "hold"


class Verdict(enum.StrEnum):
    FIRE = "fire"          # the rule asks for a change (condition held for `for`; target out of tolerance)
    PENDING = "pending"    # condition holds now, not yet for long enough
    QUIET = "quiet"        # condition does not hold (target tracking: within tolerance)
    NO_DATA = "no_data"    # the input has no fresh value


class Cause(enum.StrEnum):
    """Why a decision is what it is, for metrics and filters; `reason` says it in words."""

    RULE = "rule"                  # a rule asked and nothing stood in the way (acted, or dry-run)
    BELOW_MIN = "below_min"        # grew to the min in force
    ABOVE_MAX = "above_max"        # shrank to the max in force
    BUSY = "busy"                  # an operation is in progress
    AT_MAX = "at_max"
    AT_MIN = "at_min"
    COOLDOWN = "cooldown"
    MISSING_DATA = "missing_data"  # scale-in needs fresh, complete data on every input rules read
    WARMUP = "warmup"              # members warming: counted as added, and scale-in waits
    STABILIZATION = "stabilization"
    KEPT = "kept"                  # a rule with an opinion keeps the current size (e.g. within tolerance)
    PENDING = "pending"            # a condition holds, not yet for long enough
    QUIET = "quiet"                # no rule fired
    PAUSED = "paused"              # an operator paused the pool: what the rules asked is only recorded


@dataclass(frozen=True, slots=True)
class RuleVerdict:
    rule: str
    verdict: Verdict
    step: int              # signed members the rule asks for, from the members it measured; else 0
    detail: str
    desired: int | None = None   # the size it asks for; None = no opinion (never holds back a scale-in)


@dataclass(frozen=True, slots=True)
class PoolState:
    """What the pool looks like now, as the caller counts it.

    `current`: members that serve or will serve (creating … in_service).
    `toward_max`: `current` plus failed members not yet cleaned up.
    `busy`: a description of the operation in progress, if any; nothing new starts meanwhile.
    `last_scale_out_at` / `last_scale_in_at`: completion times of the last actions (epoch seconds).
    `in_service_since`: when each in-service member entered service (epoch seconds); those less
    than `policy.warmup` ago are warming up. Empty = nobody is warming.
    `recommendations`: (t, recommended) of previous evaluations, oldest first, as kept by
    `remember`; the stabilization window reads them. Empty = no stabilization history.
    """

    current: int
    toward_max: int | None = None
    busy: str | None = None
    last_scale_out_at: float | None = None
    last_scale_in_at: float | None = None
    in_service_since: tuple[float, ...] = ()
    recommendations: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one evaluation. `desired` is the size to go to (== current for a hold);
    `recommended` is what the rules asked for before bounds, warm-up, cooldowns and stabilization
    (what `remember` records); `bounds` the min/max in force and where they come from."""

    outcome: Outcome
    current: int
    desired: int
    reason: str
    rule: str | None = None
    verdicts: tuple[RuleVerdict, ...] = ()
    inputs: Mapping[str, float | None] = field(default_factory=dict)
    dry_run: bool = False
    recommended: int = 0
    bounds: Bounds | None = None
    cause: Cause = Cause.QUIET
    warming: int = 0

    @property
    def acts(self) -> bool:
        """True when the caller should change the pool's size."""
        return self.outcome is not Outcome.HOLD and not self.dry_run


def cooldown_left(policy: PoolPolicy, state: PoolState, direction: Outcome, now: float) -> float:
    """Seconds until an action in `direction` is allowed again (0 = allowed now)."""
    period = policy.cooldown.scale_out if direction is Outcome.SCALE_OUT else policy.cooldown.scale_in
    last = max((t for t in (state.last_scale_out_at, state.last_scale_in_at) if t is not None), default=None)
    return 0.0 if last is None else max(0.0, last + period - now)


def is_warming(policy: PoolPolicy, in_service_since: float, now: float) -> bool:
    """True while a member that entered service at `in_service_since` is warming up: the caller
    leaves its metrics out of the inputs' aggregates."""
    return now - in_service_since < policy.warmup


def warming_left(policy: PoolPolicy, state: PoolState, now: float) -> tuple[int, float]:
    """(members warming up, seconds until the last of them is warm)."""
    if not policy.warmup:
        return 0, 0.0
    lefts = [since + policy.warmup - now for since in state.in_service_since if is_warming(policy, since, now)]
    return min(len(lefts), state.current), max(lefts, default=0.0)


def window_needed(policy: PoolPolicy) -> float:
    """Seconds of history evaluation can look at; older points may be dropped. Keep at least the
    newest point of an alarm series whatever its age (an alarm fires until it is resolved)."""
    longest = max([0.0, *(i.window for i in policy.inputs.values())])
    for rule in policy.rules:
        inp = policy.inputs[policy.input_of(rule)]
        longest = max(longest, (0.0 if isinstance(rule, TargetRule) else rule.for_s) + inp.window)
    return longest + 2 * policy.stale_after


def history_needed(policy: PoolPolicy) -> float:
    """Seconds of recommendations the stabilization windows read."""
    return max(policy.stabilization.scale_in, policy.stabilization.scale_out)


def remember(policy: PoolPolicy, history: Sequence[tuple[float, int]], now: float,
             decision: Decision) -> tuple[tuple[float, int], ...]:
    """The stabilization history to pass as `PoolState.recommendations` next time: `history` plus
    (now, decision.recommended), without entries older than the longest stabilization window."""
    keep = history_needed(policy)
    if not keep:
        return ()
    return (*((t, r) for t, r in history if now - t <= keep), (now, decision.recommended))


@dataclass(frozen=True, slots=True)
class _Plan:
    """What evaluation derives from a policy alone: computed once per policy object."""

    rule_inputs: tuple[str, ...]        # the input each rule reads
    horizons: Mapping[str, float]       # per input, the longest `for` of the rules reading it
    used: tuple[str, ...]               # inputs read by a rule, in rule order


_PLANS: dict[int, tuple[weakref.ref[PoolPolicy], _Plan]] = {}


def _plan(policy: PoolPolicy) -> _Plan:
    # Memoised by object identity (a policy is immutable): this is a cache, not state, and it
    # forgets a policy when the policy is garbage-collected (e.g. after a reload).
    key = id(policy)
    hit = _PLANS.get(key)
    if hit is not None and hit[0]() is policy:
        return hit[1]
    rule_inputs = tuple(policy.input_of(rule) for rule in policy.rules)
    horizons = dict.fromkeys(policy.inputs, 0.0)
    for rule, name in zip(policy.rules, rule_inputs, strict=True):
        if not isinstance(rule, TargetRule):
            horizons[name] = max(horizons[name], rule.for_s)
    plan = _Plan(rule_inputs, horizons, tuple(dict.fromkeys(rule_inputs)))

    def forget(ref: weakref.ref[PoolPolicy]) -> None:
        if _PLANS.get(key, (None,))[0] is ref:
            del _PLANS[key]

    _PLANS[key] = (weakref.ref(policy, forget), plan)
    return plan


def _no_data(rule: str, name: str, why: str) -> RuleVerdict:
    return RuleVerdict(rule, Verdict.NO_DATA, 0, f"missing data for input {name}: {why}")


def _firing(value: float) -> bool:
    return value > 0


def _threshold(rule: ThresholdRule | AlarmRule, name: str, inp: Input, view: InputView,
               base: int) -> RuleVerdict:
    reading = view.reading
    if reading.value is None:
        return _no_data(rule.name, name, reading.why)
    holds: Callable[[float], bool]
    if isinstance(rule, AlarmRule):
        holds = _firing
        what = f"alarm {inp.alarm}"
        if not holds(reading.value):
            state = "resolved" if view.series else f"not firing ({reading.why})"
            return RuleVerdict(rule.name, Verdict.QUIET, 0, f"{what} {state}")
        condition = f"{what} firing"
    else:
        holds = rule.holds
        if not holds(reading.value):
            return RuleVerdict(rule.name, Verdict.QUIET, 0,
                               f"{rule.input}={reading.value:.4g}, needs {rule.comparison()}")
        condition = f"{rule.condition()} ({reading.value:.4g})"
    if rule.for_s:
        held = view.held(holds, rule.for_s)
        if held + 1e-9 < rule.for_s:
            return RuleVerdict(rule.name, Verdict.PENDING, 0,
                               f"{condition} for {format_duration(held)} of {format_duration(rule.for_s)}")
        condition += f" for {format_duration(rule.for_s)}"
    step = rule.limit(rule.adjust.step(base))
    desired = max(0, base + step)
    return RuleVerdict(rule.name, Verdict.FIRE, desired - base, f"{condition}: {rule.adjust}", desired)


def _target(rule: TargetRule, view: InputView, base: int, current: int) -> RuleVerdict:
    reading = view.reading
    if reading.value is None:
        return _no_data(rule.name, rule.input, reading.why)
    value, target = reading.value, rule.target
    vs = f"{rule.input}={value:.4g} vs target {target:g}"
    keep = current if rule.scale_in else None
    if abs(value / target - 1) <= rule.tolerance + 1e-12:
        return RuleVerdict(rule.name, Verdict.QUIET, 0,
                           f"within tolerance: {value:.4g} vs target {target:g} ±{rule.tolerance * 100:g}%", keep)
    raw = ceil_ratio(base, value / target)
    step = rule.limit(raw - base)
    how = f"ceil({base} * {value:.4g}/{target:g}) = {raw}"
    if step == 0:
        return RuleVerdict(rule.name, Verdict.QUIET, 0, f"{vs}: {how}, no change", keep)
    if step < 0 and not rule.scale_in:
        return RuleVerdict(rule.name, Verdict.QUIET, 0, f"{vs}: {how}, but this rule does not scale in")
    limited = f" (limited to {step:+d})" if base + step != raw else ""
    return RuleVerdict(rule.name, Verdict.FIRE, step, f"{vs}: {how}{limited}", base + step)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def evaluate(policy: PoolPolicy, series: Mapping[str, Sequence[Point]], state: PoolState,
             now: float) -> Decision:
    """Decide the pool's desired size now. Never raises for missing data: that is a hold."""
    current = state.current
    toward_max = state.toward_max if state.toward_max is not None else current
    failed = max(0, toward_max - current)
    bounds = effective_bounds(policy, now)
    warming, warm_left = warming_left(policy, state, now)
    base = current - warming      # the members the inputs were measured on

    plan = _plan(policy)
    views = {name: InputView(inp, series.get(name, ()), now, policy.stale_after, plan.horizons[name])
             for name, inp in policy.inputs.items()}
    verdicts = tuple(_target(rule, views[name], base, current) if isinstance(rule, TargetRule)
                     else _threshold(rule, name, policy.inputs[name], views[name], base)
                     for rule, name in zip(policy.rules, plan.rule_inputs, strict=True))
    inputs = {name: v.reading.value for name, v in views.items()}
    missing = [f"{'partial' if r.value is not None and not r.stand_in else 'missing'} data for input {name}: "
               f"{r.why}" for name in plan.used if not (r := views[name].reading).complete]

    opinions = [v for v in verdicts if v.desired is not None]
    outs = [v for v in opinions if v.desired is not None and v.desired > current]
    ins = [v for v in opinions if v.desired is not None and v.desired < current]
    keepers = [v for v in opinions if v.desired == current]
    out_win = max(outs, key=lambda v: v.desired or 0) if outs else None
    in_win = max(ins, key=lambda v: v.desired or 0) if ins else None    # the smallest step
    # What the rules asked for, as the stabilization history records it: a wish to shrink counts
    # only when it could be acted on (nobody keeps the size, complete data, nobody warming).
    if out_win is not None:
        recommended = out_win.desired or current
    elif in_win is not None and not keepers and not missing and not warming:
        recommended = in_win.desired or 0
    else:
        recommended = current

    def decide(outcome: Outcome, desired: int, cause: Cause, reason: str, rule: str | None = None) -> Decision:
        if outcome is not Outcome.HOLD and policy.dry_run:
            reason = f"dry-run: would {outcome.value.replace('_', ' ')} to {desired}: {reason}"
        return Decision(outcome, current, desired, reason, rule, verdicts, inputs, policy.dry_run,
                        recommended, bounds, cause, warming)

    def hold(cause: Cause, reason: str) -> Decision:
        return decide(Outcome.HOLD, current, cause, reason)

    def at_max() -> str:
        return (f"at max ({toward_max} of {bounds.max}" + (f", {failed} failed" if failed else "")
                + (f", {bounds.max_from}" if bounds.max_from else "") + ")")

    def warm() -> str:
        return f"warm-up: {_plural(warming, 'member')} warming for {format_duration(warm_left)} more"

    def of_bounds(key: str) -> str:
        source = bounds.min_from if key == "min" else bounds.max_from
        return f" ({source})" if source else ""

    if state.busy:
        return hold(Cause.BUSY, f"busy: {state.busy} in progress")

    # Bounds are hard and come before rules and cooldowns.
    if current < bounds.min:
        if toward_max >= bounds.max:
            return hold(Cause.AT_MAX, f"{at_max()}: below min ({current} < {bounds.min}{of_bounds('min')}) but "
                                      "failed members count toward max")
        return decide(Outcome.SCALE_OUT, min(bounds.min, bounds.max - failed), Cause.BELOW_MIN,
                      f"below min: {current} < {bounds.min}{of_bounds('min')}")
    if current > bounds.max:
        return decide(Outcome.SCALE_IN, bounds.max, Cause.ABOVE_MAX,
                      f"above max: {current} > {bounds.max}{of_bounds('max')}")

    if out_win is not None:
        asks = f"{out_win.rule} asks {out_win.step:+d} → {out_win.desired}"
        if toward_max >= bounds.max:
            return hold(Cause.AT_MAX, f"{at_max()}: {asks}")
        left = cooldown_left(policy, state, Outcome.SCALE_OUT, now)
        if left > 0:
            return hold(Cause.COOLDOWN, f"cooldown: scale-out allowed in {format_duration(left)} ({asks})")
        target = out_win.desired or current
        window = policy.stabilization.scale_out
        if window:
            recent = [r for t, r in state.recommendations if now - t <= window]
            lowest = min([*recent, target])
            if lowest <= current:
                return hold(Cause.STABILIZATION, f"stabilization: lowest recommendation in the last "
                                                 f"{format_duration(window)} is {lowest} ({asks})")
            target = lowest
        desired = min(bounds.max - failed, target)
        return decide(Outcome.SCALE_OUT, desired, Cause.RULE, f"{out_win.rule}: {out_win.detail}", out_win.rule)

    def kept() -> str:
        if len(keepers) == 1 and keepers[0].detail.startswith("within tolerance"):
            return keepers[0].detail
        return "; ".join(f"{v.rule}: {v.detail}" if v.detail.startswith("within tolerance") else
                         f"{v.rule} keeps {current}: {v.detail}" for v in keepers)

    if in_win is not None:
        asks = f"{in_win.rule} asks {in_win.step:+d} → {in_win.desired}"
        if missing:
            return hold(Cause.MISSING_DATA, "; ".join(missing) + f" ({asks}; scale-in needs data on every input)")
        if keepers:
            return hold(Cause.KEPT, f"{kept()} ({asks})")
        if current <= bounds.min:
            where = f", {bounds.min_from}" if bounds.min_from else ""
            return hold(Cause.AT_MIN, f"at min ({bounds.min}{where}): {asks}")
        if warming:
            return hold(Cause.WARMUP, f"{warm()} ({in_win.rule} asks {in_win.step:+d})")
        left = cooldown_left(policy, state, Outcome.SCALE_IN, now)
        if left > 0:
            return hold(Cause.COOLDOWN, f"cooldown: scale-in allowed in {format_duration(left)} ({asks})")
        target = in_win.desired or 0
        window = policy.stabilization.scale_in
        if window:
            recent = [r for t, r in state.recommendations if now - t <= window]
            highest = max([*recent, target])
            if highest >= current:
                return hold(Cause.STABILIZATION, f"stabilization: highest recommendation in the last "
                                                 f"{format_duration(window)} is {highest} ({asks})")
            target = highest
        desired = max(bounds.min, target)
        return decide(Outcome.SCALE_IN, desired, Cause.RULE, f"{in_win.rule}: {in_win.detail}", in_win.rule)

    # Nothing to do: say why, most useful first.
    pending = [v for v in verdicts if v.verdict is Verdict.PENDING]
    waiting = "waiting: " + "; ".join(f"{v.rule}: {v.detail}" for v in pending) if pending else ""
    if missing:
        return hold(Cause.MISSING_DATA, "; ".join(missing) + (f"; {waiting}" if pending else ""))
    counted = [v for v in verdicts if v.verdict is Verdict.FIRE and v.step > 0]
    if warming and counted:
        asks = ", ".join(f"{v.rule} asks {v.step:+d}" for v in counted)
        return hold(Cause.WARMUP, f"{warm()}, counted as already added ({asks})")
    if pending:
        return hold(Cause.PENDING, waiting)
    if keepers:
        return hold(Cause.KEPT, kept())
    if warming:
        return hold(Cause.WARMUP, f"{warm()}; no rule fired")
    return hold(Cause.QUIET, "no rule fired: " + "; ".join(f"{v.rule}: {v.detail}" for v in verdicts))


__all__ = [
    "Cause", "Decision", "Outcome", "Point", "PoolState", "RuleVerdict", "Verdict", "aggregate",
    "cooldown_left", "evaluate", "history_needed", "is_warming", "remember", "warming_left", "window_needed",
]
