"""The policy-file schema: every mistake is reported with the key it is about and a clear message,
and the shipped examples stay valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from ruamel.yaml import YAML

from policies import AlarmRule, PolicyFile, PoolPolicy, TargetRule, ThresholdRule

EXAMPLES = Path(__file__).resolve().parents[3] / "deploy" / "examples"
SESSIONS = {"source": "haproxy", "metric": "current_sessions"}
SCHEDULE = {"name": "day", "cron": "0 8 * * 1-5", "duration": "10h", "min": 2}


def body(**over: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "min": 1,
        "max": 4,
        "inputs": {"sessions": dict(SESSIONS)},
        "rules": [{"name": "busy", "input": "sessions", "above": 20, "adjust": "+1"}],
    }
    b.update(over)
    return b


def rule(**r: Any) -> dict[str, Any]:
    return body(rules=[{"name": "r", "input": "sessions", **r}])


def problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(key path as the config loader prints it, message) of every error."""
    with pytest.raises(ValidationError) as err:
        PolicyFile.model_validate({"pools": {"web": data}})
    return [(".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p[:1].isupper())),
             e["msg"].removeprefix("Value error, ")) for e in err.value.errors()]


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        # unknown keys, at every level
        pytest.param(body(colour="blue"), "pools.web.colour", "Extra inputs are not permitted", id="unknown pool key"),
        pytest.param(body(inputs={"sessions": {**SESSIONS, "agregate": "max"}}), "pools.web.inputs.sessions.agregate",
                     "Extra inputs are not permitted", id="unknown input key"),
        pytest.param(rule(above=1, adjust=1, fro="1m"), "pools.web.rules.0.fro", "Extra inputs are not permitted",
                     id="unknown threshold rule key"),
        pytest.param(rule(target=40, tolerence=0.2), "pools.web.rules.0.tolerence", "Extra inputs are not permitted",
                     id="unknown target rule key"),
        pytest.param(body(rules=[{"name": "a", "alarm": "X", "adjust": 1, "severity": "page"}]),
                     "pools.web.rules.0.severity", "Extra inputs are not permitted", id="unknown alarm rule key"),
        pytest.param(body(cooldown={"scale_up": "1m"}), "pools.web.cooldown.scale_up",
                     "Extra inputs are not permitted", id="unknown cooldown key"),
        pytest.param(body(stabilization={"down": "5m"}), "pools.web.stabilization.down",
                     "Extra inputs are not permitted", id="unknown stabilization key"),
        pytest.param(body(schedules=[{**SCHEDULE, "tz": "UTC"}]), "pools.web.schedules.0.tz",
                     "Extra inputs are not permitted", id="unknown schedule key"),
        # wrong types
        pytest.param(body(min="one"), "pools.web.min", "valid integer", id="min not a number"),
        pytest.param(body(dry_run="maybe"), "pools.web.dry_run", "valid boolean", id="dry_run not a boolean"),
        pytest.param(rule(above="high", adjust=1), "pools.web.rules.0.above", "valid number",
                     id="threshold not a number"),
        pytest.param(rule(above=1, adjust="+one"), "pools.web.rules.0.adjust", "adjust must look like +1, -2",
                     id="bad adjustment"),
        pytest.param(rule(above=1, adjust="+0"), "pools.web.rules.0.adjust", "a step is not zero", id="zero step"),
        pytest.param(rule(above=1, adjust="=50%"), "pools.web.rules.0.adjust", "adjust must look like",
                     id="exact percent"),
        pytest.param(rule(above=1, set=-1), "pools.web.rules.0", "set must be a number of members", id="bad set"),
        pytest.param(rule(target=0), "pools.web.rules.0.target", "greater than 0", id="target zero"),
        pytest.param(rule(target=40, tolerance="lots"), "pools.web.rules.0.tolerance", "not a percentage",
                     id="tolerance not a percentage"),
        pytest.param(rule(target=40, tolerance="100%"), "pools.web.rules.0.tolerance", "less than 1",
                     id="tolerance of 100%"),
        pytest.param(rule(target=40, max_step=0), "pools.web.rules.0.max_step", "greater than or equal to 1",
                     id="max_step zero"),
        pytest.param(body(rules=["busy"]), "pools.web.rules.0", "a rule is a mapping", id="rule not a mapping"),
        pytest.param(body(inputs={"sessions": {**SESSIONS, "aggregate": "median"}}),
                     "pools.web.inputs.sessions.aggregate", "aggregate must be avg, max, min, sum or a percentile",
                     id="unknown aggregate"),
        pytest.param(body(inputs={"sessions": {**SESSIONS, "aggregate": "p150"}}),
                     "pools.web.inputs.sessions.aggregate", "0 < p ≤ 100", id="percentile over 100"),
        pytest.param(body(inputs={"sessions": {**SESSIONS, "percentile": 0}}), "pools.web.inputs.sessions.aggregate",
                     "aggregate must be", id="percentile zero"),
        pytest.param(body(inputs={"sessions": {**SESSIONS, "aggregate": "max", "percentile": 95}}),
                     "pools.web.inputs.sessions", "write either aggregate: max or percentile: 95",
                     id="two aggregates"),
        pytest.param(body(inputs={"sessions": {**SESSIONS, "window": "1m", "over": "sum"}}),
                     "pools.web.inputs.sessions.over", "'avg', 'max' or 'min'", id="unknown window summary"),
        pytest.param(body(inputs={"sessions": {**SESSIONS, "over": "max"}}), "pools.web.inputs.sessions",
                     "`over` needs a `window`", id="over without window"),
        pytest.param(body(inputs={"sessions": {**SESSIONS, "on_missing": "zero"}}),
                     "pools.web.inputs.sessions.on_missing", "on_missing must be 'hold' or {treat_as: NUMBER}",
                     id="unknown on_missing"),
        pytest.param(body(inputs={"sessions": {"source": "haproxy"}}), "pools.web.inputs.sessions",
                     "a collector input needs `metric`", id="input without metric"),
        # durations
        pytest.param(rule(above=1, adjust=1, **{"for": "ten"}), "pools.web.rules.0.for", "not a duration: 'ten'",
                     id="unparsable for"),
        pytest.param(body(warmup="1 minute"), "pools.web.warmup", "not a duration", id="unparsable warmup"),
        pytest.param(body(cooldown={"scale_in": "-5m"}), "pools.web.cooldown.scale_in", "not a duration",
                     id="negative cooldown"),
        pytest.param(body(inputs={"sessions": {**SESSIONS, "window": "1x"}}), "pools.web.inputs.sessions.window",
                     "not a duration", id="unparsable window"),
        pytest.param(body(schedules=[{**SCHEDULE, "duration": "ten hours"}]), "pools.web.schedules.0.duration",
                     "not a duration", id="unparsable schedule duration"),
        pytest.param(body(schedules=[{**SCHEDULE, "duration": 0}]), "pools.web.schedules.0.duration",
                     "greater than 0", id="zero schedule duration"),
        # bounds
        pytest.param(body(min=5, max=2), "pools.web", "min (5) is greater than max (2)", id="min above max"),
        pytest.param(body(max=0), "pools.web.max", "greater than or equal to 1", id="max zero"),
        pytest.param(body(schedules=[{**SCHEDULE, "min": 5, "max": 2}]), "pools.web.schedules.0",
                     "schedule 'day': min (5) is greater than max (2)", id="schedule min above its max"),
        pytest.param(body(schedules=[{**SCHEDULE, "min": 6}]), "pools.web",
                     "schedules[0] 'day': min (6) is greater than the pool's max (4); set max in the schedule too",
                     id="schedule min above the pool's max"),
        pytest.param(body(min=2, schedules=[{**SCHEDULE, "min": None, "max": 1}]), "pools.web",
                     "schedules[0] 'day': max (1) is less than the pool's min (2)", id="schedule max below pool min"),
        pytest.param(body(schedules=[{**SCHEDULE, "min": None}]), "pools.web.schedules.0",
                     "schedule 'day' sets neither min nor max", id="schedule without bounds"),
        pytest.param(body(schedules=[SCHEDULE, SCHEDULE]), "pools.web", "schedule name 'day' is used twice",
                     id="schedule name twice"),
        # cron and time zones
        pytest.param(body(schedules=[{**SCHEDULE, "cron": "0 25 * * *"}]), "pools.web.schedules.0.cron",
                     "not a cron expression: '0 25 * * *'", id="cron hour out of range"),
        pytest.param(body(schedules=[{**SCHEDULE, "cron": "0 8 * *"}]), "pools.web.schedules.0.cron",
                     "needs 5 fields (minute hour day-of-month month day-of-week", id="cron with 4 fields"),
        pytest.param(body(schedules=[{**SCHEDULE, "cron": "0 0 8 * * 1-5"}]), "pools.web.schedules.0.cron",
                     "needs 5 fields", id="cron with seconds"),
        pytest.param(body(schedules=[{**SCHEDULE, "cron": "0 0 30 2 *"}]), "pools.web.schedules.0.cron",
                     "cron '0 0 30 2 *' never fires", id="cron that never fires"),
        pytest.param(body(schedules=[{**SCHEDULE, "cron": "@reboot"}]), "pools.web.schedules.0.cron",
                     "needs 5 fields", id="cron macro without a time"),
        pytest.param(body(schedules=[{**SCHEDULE, "timezone": "Europe/Pariss"}]), "pools.web.schedules.0.timezone",
                     "unknown timezone 'Europe/Pariss'", id="unknown timezone"),
        pytest.param(body(schedules=[{**SCHEDULE, "timezone": "../etc/passwd"}]), "pools.web.schedules.0.timezone",
                     "unknown timezone", id="a path is not a timezone"),
        # rules against inputs
        pytest.param(rule(above=1), "pools.web.rules.0.adjust", "Field required", id="threshold without adjust"),
        pytest.param(rule(adjust="+1"), "pools.web.rules.0", "exactly one of 'above' or 'below'",
                     id="threshold without comparison"),
        pytest.param(rule(above=1, below=5, adjust="+1"), "pools.web.rules.0", "got above, below",
                     id="threshold with two comparisons"),
        pytest.param(rule(above=1, adjust="+1", set=3), "pools.web.rules.0", "write either adjust or set",
                     id="adjust and set"),
        pytest.param(rule(above=1, adjust="+10%", min_step=3, max_step=2), "pools.web.rules.0",
                     "min_step (3) is greater than max_step (2)", id="min_step above max_step"),
        pytest.param(rule(above=1, adjust="=3", min_step=2), "pools.web.rules.0",
                     "min_step does not apply to an exact size (=3)", id="min_step on exact size"),
        pytest.param(body(rules=[{"name": "x", "input": "nope", "above": 1, "adjust": 1}]), "pools.web",
                     "rule 'x' uses unknown input 'nope' (inputs: sessions)", id="unknown input"),
        pytest.param(body(rules=[{"name": "x", "input": "sessions", "above": 1, "adjust": 1},
                                 {"name": "x", "input": "sessions", "below": 1, "adjust": -1}]), "pools.web",
                     "rule name 'x' is used twice", id="rule name twice"),
        pytest.param(body(rules=[{"name": "Busy", "input": "sessions", "above": 1, "adjust": 1}]),
                     "pools.web.rules.0.name", "should match pattern", id="rule name with capitals"),
        pytest.param(body(inputs={"sessions": dict(SESSIONS), "hl": {"source": "alarm", "alarm": "HighLatency"}},
                          rules=[{"name": "x", "input": "hl", "above": 0, "adjust": 1}]), "pools.web",
                     "rules[0] 'x': input 'hl' is an alarm: use an alarm rule (alarm: hl", id="threshold on an alarm"),
        pytest.param(body(rules=[{"name": "x", "alarm": "sessions", "adjust": 1}]), "pools.web",
                     "rules[0] 'x': alarm 'sessions': input 'sessions' is not an alarm input",
                     id="alarm rule on a metric input"),
        pytest.param(body(inputs={"hl": {"source": "alarm", "alarm": "HighLatency", "window": "1m"}}),
                     "pools.web.inputs.hl", "an alarm input takes no window", id="alarm input with a window"),
        pytest.param(body(inputs={"hl": {"source": "alarm"}}), "pools.web.inputs.hl",
                     "an alarm input needs `alarm: NAME`", id="alarm input without a name"),
        pytest.param(body(inputs={"sessions": {**SESSIONS, "alarm": "X"}}), "pools.web.inputs.sessions",
                     "`alarm` only goes with source: alarm", id="alarm on a collector input"),
    ],
)
def test_validation_errors(data: dict[str, Any], key: str, message: str) -> None:
    got = problems(data)
    assert any(k == key and message in m for k, m in got), got


