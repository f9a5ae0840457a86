"""Table-driven tests of the pure policy code: rules, combining, bounds, cooldowns, missing data."""

from __future__ import annotations

import re
from collections import deque

import pytest
from pydantic import ValidationError

from policies import (
    Outcome,
    Point,
    PolicyFile,
    PoolPolicy,
    PoolState,
    Verdict,
    aggregate,
    evaluate,
    parse_duration,
)
from policies.model import Aggregate


def policy(**over: object) -> PoolPolicy:
    body: dict[str, object] = {
        "min": 1,
        "max": 4,
        "inputs": {"sessions": {"source": "haproxy", "metric": "current_sessions"}},
        "rules": [
            {"name": "busy", "input": "sessions", "above": 20, "for": "10s", "adjust": "+1"},
            {"name": "idle", "input": "sessions", "below": 5, "for": "20s", "adjust": "-1"},
        ],
        "cooldown": {"scale_out": "30s", "scale_in": "60s"},
    }
    body.update(over)
    return PolicyFile.model_validate({"pools": {"web": body}}).pools["web"]


def flat(value: float | None, start: float, end: float, step: float = 2.0) -> list[Point]:
    pts, t = [], start
    while t <= end + 1e-9:
        pts.append(Point(t, value))
        t += step
    return pts


NOW = 1000.0


@pytest.mark.parametrize(
    ("series", "state", "outcome", "desired", "reason_part"),
    [
        pytest.param(flat(30, NOW - 10, NOW), PoolState(1), Outcome.SCALE_OUT, 2, "busy",
                     id="above threshold for the whole window scales out"),
        pytest.param(flat(30, NOW - 8, NOW), PoolState(1), Outcome.HOLD, 1, "for 8s of 10s",
                     id="above threshold for less than 'for' waits"),
        pytest.param(flat(20, NOW - 30, NOW), PoolState(1), Outcome.HOLD, 1, "no rule fired",
                     id="exactly at the threshold is not above"),
        pytest.param(flat(30, NOW - 30, NOW - 12) + [Point(NOW - 10, 10)] + flat(30, NOW - 8, NOW),
                     PoolState(1), Outcome.HOLD, 1, "waiting",
                     id="one dip below restarts the duration"),
        pytest.param(flat(30, NOW - 30, NOW - 12) + [Point(NOW - 10, None, "timeout")] + flat(30, NOW - 8, NOW),
                     PoolState(1), Outcome.HOLD, 1, "waiting",
                     id="a gap without data restarts the duration"),
        pytest.param(flat(2, NOW - 20, NOW), PoolState(2), Outcome.SCALE_IN, 1, "idle",
                     id="below threshold for the whole window scales in"),
        pytest.param(flat(2, NOW - 20, NOW), PoolState(1), Outcome.HOLD, 1, "at min (1): idle asks -1 → 0",
                     id="never below min"),
        pytest.param(flat(30, NOW - 20, NOW), PoolState(4), Outcome.HOLD, 4, "at max (4 of 4): busy asks +1 → 5",
                     id="never above max"),
        pytest.param(flat(30, NOW - 20, NOW), PoolState(3, toward_max=4), Outcome.HOLD, 3, "at max (4 of 4, 1 failed)",
                     id="failed members count toward max"),
        pytest.param([], PoolState(2), Outcome.HOLD, 2, "missing data for input sessions: no sample yet",
                     id="no data at all holds"),
        pytest.param(flat(None, NOW - 20, NOW), PoolState(2), Outcome.HOLD, 2,
                     "missing data for input sessions: no value",
                     id="explicit no-data holds and is never zero"),
        pytest.param(flat(2, NOW - 100, NOW - 40), PoolState(2), Outcome.HOLD, 2,
                     "missing data for input sessions: stale: newest sample is 40s old",
                     id="stale data holds instead of scaling in"),
        pytest.param(flat(30, NOW - 20, NOW), PoolState(1, last_scale_out_at=NOW - 10),
                     Outcome.HOLD, 1, "cooldown: scale-out allowed in 20s (busy asks +1 → 2)",
                     id="scale-out inside its cooldown holds with time left"),
        pytest.param(flat(30, NOW - 20, NOW), PoolState(2, last_scale_in_at=NOW - 1),
                     Outcome.HOLD, 2, "cooldown: scale-out allowed in 29s",
                     id="scale-out right after a scale-in waits for the scale-out cooldown"),
        pytest.param(flat(30, NOW - 20, NOW), PoolState(2, last_scale_in_at=NOW - 31),
                     Outcome.SCALE_OUT, 3, "busy",
                     id="scale-out after its cooldown since a scale-in"),
        pytest.param(flat(2, NOW - 20, NOW), PoolState(3, last_scale_out_at=NOW - 50),
                     Outcome.HOLD, 3, "cooldown: scale-in allowed in 10s (idle asks -1 → 2)",
                     id="scale-in waits for the scale-in cooldown after a scale-out"),
        pytest.param(flat(30, NOW - 20, NOW), PoolState(2, busy="scale_out op-1"),
                     Outcome.HOLD, 2, "busy: scale_out op-1 in progress",
                     id="nothing starts while an operation runs"),
        pytest.param(flat(10, NOW - 20, NOW), PoolState(0), Outcome.SCALE_OUT, 1, "below min",
                     id="below min grows to min without any rule"),
        pytest.param(flat(10, NOW - 20, NOW), PoolState(6), Outcome.SCALE_IN, 4, "above max",
                     id="above max shrinks to max without any rule"),
    ],
)
def test_single_input_table(series: list[Point], state: PoolState, outcome: Outcome, desired: int,
                            reason_part: str) -> None:
    d = evaluate(policy(), {"sessions": series}, state, NOW)
    assert d.outcome is outcome, d.reason
    assert d.desired == desired
    assert reason_part in d.reason


