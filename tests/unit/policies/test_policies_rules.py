"""Table-driven tests of every rule kind and feature of the policy engine: thresholds and their
adjustments, target tracking, alarms, time windows and percentiles, missing data, warm-up,
stabilization, scheduled bounds, and the reasons an operator reads when nothing happened."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from policies import (
    Cause,
    Decision,
    Outcome,
    Point,
    PolicyFile,
    PoolPolicy,
    PoolState,
    Verdict,
    aggregate,
    describe_schedule,
    effective_bounds,
    evaluate,
    is_warming,
    percentile,
    remember,
    window_needed,
)

NOW = 1_000_000.0
SESSIONS = {"source": "haproxy", "metric": "current_sessions"}


def pool(**over: Any) -> PoolPolicy:
    body: dict[str, Any] = {
        "min": 1,
        "max": 10,
        "inputs": {"sessions": dict(SESSIONS)},
        "rules": [{"name": "busy", "input": "sessions", "above": 20, "adjust": "+1"},
                  {"name": "idle", "input": "sessions", "below": 5, "adjust": "-1"}],
        "cooldown": {"scale_out": "30s", "scale_in": "60s"},
    }
    body.update(over)
    return PolicyFile.model_validate({"pools": {"web": body}}).pools["web"]


def flat(value: float | None, start: float, end: float = NOW, step: float = 2.0, **kw: Any) -> list[Point]:
    pts, t = [], start
    while t <= end + 1e-9:
        pts.append(Point(t, value, **kw))
        t += step
    return pts


def run(p: PoolPolicy, state: PoolState | int, now: float = NOW, **series: list[Point]) -> Decision:
    return evaluate(p, series, state if isinstance(state, PoolState) else PoolState(state), now)


# --- thresholds ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("comparison", "value", "fires"),
    [
        pytest.param({"above": 20}, 20, False, id="above is strict"),
        pytest.param({"above": 20}, 20.5, True, id="above fires over the value"),
        pytest.param({"at_least": 20}, 20, True, id="at_least includes the value"),
        pytest.param({"at_least": 20}, 19.9, False, id="at_least stays quiet under"),
        pytest.param({"below": 5}, 5, False, id="below is strict"),
        pytest.param({"at_most": 5}, 5, True, id="at_most includes the value"),
        pytest.param({"at_most": 5}, 5.1, False, id="at_most stays quiet over"),
    ],
)
def test_threshold_comparisons(comparison: dict[str, float], value: float, fires: bool) -> None:
    p = pool(rules=[{"name": "r", "input": "sessions", **comparison, "adjust": "+1"}])
    d = run(p, 3, sessions=flat(value, NOW - 10))
    assert (d.verdicts[0].verdict is Verdict.FIRE) is fires, d.verdicts[0].detail
    assert d.outcome is (Outcome.SCALE_OUT if fires else Outcome.HOLD)


@pytest.mark.parametrize(
    ("adjust", "current", "desired"),
    [
        pytest.param({"adjust": "+2"}, 4, 6, id="plus n"),
        pytest.param({"adjust": 2}, 4, 6, id="a bare number is plus n"),
        pytest.param({"adjust": "-2"}, 4, 2, id="minus n"),
        pytest.param({"adjust": "+50%"}, 4, 6, id="plus percent"),
        pytest.param({"adjust": "+10%"}, 4, 5, id="a percent step is at least one member"),
        pytest.param({"adjust": "+30%"}, 5, 7, id="a growing percent rounds up"),
        pytest.param({"adjust": "-10%"}, 25, 23, id="a shrinking percent rounds down"),
        pytest.param({"adjust": "-10%"}, 4, 3, id="a shrinking percent is at least one member"),
        pytest.param({"adjust": "=8"}, 4, 8, id="exact size up"),
        pytest.param({"adjust": "=2"}, 4, 2, id="exact size down"),
        pytest.param({"set": 8}, 4, 8, id="set is exact size"),
        pytest.param({"adjust": "+10%", "min_step": 3}, 4, 7, id="min_step raises a small step"),
        pytest.param({"adjust": "+100%", "max_step": 2}, 4, 6, id="max_step caps a large step"),
        pytest.param({"adjust": "=12", "max_step": 3}, 4, 7, id="max_step caps an exact size"),
        pytest.param({"adjust": "-50%", "max_step": 1}, 6, 5, id="max_step caps a scale-in"),
        pytest.param({"adjust": "+5"}, 28, 30, id="a step stops at max"),
        pytest.param({"adjust": "-5"}, 3, 1, id="a step stops at min"),
    ],
)
def test_adjustments(adjust: dict[str, Any], current: int, desired: int) -> None:
    p = pool(max=30, rules=[{"name": "r", "input": "sessions", "at_least": 0, **adjust}])
    d = run(p, current, sessions=flat(10, NOW - 10))
    assert d.desired == desired, d.reason


def test_an_exact_size_equal_to_the_current_size_keeps_it() -> None:
    p = pool(rules=[{"name": "pin", "input": "sessions", "at_least": 0, "adjust": "=4"},
                    {"name": "idle", "input": "sessions", "below": 5, "adjust": "-1"}])
    d = run(p, 4, sessions=flat(1, NOW - 10))
    assert (d.outcome, d.cause) == (Outcome.HOLD, Cause.KEPT)
    assert d.reason.startswith("pin keeps 4: sessions ≥ 0 (1): =4 (idle asks -1 → 3)"), d.reason


@pytest.mark.parametrize(
    ("series", "verdict", "detail"),
    [
        pytest.param(flat(30, NOW - 60), Verdict.FIRE, "sessions > 20 (30) for 30s: +1", id="held long enough"),
        pytest.param(flat(30, NOW - 20), Verdict.PENDING, "sessions > 20 (30) for 20s of 30s", id="not yet"),
        pytest.param(flat(30, NOW - 60, NOW - 25) + [Point(NOW - 24, None, "lb2: timeout")] + flat(30, NOW - 22),
                     Verdict.PENDING, "for 22s of 30s", id="a point without data restarts the count"),
        pytest.param(flat(30, NOW - 120, NOW - 50) + flat(30, NOW - 10), Verdict.PENDING, "for 10s of 30s",
                     id="a gap longer than stale_after restarts the count"),
        pytest.param(flat(30, NOW - 3600, step=10), Verdict.FIRE, "for 30s", id="an hour of history is fine"),
    ],
)
def test_sustained_for(series: list[Point], verdict: Verdict, detail: str) -> None:
    p = pool(rules=[{"name": "busy", "input": "sessions", "above": 20, "for": "30s", "adjust": "+1"}])
    v = run(p, 2, sessions=series).verdicts[0]
    assert v.verdict is verdict and detail in v.detail, v.detail


# --- inputs: percentiles and windows ----------------------------------------------------------------

@pytest.mark.parametrize(
    ("values", "how", "expected"),
    [
        pytest.param([1, 2, 3, 10], "p50", 2.5, id="p50 interpolates the median"),
        pytest.param([1, 2, 3, 10], "p100", 10, id="p100 is the max"),
        pytest.param([5], "p95", 5, id="one member is its own percentile"),
        pytest.param(list(range(1, 101)), "p95", 95.05, id="p95 of 1..100"),
        pytest.param([1, 2, 6], "sum", 9, id="sum"),
        pytest.param([], "p95", None, id="no member is no data, not zero"),
    ],
)
def test_member_aggregates(values: list[float], how: str, expected: float | None) -> None:
    got = aggregate(values, how)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_percentile_spellings_are_the_same_input() -> None:
    a = pool(inputs={"sessions": {**SESSIONS, "aggregate": "P95.0"}}).inputs["sessions"]
    b = pool(inputs={"sessions": {**SESSIONS, "percentile": 95}}).inputs["sessions"]
    assert a.aggregate == b.aggregate == "p95"
    assert percentile([1, 2, 3, 4], 50) == 2.5


def windowed(over: str, window: str = "1m") -> PoolPolicy:
    return pool(inputs={"sessions": {**SESSIONS, "window": window, "over": over}})


@pytest.mark.parametrize(
    ("over", "series", "value", "complete"),
    [
        pytest.param("avg", flat(10, NOW - 300, NOW - 30, 10) + flat(40, NOW - 20, step=10), 25, True,
                     id="avg of the points in the window"),
        pytest.param("max", flat(10, NOW - 300, NOW - 50, 10) + [Point(NOW - 40, 90)] + flat(10, NOW - 30, step=10),
                     90, True, id="max keeps a spike for the window"),
        pytest.param("min", flat(10, NOW - 300, NOW - 50, 10) + [Point(NOW - 40, 1)] + flat(10, NOW - 30, step=10),
                     1, True, id="min keeps a dip for the window"),
        pytest.param("avg", flat(10, NOW - 30, step=10), 10, False, id="a window not yet full is partial"),
        pytest.param("avg", flat(10, NOW - 300, NOW - 30, 10) + [Point(NOW - 20, None, "lb2: timeout")]
                     + flat(10, NOW - 10, step=10), 10, False, id="a point without data makes it partial"),
        pytest.param("avg", flat(None, NOW - 300, step=10), None, False, id="no value in the window is no data"),
        pytest.param("avg", flat(10, NOW - 300, NOW - 60, 10), None, False, id="stale is no data"),
    ],
)
def test_window_readings(over: str, series: list[Point], value: float | None, complete: bool) -> None:
    d = run(windowed(over), 3, sessions=series)
    assert d.inputs["sessions"] == (pytest.approx(value) if value is not None else None)
    assert all(v.verdict is not Verdict.NO_DATA for v in d.verdicts) is (value is not None)
    scaled_in = run(windowed(over), 3, sessions=[Point(p.t, 1 if p.value is not None else None, p.why)
                                                 for p in series])
    assert (scaled_in.outcome is Outcome.SCALE_IN) is complete, scaled_in.reason


def test_a_partial_window_can_grow_but_not_shrink() -> None:
    busy = run(windowed("avg"), 3, sessions=flat(30, NOW - 20, step=10))
    assert busy.outcome is Outcome.SCALE_OUT
    idle = run(windowed("avg"), 3, sessions=flat(1, NOW - 20, step=10))
    assert idle.outcome is Outcome.HOLD and idle.cause is Cause.MISSING_DATA
    assert idle.reason.startswith("partial data for input sessions: the 1m window has 20s of data so far")


@pytest.mark.parametrize(
    ("for_", "verdict"),
    [
        pytest.param("60s", Verdict.FIRE, id="window average above for 60s"),
        pytest.param("90s", Verdict.FIRE, id="window average above for 90s"),
        pytest.param("100s", Verdict.PENDING, id="window average not above for 100s"),
    ],
)
def test_sustained_on_a_window(for_: str, verdict: Verdict) -> None:
    # 0 until NOW-130, then 100: the 1m average is above 50 from NOW-90 on (4 of 6 points), not at NOW-100.
    series = flat(0, NOW - 600, NOW - 130, 10) + flat(100, NOW - 120, step=10)
    p = pool(inputs={"sessions": {**SESSIONS, "window": "1m"}},
             rules=[{"name": "busy", "input": "sessions", "above": 50, "for": for_, "adjust": "+1"}])
    v = run(p, 2, sessions=series).verdicts[0]
    assert v.verdict is verdict, v.detail


def test_window_needed_covers_for_and_window() -> None:
    p = pool(inputs={"sessions": {**SESSIONS, "window": "5m"}},
             rules=[{"name": "busy", "input": "sessions", "above": 50, "for": "2m", "adjust": "+1"}])
    assert window_needed(p) == 300 + 120 + 2 * 30


# --- target tracking ----------------------------------------------------------------------------

def target(**rule: Any) -> PoolPolicy:
    return pool(rules=[{"name": "cpu", "input": "sessions", "target": 40, **rule}])


@pytest.mark.parametrize(
    ("rule", "value", "current", "outcome", "desired", "reason"),
    [
        pytest.param({}, 41.2, 3, Outcome.HOLD, 3, "within tolerance: 41.2 vs target 40 ±10%",
                     id="within tolerance holds"),
        pytest.param({}, 44, 3, Outcome.HOLD, 3, "within tolerance", id="the tolerance edge is within"),
        pytest.param({}, 80, 3, Outcome.SCALE_OUT, 6, "cpu: sessions=80 vs target 40: ceil(3 * 80/40) = 6",
                     id="double the target doubles the pool"),
        pytest.param({}, 45, 3, Outcome.SCALE_OUT, 4, "ceil(3 * 45/40) = 4", id="rounds up"),
        pytest.param({}, 20, 4, Outcome.SCALE_IN, 2, "ceil(4 * 20/40) = 2", id="half the target halves the pool"),
        pytest.param({}, 35, 3, Outcome.HOLD, 3, "ceil(3 * 35/40) = 3, no change",
                     id="out of tolerance but the same size holds"),
        pytest.param({}, 0, 3, Outcome.SCALE_IN, 1, "cpu", id="zero load goes to min"),
        pytest.param({"tolerance": 0}, 40.1, 3, Outcome.SCALE_OUT, 4, "cpu", id="zero tolerance reacts at once"),
        pytest.param({"tolerance": "25%"}, 49, 3, Outcome.HOLD, 3, "±25%", id="tolerance as a percentage"),
        pytest.param({"max_step": 2}, 200, 3, Outcome.SCALE_OUT, 5, "(limited to +2)", id="max_step"),
        pytest.param({"min_step": 2}, 45, 3, Outcome.SCALE_OUT, 5, "(limited to +2)", id="min_step"),
        pytest.param({"max_step": 1}, 10, 4, Outcome.SCALE_IN, 3, "(limited to -1)", id="max_step on scale-in"),
        pytest.param({"scale_in": False}, 20, 4, Outcome.HOLD, 4, "but this rule does not scale in",
                     id="scale_in false never shrinks"),
        pytest.param({}, 400, 3, Outcome.SCALE_OUT, 10, "cpu", id="capped at max"),
    ],
)
def test_target_tracking(rule: dict[str, Any], value: float, current: int, outcome: Outcome, desired: int,
                         reason: str) -> None:
    d = run(target(**rule), current, sessions=flat(value, NOW - 10))
    assert (d.outcome, d.desired) == (outcome, desired), d.reason
    assert reason in d.reason


def test_target_tracking_scales_in_only_on_complete_data() -> None:
    partial = flat(20, NOW - 10, why="1 of 4 members without data: lb3: timeout", complete=False)
    d = run(target(), 4, sessions=partial)
    assert (d.outcome, d.cause) == (Outcome.HOLD, Cause.MISSING_DATA)
    assert d.reason.startswith("partial data for input sessions: 1 of 4 members without data: lb3: timeout")
    grow = run(target(), 4, sessions=flat(80, NOW - 10, why="1 of 4: timeout", complete=False))
    assert (grow.outcome, grow.desired) == (Outcome.SCALE_OUT, 8)


# --- combining ----------------------------------------------------------------------------------

TWO = {"inputs": {"sessions": dict(SESSIONS), "cpu": {"source": "snmp", "metric": "cpu"}}}


@pytest.mark.parametrize(
    ("rules", "sessions", "cpu", "current", "outcome", "desired", "rule"),
    [
        pytest.param([{"name": "cpu", "input": "cpu", "target": 50},
                      {"name": "idle", "input": "sessions", "below": 5, "adjust": "-1"}],
                     1, 50, 4, Outcome.HOLD, 4, None, id="a target in tolerance holds back a threshold scale-in"),
        pytest.param([{"name": "cpu", "input": "cpu", "target": 50, "scale_in": False},
                      {"name": "idle", "input": "sessions", "below": 5, "adjust": "-1"}],
                     1, 50, 4, Outcome.SCALE_IN, 3, "idle", id="a scale-out-only target does not hold it back"),
        pytest.param([{"name": "cpu", "input": "cpu", "target": 50},
                      {"name": "conns", "input": "sessions", "target": 10}],
                     7.5, 25, 4, Outcome.SCALE_IN, 3, "conns", id="two targets shrink to the larger of their sizes"),
        pytest.param([{"name": "cpu", "input": "cpu", "target": 50},
                      {"name": "conns", "input": "sessions", "target": 10}],
                     5, 100, 4, Outcome.SCALE_OUT, 8, "cpu", id="any target asking for more wins"),
        pytest.param([{"name": "cpu", "input": "cpu", "target": 50},
                      {"name": "busy", "input": "sessions", "above": 20, "adjust": "+5"}],
                     30, 60, 4, Outcome.SCALE_OUT, 9, "busy", id="the largest size wins across kinds"),
        pytest.param([{"name": "cpu", "input": "cpu", "target": 50},
                      {"name": "idle", "input": "sessions", "below": 5, "adjust": "-1"}],
                     1, None, 4, Outcome.HOLD, 4, None, id="a target without data holds back any scale-in"),
        pytest.param([{"name": "cpu", "input": "cpu", "target": 50},
                      {"name": "busy", "input": "sessions", "above": 20, "adjust": "+1"}],
                     30, None, 4, Outcome.SCALE_OUT, 5, "busy", id="a target without data does not stop a scale-out"),
    ],
)
def test_combining_rule_kinds(rules: list[dict[str, Any]], sessions: float, cpu: float | None, current: int,
                              outcome: Outcome, desired: int, rule: str | None) -> None:
    p = pool(**TWO, rules=rules)
    d = run(p, current, sessions=flat(sessions, NOW - 10), cpu=flat(cpu, NOW - 10))
    assert (d.outcome, d.desired, d.rule) == (outcome, desired, rule), d.reason


# --- alarms -------------------------------------------------------------------------------------

ALARMED = {"rules": [{"name": "busy", "input": "sessions", "above": 20, "adjust": "+1"},
                     {"name": "idle", "input": "sessions", "below": 5, "adjust": "-1"},
                     {"name": "slow", "alarm": "HighLatency", "adjust": "+2"}]}
FIRING = [Point(NOW - 5, 1.0)]
RESOLVED = [Point(NOW - 300, 1.0), Point(NOW - 10, 0.0)]


@pytest.mark.parametrize(
    ("alarm", "sessions", "state", "outcome", "desired", "reason"),
    [
        pytest.param(FIRING, 10, PoolState(3), Outcome.SCALE_OUT, 5, "slow: alarm HighLatency firing: +2",
                     id="a firing alarm scales out"),
        pytest.param(RESOLVED, 10, PoolState(3), Outcome.HOLD, 3, "slow: alarm HighLatency resolved",
                     id="a resolved alarm does nothing"),
        pytest.param(RESOLVED, 2, PoolState(3), Outcome.SCALE_IN, 2, "idle",
                     id="a resolved alarm does not hold back a measured scale-in"),
        pytest.param([], 2, PoolState(3), Outcome.SCALE_IN, 2, "idle", id="an alarm never seen is not firing"),
        pytest.param(FIRING, 2, PoolState(3), Outcome.SCALE_OUT, 5, "slow", id="a firing alarm beats idle"),
        pytest.param([Point(NOW - 7200, 1.0)], 10, PoolState(3), Outcome.SCALE_OUT, 5, "slow",
                     id="an alarm fires until resolved however old the notification"),
        pytest.param([Point(NOW - 5, None, "receiver restarted")], 2, PoolState(3), Outcome.HOLD, 3,
                     "missing data for input HighLatency: receiver restarted",
                     id="an unknown alarm state blocks scale-in"),
        pytest.param(FIRING, 10, PoolState(3, last_scale_out_at=NOW - 10), Outcome.HOLD, 3,
                     "cooldown: scale-out allowed in 20s (slow asks +2 → 5)", id="alarms wait for cooldowns"),
        pytest.param(FIRING, 10, PoolState(10), Outcome.HOLD, 10, "at max (10 of 10): slow asks +2 → 12",
                     id="alarms respect max"),
    ],
)
def test_alarm_rules(alarm: list[Point], sessions: float, state: PoolState, outcome: Outcome, desired: int,
                     reason: str) -> None:
    p = pool(**ALARMED)
    d = run(p, state, sessions=flat(sessions, NOW - 10), HighLatency=alarm)
    assert (d.outcome, d.desired) == (outcome, desired), d.reason
    assert reason in d.reason


def test_an_alarm_named_by_a_rule_is_declared_as_an_input() -> None:
    p = pool(**ALARMED)
    assert p.inputs["HighLatency"].is_alarm and p.alarm_inputs() == {"HighLatency": "HighLatency"}
    explicit = pool(inputs={"sessions": dict(SESSIONS), "latency": {"source": "alarm", "alarm": "HighLatency"}},
                    **ALARMED)
    assert set(explicit.inputs) == {"sessions", "latency"}
    assert explicit.input_of(explicit.rules[2]) == "latency"


@pytest.mark.parametrize(
    ("alarm", "verdict", "detail"),
    [
        pytest.param([Point(NOW - 30, 1.0)], Verdict.PENDING, "alarm HighLatency firing for 30s of 1m",
                     id="firing for less than for"),
        pytest.param([Point(NOW - 90, 1.0)], Verdict.FIRE, "firing for 1m", id="one notification long enough ago"),
        pytest.param(flat(1.0, NOW - 90, step=5), Verdict.FIRE, "firing for 1m", id="a sampled firing state"),
        pytest.param([Point(NOW - 300, 1.0), Point(NOW - 100, 0.0), Point(NOW - 20, 1.0)], Verdict.PENDING,
                     "for 20s of 1m", id="a re-fired alarm counts from its new start"),
    ],
)
def test_alarm_for(alarm: list[Point], verdict: Verdict, detail: str) -> None:
    p = pool(rules=[{"name": "slow", "alarm": "HighLatency", "for": "1m", "adjust": "+2"}])
    v = run(p, 3, HighLatency=alarm).verdicts[0]
    assert v.verdict is verdict and detail in v.detail, v.detail


# --- missing data -------------------------------------------------------------------------------

QUEUE = {"inputs": {"sessions": dict(SESSIONS),
                    "queue": {"source": "haproxy", "metric": "queue", "aggregate": "max",
                              "on_missing": {"treat_as": 1000}}},
         "rules": [{"name": "queued", "input": "queue", "above": 50, "for": "20s", "adjust": "+2"},
                   {"name": "idle", "input": "sessions", "below": 5, "adjust": "-1"}]}


@pytest.mark.parametrize(
    ("queue", "outcome", "reason"),
    [
        pytest.param(flat(None, NOW - 30, why="lb1: timeout"), Outcome.SCALE_OUT, "queued: queue > 50 (1000)",
                     id="points without data read as the stand-in"),
        pytest.param(flat(3, NOW - 200, NOW - 100), Outcome.SCALE_OUT, "queued",
                     id="stale data reads as the stand-in from when it went stale"),
        pytest.param(flat(3, NOW - 200, NOW - 35), Outcome.HOLD, "waiting: queued: queue > 50 (1000) for 6s of 20s",
                     id="the stand-in run starts when the data went stale"),
        pytest.param(flat(3, NOW - 60), Outcome.HOLD, "no rule fired", id="real data is read as is"),
    ],
)
def test_treat_as_can_grow(queue: list[Point], outcome: Outcome, reason: str) -> None:
    d = run(pool(**QUEUE), 3, sessions=flat(10, NOW - 60), queue=queue)
    assert d.outcome is outcome and reason in d.reason, d.reason


def test_treat_as_never_shrinks() -> None:
    p = pool(inputs={"sessions": {**SESSIONS, "on_missing": {"treat_as": 0}}})
    d = run(p, 3, sessions=flat(None, NOW - 60, why="lb1: timeout"))
    assert d.verdicts[1].verdict is Verdict.FIRE      # idle reads the stand-in 0…
    assert (d.outcome, d.cause) == (Outcome.HOLD, Cause.MISSING_DATA)      # …but a stand-in never shrinks
    assert d.reason.startswith("missing data for input sessions: lb1: timeout (read as 0)")
    assert d.recommended == 3


# --- warm-up ------------------------------------------------------------------------------------

WARM = {"warmup": "60s"}


@pytest.mark.parametrize(
    ("since", "now", "warming"),
    [
        pytest.param(NOW - 10, NOW, True, id="ten seconds in is warming"),
        pytest.param(NOW - 60, NOW, False, id="warm once warmup has passed"),
        pytest.param(NOW - 59.5, NOW, True, id="still warming just before"),
    ],
)
def test_is_warming(since: float, now: float, warming: bool) -> None:
    assert is_warming(pool(**WARM), since, now) is warming
    assert is_warming(pool(), since, now) is False


@pytest.mark.parametrize(
    ("rules", "sessions", "since", "outcome", "desired", "reason"),
    [
        pytest.param(None, 30, (NOW - 999, NOW - 999, NOW - 25), Outcome.HOLD, 3,
                     "warm-up: 1 member warming for 35s more, counted as already added (busy asks +1)",
                     id="a warming member counts as the step already taken"),
        pytest.param([{"name": "busy", "input": "sessions", "above": 20, "adjust": "+2"}], 30,
                     (NOW - 999, NOW - 999, NOW - 25), Outcome.SCALE_OUT, 4, "busy",
                     id="a larger step adds only the difference"),
        pytest.param(None, 2, (NOW - 999, NOW - 30, NOW - 25), Outcome.HOLD, 3,
                     "warm-up: 2 members warming for 35s more (idle asks -1)", id="scale-in waits for warm-up"),
        pytest.param([{"name": "cpu", "input": "sessions", "target": 40}], 80, (NOW - 999, NOW - 999, NOW - 25,
                                                                                  NOW - 25),
                     Outcome.HOLD, 4, "counted as already added (cpu asks +2)",
                     id="target tracking sizes from the measured members"),
        pytest.param(None, 2, (NOW - 999, NOW - 61, NOW - 60), Outcome.SCALE_IN, 2, "idle",
                     id="after warm-up scale-in resumes"),
    ],
)
def test_warmup(rules: list[dict[str, Any]] | None, sessions: float, since: tuple[float, ...], outcome: Outcome,
                desired: int, reason: str) -> None:
    p = pool(**WARM, **({"rules": rules} if rules else {}))
    d = run(p, PoolState(len(since), in_service_since=since), sessions=flat(sessions, NOW - 10))
    assert (d.outcome, d.desired) == (outcome, desired), d.reason
    assert reason in d.reason
    assert d.warming == sum(1 for s in since if NOW - s < 60)


# --- stabilization ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("rules", "history", "outcome", "desired", "reason"),
    [
        pytest.param(None, (), Outcome.SCALE_IN, 3, "idle", id="no history acts on the recommendation"),
        pytest.param(None, ((NOW - 100, 4),), Outcome.HOLD, 4,
                     "stabilization: highest recommendation in the last 5m is 4 (idle asks -1 → 3)",
                     id="a recent higher recommendation holds the size"),
        pytest.param(None, ((NOW - 400, 4), (NOW - 100, 3)), Outcome.SCALE_IN, 3, "idle",
                     id="recommendations older than the window are ignored"),
        pytest.param([{"name": "idle", "input": "sessions", "below": 5, "adjust": "-2"}],
                     ((NOW - 200, 3), (NOW - 100, 2)), Outcome.SCALE_IN, 3, "idle",
                     id="scale in only to the highest recent recommendation"),
    ],
)
def test_scale_in_stabilization(rules: list[dict[str, Any]] | None, history: tuple[tuple[float, int], ...],
                                outcome: Outcome, desired: int, reason: str) -> None:
    p = pool(stabilization={"scale_in": "5m"}, **({"rules": rules} if rules else {}))
    d = run(p, PoolState(4, recommendations=history), sessions=flat(2, NOW - 10))
    assert (d.outcome, d.desired) == (outcome, desired), d.reason
    assert reason in d.reason


def test_scale_out_stabilization_is_off_unless_configured() -> None:
    history = ((NOW - 10, 3),)
    assert run(pool(), PoolState(3, recommendations=history), sessions=flat(30, NOW - 10)).desired == 4
    p = pool(stabilization={"scale_out": "30s"})
    d = run(p, PoolState(3, recommendations=history), sessions=flat(30, NOW - 10))
    assert (d.outcome, d.cause) == (Outcome.HOLD, Cause.STABILIZATION)
    assert d.reason == "stabilization: lowest recommendation in the last 30s is 3 (busy asks +1 → 4)"
    later = run(p, PoolState(3, recommendations=((NOW - 40, 3), (NOW - 10, 4))), sessions=flat(30, NOW - 10))
    assert (later.outcome, later.desired) == (Outcome.SCALE_OUT, 4)


@pytest.mark.parametrize(
    ("sessions", "state", "recommended"),
    [
        pytest.param(30, PoolState(3), 4, id="a scale-out wish"),
        pytest.param(2, PoolState(3), 2, id="a scale-in wish"),
        pytest.param(10, PoolState(3), 3, id="no wish is the current size"),
        pytest.param(2, PoolState(3, busy="scale-in op-2"), 2, id="recorded even while busy"),
        pytest.param(2, PoolState(3, in_service_since=(NOW - 5,)), 3, id="no scale-in wish while warming"),
        pytest.param(None, PoolState(3), 3, id="no scale-in wish without data"),
    ],
)
def test_recommended(sessions: float | None, state: PoolState, recommended: int) -> None:
    d = run(pool(**WARM), state, sessions=flat(sessions, NOW - 10))
    assert d.recommended == recommended


def test_remember_appends_and_forgets_what_no_window_reads() -> None:
    p = pool(stabilization={"scale_in": "5m"})
    d = run(p, 4, sessions=flat(2, NOW - 10))
    kept = remember(p, ((NOW - 400, 6), (NOW - 200, 5)), NOW, d)
    assert kept == ((NOW - 200, 5), (NOW, 3))
    assert remember(pool(), ((NOW - 10, 6),), NOW, d) == ()


# --- scheduled bounds ---------------------------------------------------------------------------

PARIS = ZoneInfo("Europe/Paris")


def paris(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=PARIS).timestamp()


BUSINESS = {"name": "business-hours", "cron": "0 8 * * 1-5", "duration": "10h", "min": 4, "max": 12,
            "timezone": "Europe/Paris"}


@pytest.mark.parametrize(
    ("schedules", "now", "bounds"),
    [
        pytest.param([BUSINESS], paris(2024, 3, 4, 7, 59), (1, 3, "", ""), id="before the start: the pool's own"),
        pytest.param([BUSINESS], paris(2024, 3, 4, 8, 0), (4, 12, "schedule business-hours",
                                                           "schedule business-hours"), id="from the start"),
        pytest.param([BUSINESS], paris(2024, 3, 4, 17, 59), (4, 12, "schedule business-hours",
                                                             "schedule business-hours"), id="until the end"),
        pytest.param([BUSINESS], paris(2024, 3, 4, 18, 0), (1, 3, "", ""), id="not after duration"),
        pytest.param([BUSINESS], paris(2024, 3, 9, 9, 0), (1, 3, "", ""), id="not on Saturday"),
        pytest.param([BUSINESS], paris(2024, 4, 1, 8, 0), (4, 12, "schedule business-hours",
                                                           "schedule business-hours"),
                     id="local time across daylight saving time"),
        pytest.param([{"name": "cap", "cron": "0 9 * * *", "duration": "1h", "max": 2, "timezone": "Europe/Paris"},
                      {"name": "floor", "cron": "0 9 * * *", "duration": "1h", "min": 3, "timezone": "Europe/Paris"}],
                     paris(2024, 3, 4, 9, 0), (3, 3, "schedule floor", "raised to min of schedule floor"),
                     id="a later min above the max in force raises the max"),
        pytest.param([BUSINESS, {"name": "sale", "cron": "0 0 4 3 *", "duration": "1d", "min": 8, "max": 30,
                                 "timezone": "Europe/Paris"}],
                     paris(2024, 3, 4, 9, 0), (8, 30, "schedule sale", "schedule sale"),
                     id="the last-listed active schedule wins"),
        pytest.param([BUSINESS, {"name": "maintenance", "cron": "0 9 * * *", "duration": "1h", "max": 2,
                                 "timezone": "Europe/Paris"}],
                     paris(2024, 3, 4, 9, 30), (2, 2, "lowered to max of schedule maintenance",
                                                "schedule maintenance"),
                     id="a later max below the min in force lowers the min"),
        pytest.param([{"name": "maintenance", "cron": "0 9 * * *", "duration": "1h", "max": 2,
                       "timezone": "Europe/Paris"}, BUSINESS],
                     paris(2024, 3, 4, 9, 30), (4, 12, "schedule business-hours", "schedule business-hours"),
                     id="an earlier-listed schedule loses bound by bound"),
        pytest.param([{"name": "top", "cron": "@hourly", "duration": "10m", "min": 2}], paris(2024, 3, 4, 9, 5),
                     (2, 3, "schedule top", ""), id="a schedule setting only min"),
        pytest.param([{"name": "top", "cron": "@hourly", "duration": "10m", "min": 2}], paris(2024, 3, 4, 9, 15),
                     (1, 3, "", ""), id="a macro schedule after its duration"),
    ],
)
def test_effective_bounds(schedules: list[dict[str, Any]], now: float, bounds: tuple[int, int, str, str]) -> None:
    p = pool(max=3, schedules=[{k: v for k, v in s.items() if v is not None} for s in schedules])
    b = effective_bounds(p, now)
    assert (b.min, b.max, b.min_from, b.max_from) == bounds


def test_scheduled_bounds_drive_the_pool() -> None:
    p = pool(max=3, schedules=[BUSINESS, {"name": "night", "cron": "0 22 * * *", "duration": "8h", "max": 2,
                                          "timezone": "Europe/Paris"}])
    morning = paris(2024, 3, 4, 8, 0, 30)
    d = run(p, PoolState(2, last_scale_in_at=morning - 5), morning, sessions=flat(10, morning - 10))
    assert (d.outcome, d.desired, d.cause) == (Outcome.SCALE_OUT, 4, Cause.BELOW_MIN)
    assert d.reason == "below min: 2 < 4 (schedule business-hours)"
    assert str(d.bounds) == "min 4 (schedule business-hours), max 12 (schedule business-hours)"
    night = paris(2024, 3, 4, 23, 0)
    d = run(p, 3, night, sessions=flat(None, night - 10))
    assert (d.outcome, d.desired, d.cause) == (Outcome.SCALE_IN, 2, Cause.ABOVE_MAX)
    assert d.reason == "above max: 3 > 2 (schedule night)"
    assert describe_schedule(p.schedules[1], night) == "night: active since 2024-03-04 22:00 (Europe/Paris), 7h left"


def test_below_min_leaves_room_for_failed_members() -> None:
    d = run(pool(min=4, max=5), PoolState(2, toward_max=4), sessions=flat(10, NOW - 10))
    assert (d.outcome, d.desired) == (Outcome.SCALE_OUT, 3)


# --- the reasons an operator reads --------------------------------------------------------------

def _why_cases() -> list[Any]:
    busy = flat(30, NOW - 10)
    idle = flat(2, NOW - 10)
    return [
        pytest.param(pool(), PoolState(3, last_scale_out_at=NOW - 50), {"sessions": idle},
                     "cooldown: scale-in allowed in 10s", Cause.COOLDOWN, id="cooldown"),
        pytest.param(pool(cooldown={"scale_in": "3m"}), PoolState(3, last_scale_in_at=NOW - 50), {"sessions": idle},
                     "cooldown: scale-in allowed in 2m10s", Cause.COOLDOWN, id="cooldown in minutes"),
        pytest.param(pool(), PoolState(3), {"sessions": [Point(NOW - 5, None, "lb3: timeout")]},
                     "missing data for input sessions: lb3: timeout", Cause.MISSING_DATA, id="missing data"),
        pytest.param(pool(max=3), PoolState(3), {"sessions": busy}, "at max (3 of 3)", Cause.AT_MAX, id="at max"),
        pytest.param(pool(max=3), PoolState(2, toward_max=3), {"sessions": busy}, "at max (3 of 3, 1 failed)",
                     Cause.AT_MAX, id="at max with a failed member"),
        pytest.param(pool(min=3), PoolState(3), {"sessions": idle}, "at min (3)", Cause.AT_MIN, id="at min"),
        pytest.param(target(), PoolState(3), {"sessions": flat(41.2, NOW - 10)},
                     "within tolerance: 41.2 vs target 40 ±10%", Cause.KEPT, id="tolerance"),
        pytest.param(pool(**WARM), PoolState(4, in_service_since=(NOW - 999, NOW - 999, NOW - 25, NOW - 30)),
                     {"sessions": idle}, "warm-up: 2 members warming for 35s more", Cause.WARMUP, id="warm-up"),
        pytest.param(pool(dry_run=True, max=3), PoolState(2), {"sessions": busy}, "dry-run: would scale out to 3",
                     Cause.RULE, id="dry-run"),
        pytest.param(pool(stabilization={"scale_in": "5m"}), PoolState(4, recommendations=((NOW - 60, 4),)),
                     {"sessions": idle}, "stabilization: highest recommendation in the last 5m is 4",
                     Cause.STABILIZATION, id="stabilization"),
        pytest.param(pool(), PoolState(3, busy="scale-out op-7"), {"sessions": busy},
                     "busy: scale-out op-7 in progress", Cause.BUSY, id="busy"),
        pytest.param(pool(rules=[{"name": "busy", "input": "sessions", "above": 20, "for": "1m", "adjust": 1}]),
                     PoolState(3), {"sessions": busy}, "waiting: busy: sessions > 20 (30) for 10s of 1m",
                     Cause.PENDING, id="pending"),
        pytest.param(pool(), PoolState(3), {"sessions": flat(10, NOW - 10)},
                     "no rule fired: busy: sessions=10, needs > 20; idle: sessions=10, needs < 5", Cause.QUIET,
                     id="quiet"),
    ]


@pytest.mark.parametrize(("p", "state", "series", "reason", "cause"), _why_cases())
def test_reasons(p: PoolPolicy, state: PoolState, series: dict[str, list[Point]], reason: str, cause: Cause) -> None:
    d = evaluate(p, series, state, NOW)
    assert d.reason.startswith(reason), d.reason
    assert d.cause is cause
    if cause is not Cause.RULE:
        assert d.outcome is Outcome.HOLD and d.desired == d.current


@pytest.mark.parametrize(
    "inputs",
    [
        pytest.param({"sessions": {**SESSIONS, "window": "20s", "over": "max"}}, id="windowed input"),
        pytest.param({"sessions": {**SESSIONS, "on_missing": {"treat_as": 30}}}, id="input with a stand-in"),
        pytest.param({"sessions": dict(SESSIONS)}, id="plain input"),
    ],
)
def test_series_may_be_deques_on_every_path(inputs: dict[str, Any]) -> None:
    from collections import deque
    p = pool(inputs=inputs, rules=[{"name": "busy", "input": "sessions", "above": 20, "for": "30s", "adjust": 1},
                                   {"name": "slow", "alarm": "HighLatency", "for": "10s", "adjust": 2}])
    as_list = run(p, 3, sessions=flat(30, NOW - 100), HighLatency=flat(1.0, NOW - 60, step=10))
    as_deque = evaluate(p, {"sessions": deque(flat(30, NOW - 100)), "HighLatency": deque(flat(1.0, NOW - 60, step=10))},
                        PoolState(3), NOW)
    assert as_list == as_deque and as_list.outcome is Outcome.SCALE_OUT


def test_several_rules_keeping_the_size_are_each_named() -> None:
    p = pool(**TWO, rules=[{"name": "cpu", "input": "cpu", "target": 50},
                           {"name": "conns", "input": "sessions", "target": 10}])
    d = run(p, 4, sessions=flat(10.5, NOW - 10), cpu=flat(48, NOW - 10))
    assert d.reason == ("cpu: within tolerance: 48 vs target 50 ±10%; "
                        "conns: within tolerance: 10.5 vs target 10 ±10%"), d.reason