def test_every_problem_is_reported_at_once() -> None:
    got = problems(body(min="x", cooldown={"scale_in": "soon"},
                        schedules=[{**SCHEDULE, "cron": "bad", "timezone": "Mars/Olympus"}]))
    assert {k for k, _ in got} == {"pools.web.min", "pools.web.cooldown.scale_in", "pools.web.schedules.0.cron",
                                   "pools.web.schedules.0.timezone"}


def test_rule_kinds_are_told_apart_by_their_keys() -> None:
    pf = PolicyFile.model_validate({"pools": {"web": body(rules=[
        {"name": "a", "input": "sessions", "above": 1, "adjust": 1},
        {"name": "b", "input": "sessions", "target": 40},
        {"name": "c", "alarm": "HighLatency", "adjust": "+2"},
    ])}})
    assert [type(r) for r in pf.pools["web"].rules] == [ThresholdRule, TargetRule, AlarmRule]


def load(path: Path) -> PolicyFile:
    return PolicyFile.model_validate(YAML(typ="safe").load(path.read_text()))


def test_the_reference_example_is_valid_and_uses_every_feature() -> None:
    pf = load(EXAMPLES / "policy-reference.yaml")
    web: PoolPolicy = pf.pools["web"]
    kinds = {type(r) for r in web.rules}
    assert kinds == {ThresholdRule, TargetRule, AlarmRule}
    comparisons = {k for r in web.rules if isinstance(r, ThresholdRule)
                   for k in ("above", "below", "at_least", "at_most") if getattr(r, k) is not None}
    assert comparisons == {"above", "below", "at_least"}
    assert {i.aggregate for i in web.inputs.values() if not i.is_alarm} >= {"avg", "max", "p95"}
    assert any(i.window for i in web.inputs.values()) and any(i.on_missing.treat_as for i in web.inputs.values())
    assert any(i.labels for i in web.inputs.values())
    assert web.alarm_inputs() == {"latency": "HighLatency", "LbSaturated": "LbSaturated"}
    assert web.warmup == 90 and web.stabilization.scale_in == 300 and len(web.schedules) == 3
    assert any(r.adjust.exact for r in web.rules if isinstance(r, ThresholdRule | AlarmRule))
    assert set(pf.pools) == {"web", "api"}