TWO_INPUTS = {
    "inputs": {
        "sessions": {"source": "haproxy", "metric": "current_sessions"},
        "queue": {"source": "haproxy", "metric": "queue", "aggregate": "max"},
    },
    "rules": [
        {"name": "idle", "input": "sessions", "below": 5, "for": "10s", "adjust": "-2"},
        {"name": "calm", "input": "queue", "below": 1, "for": "10s", "adjust": "-1"},
        {"name": "busy", "input": "sessions", "above": 20, "for": "10s", "adjust": "+1"},
        {"name": "queued", "input": "queue", "above": 10, "for": "10s", "adjust": "+50%"},
    ],
}


@pytest.mark.parametrize(
    ("sessions", "queue", "current", "outcome", "desired", "rule"),
    [
        pytest.param(30, 50, 4, Outcome.SCALE_OUT, 6, "queued", id="largest scale-out step wins"),
        pytest.param(30, 0, 4, Outcome.SCALE_OUT, 5, "busy", id="any rule asking out wins over rules asking in"),
        pytest.param(2, 0, 6, Outcome.SCALE_IN, 5, "calm", id="smallest scale-in step wins"),
        pytest.param(2, None, 6, Outcome.HOLD, 6, None, id="scale-in needs data on every input"),
        pytest.param(None, 50, 4, Outcome.SCALE_OUT, 6, "queued",
                     id="scale-out does not need data on every input"),
    ],
)
def test_combining(sessions: float | None, queue: float | None, current: int, outcome: Outcome,
                   desired: int, rule: str | None) -> None:
    p = policy(max=10, **TWO_INPUTS)
    series = {"sessions": flat(sessions, NOW - 20, NOW), "queue": flat(queue, NOW - 20, NOW)}
    d = evaluate(p, series, PoolState(current), NOW)
    assert (d.outcome, d.desired, d.rule) == (outcome, desired, rule), d.reason


def test_partial_data_blocks_scale_in_only() -> None:
    partial = [Point(p.t, p.value, "1 of 2 members: timeout", complete=False) for p in flat(2, NOW - 20, NOW)]
    d = evaluate(policy(), {"sessions": partial}, PoolState(3), NOW)
    assert d.outcome is Outcome.HOLD
    assert d.reason.startswith("partial data for input sessions: 1 of 2 members: timeout (idle asks -1 → 2")
    busy = [Point(p.t, p.value, "1 of 2 members: timeout", complete=False) for p in flat(30, NOW - 20, NOW)]
    assert evaluate(policy(), {"sessions": busy}, PoolState(2), NOW).outcome is Outcome.SCALE_OUT


def test_series_may_be_a_deque() -> None:
    """The engine keeps each series in a deque: evaluation must not need slicing."""
    d = evaluate(policy(), {"sessions": deque(flat(30, NOW - 10, NOW))}, PoolState(1), NOW)
    assert d.outcome is Outcome.SCALE_OUT


def test_dry_run_decides_but_does_not_act() -> None:
    d = evaluate(policy(dry_run=True), {"sessions": flat(30, NOW - 20, NOW)}, PoolState(1), NOW)
    assert d.outcome is Outcome.SCALE_OUT and d.desired == 2
    assert not d.acts
    assert d.reason.startswith("dry-run: would scale out to 2: busy: ")


def test_verdicts_explain_every_rule() -> None:
    d = evaluate(policy(), {"sessions": flat(12, NOW - 20, NOW)}, PoolState(2), NOW)
    assert [(v.rule, v.verdict) for v in d.verdicts] == [("busy", Verdict.QUIET), ("idle", Verdict.QUIET)]
    assert d.inputs == {"sessions": 12}


@pytest.mark.parametrize(
    ("values", "how", "expected"),
    [
        pytest.param([1, 2, 6], Aggregate.AVG, 3, id="avg"),
        pytest.param([1, 2, 6], Aggregate.MAX, 6, id="max"),
        pytest.param([1, 2, 6], Aggregate.MIN, 1, id="min"),
        pytest.param([1, 2, 6], Aggregate.SUM, 9, id="sum"),
        pytest.param([], Aggregate.AVG, None, id="no members is no data, not zero"),
    ],
)
def test_aggregate(values: list[float], how: Aggregate, expected: float | None) -> None:
    assert aggregate(values, how) == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("30s", 30, id="seconds"),
        pytest.param("5m", 300, id="minutes"),
        pytest.param("1h30m", 5400, id="compound"),
        pytest.param("250ms", 0.25, id="milliseconds"),
        pytest.param(12, 12, id="bare number is seconds"),
    ],
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        pytest.param({"min": 5, "max": 2}, "min (5) is greater than max (2)", id="min above max"),
        pytest.param({"rules": [{"name": "x", "input": "nope", "above": 1, "adjust": 1}]},
                     "unknown input 'nope'", id="rule names an unknown input"),
        pytest.param({"rules": [{"name": "x", "input": "sessions", "above": 1, "adjust": "+0"}]},
                     "not zero", id="zero step"),
        pytest.param({"rules": [{"name": "x", "input": "sessions", "adjust": "+1"}]},
                     "exactly one of 'above' or 'below'", id="no comparison"),
        pytest.param({"rules": [{"name": "x", "input": "sessions", "above": 1, "for": "ten", "adjust": 1}]},
                     "not a duration", id="bad duration"),
        pytest.param({"colour": "blue"}, "Extra inputs are not permitted", id="unknown key"),
    ],
)
def test_validation_errors(over: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        policy(**over)
