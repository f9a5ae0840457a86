"""Properties of the policy engine that must hold for any data, state and time (hypothesis):
bounds (scheduled ones too) are never violated, nothing acts inside a cooldown, missing data never
shrinks the pool, and a flapping input cannot cause more actions than the cooldowns allow."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from policies import (
    Cause,
    Outcome,
    Point,
    PolicyFile,
    PoolPolicy,
    PoolState,
    cooldown_left,
    effective_bounds,
    evaluate,
    remember,
)

NOW = 1_717_000_000.0      # a Wednesday: schedules below are active or not depending on the offset
SESSIONS = {"source": "haproxy", "metric": "current_sessions"}

RULE_SETS: dict[str, list[dict[str, Any]]] = {
    "thresholds": [
        {"name": "busy", "input": "sessions", "above": 20, "for": "4s", "adjust": "+1"},
        {"name": "very-busy", "input": "sessions", "above": 60, "adjust": "+50%", "max_step": 3},
        {"name": "idle", "input": "sessions", "below": 5, "for": "4s", "adjust": "-1"},
        {"name": "empty", "input": "sessions", "at_most": 0, "adjust": "=1"},
    ],
    "target": [{"name": "cpu", "input": "sessions", "target": 40}],
    "mixed": [
        {"name": "cpu", "input": "cpu", "target": 50, "max_step": 4},
        {"name": "idle", "input": "sessions", "below": 5, "adjust": "-2"},
        {"name": "queued", "input": "queue", "above": 10, "adjust": "+2"},
        {"name": "slow", "alarm": "HighLatency", "adjust": "+3"},
    ],
}
INPUTS = {
    "sessions": dict(SESSIONS),
    "cpu": {"source": "snmp", "metric": "cpu", "window": "10s", "over": "max"},
    "queue": {"source": "haproxy", "metric": "queue", "on_missing": {"treat_as": 100}},
}


def pool(rules: str = "mixed", **over: Any) -> PoolPolicy:
    body: dict[str, Any] = {"min": 1, "max": 10, "inputs": INPUTS, "rules": RULE_SETS[rules],
                            "cooldown": {"scale_out": "30s", "scale_in": "60s"}}
    body.update(over)
    return PolicyFile.model_validate({"pools": {"web": body}}).pools["web"]


values = st.one_of(st.none(), st.floats(min_value=0, max_value=150, allow_nan=False))
readings = st.lists(values, min_size=0, max_size=12)


def as_series(seq: Sequence[float | None], end: float = NOW, step: float = 2.0, partial: bool = False) -> list[Point]:
    n = len(seq)
    return [Point(end - step * (n - i - 1), v, "lb2: timeout" if v is None or partial else "",
                  complete=not partial) for i, v in enumerate(seq)]


@st.composite
def all_series(draw: st.DrawFn) -> dict[str, list[Point]]:
    age = draw(st.sampled_from([0.0, 0.0, 5.0, 45.0]))      # 45 s: stale
    return {
        "sessions": as_series(draw(readings), NOW - age, partial=draw(st.booleans())),
        "cpu": as_series(draw(readings), NOW - draw(st.sampled_from([0.0, 45.0]))),
        "queue": as_series(draw(readings)),
        "HighLatency": as_series(draw(st.lists(st.sampled_from([0.0, 1.0, None]), max_size=3)), NOW, 60.0),
    }


schedule = st.fixed_dictionaries({
    "cron": st.sampled_from(["*/5 * * * *", "0 * * * *", "30 8 * * 1-5", "@daily", "15 */2 * * *"]),
    "duration": st.sampled_from(["1m", "10m", "1h", "20h"]),
    "min": st.one_of(st.none(), st.integers(0, 8)),
    "max": st.one_of(st.none(), st.integers(1, 12)),
    "timezone": st.sampled_from(["UTC", "Europe/Paris", "America/New_York"]),
})


@st.composite
def pools(draw: st.DrawFn) -> PoolPolicy:
    lo = draw(st.integers(0, 5))
    scheds = [{**s, "name": f"s{i}"} for i, s in enumerate(draw(st.lists(schedule, max_size=3)))]
    scheds = [{k: v for k, v in s.items() if v is not None} for s in scheds]
    try:
        return pool(draw(st.sampled_from(list(RULE_SETS))), min=lo, max=lo + draw(st.integers(0, 6)) or 1,
                    schedules=scheds, warmup=draw(st.sampled_from([0, "30s"])),
                    stabilization={"scale_in": draw(st.sampled_from([0, "1m"]))})
    except ValidationError:
        assume(False)
        raise


@st.composite
def states(draw: st.DrawFn) -> PoolState:
    current = draw(st.integers(0, 14))
    ago = st.one_of(st.none(), st.floats(0, 200))
    out, in_ = draw(ago), draw(ago)
    return PoolState(
        current=current,
        toward_max=current + draw(st.integers(0, 2)),
        last_scale_out_at=None if out is None else NOW - out,
        last_scale_in_at=None if in_ is None else NOW - in_,
        in_service_since=tuple(NOW - a for a in draw(st.lists(st.floats(0, 100), max_size=current))),
        recommendations=tuple((NOW - a, r) for a, r in draw(st.lists(st.tuples(st.floats(0, 120),
                                                                               st.integers(0, 14)), max_size=4))),
    )


offsets = st.integers(0, 7 * 86400)     # a week of times of day and week days


@settings(max_examples=400, deadline=None)
@given(p=pools(), series=all_series(), state=states(), offset=offsets)
def test_bounds_are_never_violated(p: PoolPolicy, series: dict[str, list[Point]], state: PoolState,
                                   offset: int) -> None:
    now = NOW + offset
    shifted = {k: [Point(pt.t + offset, pt.value, pt.why, pt.complete) for pt in v] for k, v in series.items()}
    d = evaluate(p, shifted, state, now)
    b = effective_bounds(p, now)
    assert d.bounds == b and 0 <= b.min <= b.max
    failed = (state.toward_max or state.current) - state.current
    if d.outcome is Outcome.SCALE_OUT:
        assert state.current < d.desired and d.desired + failed <= b.max
    if d.outcome is Outcome.SCALE_IN:
        assert b.min <= d.desired < state.current
    if b.min <= state.current <= b.max:
        assert b.min <= d.desired <= b.max
    if d.outcome is Outcome.HOLD:
        assert d.desired == state.current


@settings(max_examples=400, deadline=None)
@given(p=pools(), series=all_series(), state=states())
def test_no_action_inside_a_cooldown(p: PoolPolicy, series: dict[str, list[Point]], state: PoolState) -> None:
    d = evaluate(p, series, state, NOW)
    if d.outcome is not Outcome.HOLD and d.cause is Cause.RULE:
        assert cooldown_left(p, state, d.outcome, NOW) == 0
    else:
        # Only bound corrections act without waiting, and only to bring the size within bounds.
        assert d.outcome is Outcome.HOLD or d.cause in (Cause.BELOW_MIN, Cause.ABOVE_MAX)


def _missing(kind: str, seq: list[float]) -> list[Point]:
    if kind == "empty":
        return []
    if kind == "no value now":
        return as_series([*seq, None])
    if kind == "stale":
        return as_series(seq, NOW - 31)
    return as_series(seq, partial=True)


@st.composite
def shrinking(draw: st.DrawFn) -> tuple[PoolPolicy, int, dict[str, list[Point]]]:
    """A pool every rule of which wants smaller: low, complete, fresh data on every input."""
    p = pool(draw(st.sampled_from(list(RULE_SETS))), min=draw(st.integers(0, 1)), max=12, warmup="30s",
             stabilization={"scale_in": "1m"})
    seq = draw(st.lists(st.floats(0, 4), min_size=8, max_size=12))
    series = {"sessions": as_series(seq), "cpu": as_series(seq), "queue": as_series(seq),
              "HighLatency": as_series(draw(st.lists(st.just(0.0), max_size=2)))}
    return p, draw(st.integers(3, 12)), series


@settings(max_examples=300, deadline=None)
@given(world=shrinking(), which=st.sampled_from(["sessions", "cpu", "queue", "HighLatency"]),
       kind=st.sampled_from(["empty", "no value now", "stale", "partial"]))
def test_missing_data_never_scales_in(world: tuple[PoolPolicy, int, dict[str, list[Point]]], which: str,
                                      kind: str) -> None:
    p, current, series = world
    assert evaluate(p, series, PoolState(current), NOW).outcome is Outcome.SCALE_IN    # with all the data it would
    # An alarm is state until the next notification: it has neither staleness nor partial points, and
    # no notification at all means "not firing". Only a point without value is missing data.
    assume(which in {p.input_of(r) for r in p.rules} and (which != "HighLatency" or kind == "no value now"))
    broken = {**series, which: _missing(kind, [pt.value or 0.0 for pt in series[which]] or [0.0])}
    d = evaluate(p, broken, PoolState(current), NOW)
    assert d.outcome is not Outcome.SCALE_IN, d.reason
    assert d.recommended >= current      # and no wish to shrink goes into the stabilization history


@settings(max_examples=300, deadline=None)
@given(world=shrinking(), ages=st.lists(st.floats(0, 100), min_size=1, max_size=3))
def test_no_scale_in_while_a_member_warms_up(world: tuple[PoolPolicy, int, dict[str, list[Point]]],
                                             ages: list[float]) -> None:
    p, current, series = world
    d = evaluate(p, series, PoolState(current, in_service_since=tuple(NOW - a for a in ages)), NOW)
    assert (d.outcome is Outcome.SCALE_IN) is (min(ages) >= p.warmup), d.reason


@settings(max_examples=300, deadline=None)
@given(world=shrinking(), history=st.lists(st.tuples(st.floats(0, 120), st.integers(0, 14)), max_size=4))
def test_scale_in_never_below_a_recent_recommendation(world: tuple[PoolPolicy, int, dict[str, list[Point]]],
                                                      history: list[tuple[float, int]]) -> None:
    p, current, series = world
    recs = tuple((NOW - a, r) for a, r in history)
    d = evaluate(p, series, PoolState(current, recommendations=recs), NOW)
    highest = max((r for t, r in recs if NOW - t <= p.stabilization.scale_in), default=0)
    assert (d.outcome is Outcome.SCALE_IN) is (highest < current), d.reason
    if d.outcome is Outcome.SCALE_IN:
        assert d.desired >= highest


@pytest.mark.parametrize("rules", list(RULE_SETS))
@settings(max_examples=40, deadline=None)
@given(period=st.integers(min_value=2, max_value=120), cooldown=st.integers(min_value=5, max_value=90),
       stabilize=st.booleans())
def test_square_wave_actions_bounded_by_cooldown(rules: str, period: int, cooldown: int, stabilize: bool) -> None:
    """A square wave of period P over T seconds causes at most ceil(T / cooldown) actions."""
    p = pool(rules, min=1, max=1000, cooldown={"scale_out": cooldown, "scale_in": cooldown},
             stabilization={"scale_in": "30s" if stabilize else 0})
    history: tuple[tuple[float, int], ...]
    size, last_out, last_in, actions, history = 5, None, None, 0, ()
    pts: dict[str, list[Point]] = {"sessions": [], "cpu": [], "queue": [], "HighLatency": []}
    total = 600
    for t in range(0, total, 2):
        high = (t // period) % 2 == 0
        pts["sessions"].append(Point(float(t), 80.0 if high else 0.0))
        pts["cpu"].append(Point(float(t), 90.0 if high else 5.0))
        pts["queue"].append(Point(float(t), 50.0 if high else 0.0))
        pts["HighLatency"].append(Point(float(t), 1.0 if high else 0.0))
        state = PoolState(size, last_scale_out_at=last_out, last_scale_in_at=last_in, recommendations=history)
        d = evaluate(p, {k: v[-30:] for k, v in pts.items()}, state, float(t))
        history = remember(p, history, float(t), d)
        if d.acts:
            actions += 1
            if d.outcome is Outcome.SCALE_OUT:
                last_out = float(t)
            else:
                last_in = float(t)
            size = d.desired
    assert actions <= math.ceil(total / cooldown)