def test_the_shipped_policy_stays_valid() -> None:
    web = load(EXAMPLES / "policies" / "web.yaml").pools["web"]
    assert (web.min, web.max, [r.name for r in web.rules]) == (1, 3, ["busy", "hot-host", "idle"])


def test_the_example_in_the_model_docstring_is_valid() -> None:
    import policies.model
    doc = policies.model.__doc__ or ""
    block = "\n".join(line[4:] for line in doc.splitlines() if line.startswith("    "))
    web = PolicyFile.model_validate(YAML(typ="safe").load(block)).pools["web"]
    assert {type(r) for r in web.rules} == {ThresholdRule, TargetRule, AlarmRule} and web.schedules


def test_an_input_selects_its_series_by_an_exact_label_set() -> None:
    plain = PolicyFile.model_validate({"pools": {"web": body()}}).pools["web"].inputs["sessions"]
    assert plain.labels == {} and plain.series() == "current_sessions{}"
    assert plain.describe() == "avg of current_sessions"
    rx = {"source": "snmp", "metric": "rx_bytes_per_s", "labels": {"interface": "eth0", "dir": 'a"b'}}
    inp = PolicyFile.model_validate({"pools": {"web": body(inputs={"sessions": rx})}}).pools["web"].inputs["sessions"]
    assert inp.series() == 'rx_bytes_per_s{dir="a\\"b",interface="eth0"}'
    assert inp.describe() == 'avg of rx_bytes_per_s{dir="a\\"b",interface="eth0"}'
    assert problems(body(inputs={"sessions": {**rx, "labels": {"if-name": "eth0"}}})) == [
        ("pools.web.inputs.sessions.labels.if-name.[key]", "String should match pattern '^[a-zA-Z_][a-zA-Z0-9_]*$'")]
    assert problems(body(inputs={"sessions": {**rx, "labels": {"index": 1}}})) == [
        ("pools.web.inputs.sessions.labels.index", "Input should be a valid string")]
    alarm = {"source": "alarm", "alarm": "HighLatency", "labels": {"severity": "page"}}
    assert ("pools.web.inputs.hl", "an alarm input takes no labels (it is 1 while firing, 0 when resolved)") in \
        problems(body(inputs={"sessions": dict(SESSIONS), "hl": alarm}))
