"""The policy-file model: what an operator writes to say when a pool grows or shrinks.

Only the shape and its validation live here (pydantic, `extra="forbid"` everywhere so a typo is an
error, not a silently ignored key). Loading files and mapping error locations to FILE:LINE:COL is
the caller's job; every message here names the key it is about. These models ARE the schema: their
docstrings and field descriptions are the reference, deploy/examples/policy-reference.yaml shows
every key in use, and policies/README.md says what the caller feeds in.

    pools:
      web:
        min: 1                      # hard bounds (booting and failed members count toward max)
        max: 8
        warmup: 60s                 # a new member's metrics are ignored for its first minute
        inputs:
          sessions: {source: haproxy, metric: current_sessions, aggregate: avg}
          cpu: {source: snmp, metric: cpu_busy, aggregate: avg, window: 1m, over: avg}
          hottest: {source: snmp, metric: cpu_busy, aggregate: p95}
          latency: {source: alarm, alarm: HighLatency}        # fed by the alarm webhook
        rules:
          - {name: busy, input: sessions, above: 20, for: 30s, adjust: +1}
          - {name: idle, input: sessions, below: 5, for: 2m, adjust: -1}
          - {name: hot, input: hottest, at_least: 95, for: 1m, adjust: +50%, max_step: 4}
          - {name: cpu, input: cpu, target: 60, tolerance: 10%, max_step: 3}
          - {name: slow, alarm: HighLatency, adjust: +2}
        cooldown: {scale_out: 1m, scale_in: 5m}
        stabilization: {scale_in: 5m}
        schedules:
          - {name: business-hours, cron: "0 8 * * 1-5", duration: 10h, min: 4, timezone: Europe/Paris}

Rule kinds are told apart by their keys: `target:` makes a target-tracking rule, `alarm:` an alarm
rule, anything else is a threshold rule (which needs one of above/below/at_least/at_most).
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from policies.cron import check_cron, check_timezone
from policies.durations import Duration, PositiveDuration, format_duration

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]
LabelName = Annotated[str, Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")]

# The `source` of an input fed by the alarm webhook rather than by a collector.
ALARM_SOURCE = "alarm"


class Strict(BaseModel):
    # allow_inf_nan=False: every number is finite (.inf, .nan and 1e999 in YAML are refused): an
    # infinite threshold or target never (or always) fires, and NaN compares false with everything.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


def series_name(metric: str, labels: Mapping[str, str]) -> str:
    """'rx_bytes_per_s{interface="eth0"}': a metric and its exact label set (sorted; '{}' if none)."""
    inner = ",".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(labels.items()))
    return f"{metric}{{{inner}}}"


class Aggregate(enum.StrEnum):
    """How one value per member becomes one value for the pool. Percentiles are written `p95`."""

    AVG = "avg"
    MAX = "max"
    MIN = "min"
    SUM = "sum"


_PERCENTILE = re.compile(r"^p(\d+(?:\.\d+)?)$")


def parse_aggregate(value: Any) -> str:
    """'avg' | 'max' | 'min' | 'sum' | 'pNN' (0 < NN ≤ 100), normalised ('P95.0' → 'p95')."""
    if not isinstance(value, str):
        raise ValueError(f"aggregate must be avg, max, min, sum or a percentile like p95, got {value!r}")
    text = value.strip().lower()
    if text in Aggregate.__members__.values():
        return str(Aggregate(text))
    m = _PERCENTILE.match(text)
    if m and 0 < float(m.group(1)) <= 100:
        return f"p{float(m.group(1)):g}"
    if text == "percentile":
        raise ValueError("aggregate 'percentile' needs `percentile: NN` (or write aggregate: pNN)")
    raise ValueError(f"aggregate must be avg, max, min, sum or a percentile like p95 (0 < p ≤ 100), "
                     f"got {value!r}")


AggregateName = Annotated[str, BeforeValidator(parse_aggregate)]


def parse_fraction(value: Any) -> Any:
    """A tolerance: 0.1 or '10%'."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"not a percentage: {value!r} (use e.g. 10% or 0.1)") from None
    return value


class MissingData(Strict):
    """What rules read when an input has no data: nothing (`hold`), or a stand-in value.

    `on_missing: hold` (the default): rules on the input say no_data and have no opinion.
    `on_missing: {treat_as: 100}`: rules read 100 while data is missing, so a missing input can
    ask for a scale-out (like CloudWatch's "treat missing data as breaching"). A substituted value
    never counts as data for a scale-in: the pool still only shrinks on real, complete readings.
    """

    treat_as: float | None = None

    @classmethod
    def parse(cls, value: Any) -> Any:
        if value == "hold" or value is None:
            return {}
        if isinstance(value, MissingData):
            return value
        if isinstance(value, dict) and set(value) == {"treat_as"}:
            return value
        raise ValueError(f"on_missing must be 'hold' or {{treat_as: NUMBER}}, got {value!r}")

    def __str__(self) -> str:
        return "hold" if self.treat_as is None else f"treat_as {self.treat_as:g}"


class Input(Strict):
    """A pool-level signal rules read, from a collector or from the alarm webhook.

    Collector inputs: the caller reads `metric` from every in-service member (members still in
    `warmup` excepted), combines the values with `aggregate` into one pool-level point per
    collection, and keeps the series. With `window`, rules read the `over` (avg | max | min) of the
    points of the last `window` instead of the newest point alone: e.g. `window: 5m, over: max`
    smooths out a dip. Until the window is full of data, the reading counts as partial (enough to
    grow, never to shrink).

    `labels` selects one series of `metric` by its label set, which must EQUAL the given mapping:
    no `labels` (or `{}`) reads the unlabelled sample, e.g. the snmp collector's total of
    `rx_bytes_per_s` over every interface, never one interface's; `labels: {interface: eth0}` reads
    exactly the sample labelled interface=eth0 and nothing else (a sample with more labels does not
    match). A member whose answer has no such sample has no data for the input; one with two (a
    collector bug) has no data either, and the reason says so.

    Alarm inputs (`source: alarm`, `alarm: NAME`): points of value 1 while the alarm fires, 0 once
    it is resolved; they take no metric, labels, aggregate or window.
    """

    source: str = Field(description=f"a collector in scaler.yaml, or '{ALARM_SOURCE}' for webhook alarms")
    metric: str | None = Field(default=None, description="the collector's metric name (collector inputs)")
    labels: dict[LabelName, str] = Field(
        default_factory=dict, description="the label set of the one series to read, matched exactly; "
                                          "{} (default) is the unlabelled sample")
    alarm: str | None = Field(default=None, min_length=1,
                              description="the alarm's name, e.g. Alertmanager's alertname (alarm inputs)")
    aggregate: AggregateName = Field(default="avg", description="avg | max | min | sum | pNN across members")
    percentile: float | None = Field(default=None, gt=0, le=100,
                                     description="same as aggregate: pNN (write one or the other)")
    window: Duration = Field(default=0.0, description="read the `over` of this much history (0 = newest point)")
    over: Literal["avg", "max", "min"] = Field(default="avg", description="how `window` is summarised")
    on_missing: Annotated[MissingData, BeforeValidator(MissingData.parse)] = Field(
        default=MissingData(), description="'hold' (default) or {treat_as: NUMBER}")

    @model_validator(mode="before")
    @classmethod
    def _percentile_key(cls, data: Any) -> Any:
        # `percentile: 95` is another spelling of `aggregate: p95`.
        # A non-finite percentile is left to the field's own check, which names its line.
        if isinstance(data, dict) and isinstance(data.get("percentile"), int | float) \
                and not isinstance(data.get("percentile"), bool) and math.isfinite(data["percentile"]):
            agg = data.get("aggregate")
            if agg not in (None, "percentile"):
                raise ValueError(f"write either aggregate: {agg} or percentile: {data['percentile']}, not both")
            data = {**data, "aggregate": f"p{float(data['percentile']):g}"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = []
        if self.is_alarm:
            if not self.alarm:
                problems.append("an alarm input needs `alarm: NAME`")
            extra = [k for k in ("metric", "labels", "aggregate", "percentile", "window", "over", "on_missing")
                     if k in self.model_fields_set]
            if extra:
                problems.append(f"an alarm input takes no {', '.join(extra)} (it is 1 while firing, 0 when "
                                "resolved)")
        else:
            if not self.metric:
                problems.append("a collector input needs `metric`")
            if self.alarm is not None:
                problems.append(f"`alarm` only goes with source: {ALARM_SOURCE}")
            if "over" in self.model_fields_set and not self.window:
                problems.append("`over` needs a `window`")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def is_alarm(self) -> bool:
        return self.source == ALARM_SOURCE

    def series(self) -> str:
        """The selected series as 'rx_bytes_per_s{interface="eth0"}' ('current_sessions{}' unlabelled)."""
        return series_name(self.metric or "", self.labels)

    def describe(self) -> str:
        """'avg of current_sessions', 'max over 5m of p95 of cpu', 'alarm HighLatency'."""
        if self.is_alarm:
            return f"alarm {self.alarm}"
        what = f"{self.aggregate} of {self.series() if self.labels else self.metric}"
        return f"{self.over} over {format_duration(self.window)} of {what}" if self.window else what


_ADJUST = re.compile(r"^([+\-=])\s*(\d+)(%?)$")


class Adjustment(Strict):
    """A step: `+n` / `-n` members, `+p%` / `-p%` of the size, or `=n` (exactly n members).

    Percent steps are at least one member and round toward more capacity: up when growing, down
    when shrinking (-10% of 25 removes 2).
    """

    sign: int
    amount: int
    percent: bool = False
    exact: bool = False

    @classmethod
    def parse(cls, value: Any) -> Any:
        if isinstance(value, Adjustment | dict):
            return value
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"adjust must look like +1, -2, +50% or =4, got {value!r}")
        text = (f"+{value}" if value >= 0 else str(value)) if isinstance(value, int) else value.strip()
        m = _ADJUST.match(text)
        if not m or (m.group(1) == "=" and m.group(3)):
            raise ValueError(f"adjust must look like +1, -2, +50% or =4, got {value!r}")
        if m.group(1) != "=" and int(m.group(2)) == 0:
            raise ValueError(f"adjust must look like +1, -2, +50% or =4 (a step is not zero), got {value!r}")
        return {"sign": {"+": 1, "-": -1, "=": 0}[m.group(1)], "amount": int(m.group(2)),
                "percent": bool(m.group(3)), "exact": m.group(1) == "="}

    def step(self, current: int) -> int:
        """Signed number of members this adjustment asks for at `current` size."""
        if self.exact:
            return self.amount - current
        if not self.percent:
            return self.sign * self.amount
        raw = current * self.amount / 100
        n = math.ceil(raw - 1e-9) if self.sign > 0 else math.floor(raw + 1e-9)
        return self.sign * max(1, n)

    def __str__(self) -> str:
        if self.exact:
            return f"={self.amount}"
        return f"{'+' if self.sign > 0 else '-'}{self.amount}{'%' if self.percent else ''}"


AdjustmentField = Annotated[Adjustment, BeforeValidator(Adjustment.parse)]


def _set_is_exact(data: Any) -> Any:
    # `set: 4` is another spelling of `adjust: =4`.
    if isinstance(data, dict) and "set" in data:
        if "adjust" in data:
            raise ValueError("write either adjust or set, not both")
        rest = {k: v for k, v in data.items() if k != "set"}
        value = data["set"]
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return {**rest, "adjust": f"={value}"}
        raise ValueError(f"set must be a number of members (0 or more), got {value!r}")
    return data


MinStep = Annotated[int | None, Field(ge=1, description="a change, when there is one, is at least this many "
                                                       "members (AWS's MinAdjustmentMagnitude)")]
MaxStep = Annotated[int | None, Field(ge=1, description="one action changes at most this many members")]


class Steps(Strict):
    """What every rule shares: limits on how many members one action adds or removes."""

    min_step: MinStep = None
    max_step: MaxStep = None

    def limit(self, step: int) -> int:
        """`step` with its size held within [min_step, max_step]; 0 stays 0."""
        if step == 0:
            return 0
        size = abs(step)
        if self.min_step is not None:
            size = max(size, self.min_step)
        if self.max_step is not None:
            size = min(size, self.max_step)
        return size if step > 0 else -size

    def _check_steps(self) -> list[str]:
        if self.min_step is not None and self.max_step is not None and self.min_step > self.max_step:
            return [f"min_step ({self.min_step}) is greater than max_step ({self.max_step})"]
        return []


class ThresholdRule(Steps):
    """Fires when `input` stays above / below / at_least / at_most a value for `for`, asking for
    `adjust` (or `set`). A rule that does not fire has no opinion: it never holds back another
    rule's scale-in."""

    name: Name
    input: str
    above: float | None = Field(default=None, description="fires when the input is > this")
    below: float | None = Field(default=None, description="fires when the input is < this")
    at_least: float | None = Field(default=None, description="fires when the input is ≥ this")
    at_most: float | None = Field(default=None, description="fires when the input is ≤ this")
    for_s: Duration = Field(default=0.0, alias="for",
                            description="how long the condition must hold without a gap in the data")
    adjust: AdjustmentField

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        return _set_is_exact(data)

    @model_validator(mode="after")
    def _one_comparison(self) -> Self:
        given = [k for k in ("above", "below", "at_least", "at_most") if getattr(self, k) is not None]
        problems = self._check_steps()
        if len(given) != 1:
            problems.insert(0, "a rule needs exactly one of 'above' or 'below' (or 'at_least' / 'at_most')"
                            + (f", got {', '.join(given)}" if given else ""))
        if self.adjust.exact and self.min_step is not None:
            problems.append(f"min_step does not apply to an exact size ({self.adjust})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def holds(self, value: float) -> bool:
        if self.above is not None:
            return value > self.above
        if self.below is not None:
            return value < self.below
        if self.at_least is not None:
            return value >= self.at_least
        assert self.at_most is not None
        return value <= self.at_most

    def comparison(self) -> str:
        """'> 20', '≤ 5'."""
        for key, op in (("above", ">"), ("below", "<"), ("at_least", "≥"), ("at_most", "≤")):
            v = getattr(self, key)
            if v is not None:
                return f"{op} {v:g}"
        raise AssertionError("validated rule without a comparison")

    def condition(self) -> str:
        return f"{self.input} {self.comparison()}"


class TargetRule(Steps):
    """Target tracking: keep `input` near `target` per member, like Kubernetes' HPA.

    The rule asks for ceil(measured * value / target) members, where `measured` is the number of
    members the value was read from (in service, past warm-up). Within the tolerance band
    (|value / target - 1| ≤ tolerance) it asks to keep the current size, and that opinion holds
    back other rules' scale-ins. Meant for per-member averages (aggregate: avg), such as sessions
    or CPU per LB.
    """

    name: Name
    input: str
    target: float = Field(gt=0, description="the value per member to keep the input at")
    tolerance: Annotated[float, BeforeValidator(parse_fraction)] = Field(
        default=0.1, ge=0, lt=1, description="no change while |value/target - 1| ≤ this (0.1 or 10%)")
    scale_in: bool = Field(default=True, description="false: this rule only grows the pool, and never "
                                                     "holds back another rule's scale-in")

    @model_validator(mode="after")
    def _steps(self) -> Self:
        if problems := self._check_steps():
            raise ValueError("; ".join(problems))
        return self


class AlarmRule(Steps):
    """Fires while an alarm fires (for `for`, if given), asking for `adjust`.

    `alarm` names an alarm input (by its key under `inputs`) or an alarm by name; an alarm named
    here without an input is declared implicitly as input `NAME: {source: alarm, alarm: NAME}`.
    A resolved alarm only withdraws the wish: it never shrinks the pool by itself.
    """

    name: Name
    alarm: str = Field(min_length=1)
    for_s: Duration = Field(default=0.0, alias="for", description="how long the alarm must have been firing")
    adjust: AdjustmentField

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        return _set_is_exact(data)

    @model_validator(mode="after")
    def _steps(self) -> Self:
        problems = self._check_steps()
        if self.adjust.exact and self.min_step is not None:
            problems.append(f"min_step does not apply to an exact size ({self.adjust})")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _rule_kind(value: Any) -> str:
    # Capitalised tags: the config loader skips them when it turns error locations into keys.
    if isinstance(value, dict):
        if "target" in value:
            return "TargetRule"
        if "alarm" in value:
            return "AlarmRule"
        return "ThresholdRule"
    return type(value).__name__


Rule = Annotated[
    Annotated[ThresholdRule, Tag("ThresholdRule")] | Annotated[TargetRule, Tag("TargetRule")]
    | Annotated[AlarmRule, Tag("AlarmRule")],
    Discriminator(_rule_kind, custom_error_type="rule_kind",
                  custom_error_message="a rule is a mapping: {name, input, above|below|at_least|at_most, adjust}, "
                                       "{name, input, target} or {name, alarm, adjust}"),
]


class Cooldown(Strict):
    """Quiet periods, per direction, counted from the completion of the last action of either
    direction: a scale-out waits `scale_out` after any action, a scale-in waits `scale_in`.

    Counting from either direction bounds flapping: a square wave cannot cause more than one action
    per cooldown. Keep `scale_out` short (capacity is urgent) and `scale_in` long. Bound
    corrections (below min, above max) do not wait for cooldowns.
    """

    scale_out: Duration = 60.0
    scale_in: Duration = 300.0


class Stabilization(Strict):
    """Act on the recent past, not on one evaluation (Kubernetes HPA's stabilization window).

    `scale_in: 5m`: a scale-in goes only down to the HIGHEST size recommended during the last five
    minutes, so one quiet moment after a peak does not shrink the pool. `scale_out` (off by
    default: capacity is urgent) does the same upward with the LOWEST recommendation. The caller
    keeps the history (see `policies.remember`).
    """

    scale_in: Duration = 0.0
    scale_out: Duration = 0.0


class Schedule(Strict):
    """Bounds that apply for `duration` from each time `cron` fires (in `timezone`).

    A schedule sets `min`, `max` or both; the pool's own bound applies to the one it leaves out.
    When several schedules are active, the one listed LAST wins, bound by bound: list the regular
    ones first (business hours) and the exceptions after (a sale, a maintenance window). If the
    winning min and max come from different places and cross, the later-listed one wins and the
    other is moved to meet it (the pool's own bounds count as listed first).
    """

    name: Name
    cron: Annotated[str, AfterValidator(check_cron)] = Field(
        description="5 fields: minute hour day-of-month month day-of-week, e.g. '0 8 * * 1-5'; or @daily…")
    duration: Duration = Field(gt=0, description="how long the bounds apply after each start")
    timezone: Annotated[str, AfterValidator(check_timezone)] = Field(
        default="UTC", description="IANA name, e.g. Europe/Paris; daylight saving time is followed")
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.min is None and self.max is None:
            raise ValueError(f"schedule {self.name!r} sets neither min nor max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"schedule {self.name!r}: min ({self.min}) is greater than max ({self.max})")
        return self


class PoolPolicy(Strict):
    """How one pool grows and shrinks. Combining rules:

    - every rule has an opinion (a size) or none: a threshold or alarm rule only while it fires, a
      target-tracking rule whenever it has data (within tolerance: keep the current size);
    - scale out if any opinion is above the current size; the largest wins;
    - scale in only if every opinion is below the current size (the smallest step wins), every
      input a rule reads has fresh and complete data, no member is warming up, and the
      stabilization window agrees;
    - bounds (scheduled ones included) are hard and corrected at once; booting and failed members
      count toward max; cooldowns apply to rule-driven actions of either kind.
    """

    name: Name = Field(description="the pool's name; filled from the key under `pools:`")
    min: int = Field(ge=0)
    max: int = Field(ge=1)
    standby: int = Field(default=0, ge=0, le=1000,
                         description="warm standby members: booted, health-checked, not announced, taken "
                                     "first by a scale-out or a replacement; not counted toward max")
    inputs: dict[str, Input]
    rules: list[Rule] = Field(min_length=1)
    cooldown: Cooldown = Cooldown()
    stabilization: Stabilization = Stabilization()
    schedules: list[Schedule] = Field(default_factory=list)
    warmup: Duration = Field(default=0.0, description="a member's first seconds in service: its metrics are "
                                                      "left out, and scale-ins wait")
    dry_run: bool = False
    stale_after: PositiveDuration = Field(default=30.0, description="an input whose newest point is older has "
                                                                    "no data (more than 0: 0 makes every input stale)")

    @model_validator(mode="before")
    @classmethod
    def _declare_alarms(cls, data: Any) -> Any:
        # `alarm: HighLatency` in a rule without a matching input declares the input, so the caller
        # sees every series it must feed in `inputs`.
        if not (isinstance(data, dict) and isinstance(data.get("rules"), list)):
            return data
        inputs = data.get("inputs")
        if inputs is None:
            inputs = {}
        if not isinstance(inputs, dict):
            return data
        added = dict(inputs)
        for rule in data["rules"]:
            if not (isinstance(rule, dict) and isinstance(rule.get("alarm"), str) and "target" not in rule):
                continue
            name = rule["alarm"]
            if name in added or any(isinstance(i, dict) and i.get("source") == ALARM_SOURCE
                                    and i.get("alarm") == name for i in added.values()):
                continue
            added[name] = {"source": ALARM_SOURCE, "alarm": name}
        return {**data, "inputs": added} if added != inputs else data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = []
        if self.min > self.max:
            problems.append(f"min ({self.min}) is greater than max ({self.max})")
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            where = f"rules[{i}] {rule.name!r}"
            if rule.name in seen:
                problems.append(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
            if isinstance(rule, AlarmRule):
                name = self.input_of(rule)
                inp = self.inputs.get(name)
                if inp is None or not inp.is_alarm:
                    problems.append(f"{where}: alarm {rule.alarm!r}: input {rule.alarm!r} is not an alarm input "
                                    f"(source: {inp.source if inp else '?'}); name the alarm input instead")
                continue
            if rule.input not in self.inputs:
                known = ", ".join(sorted(self.inputs)) or "none"
                problems.append(f"rule {rule.name!r} uses unknown input {rule.input!r} (inputs: {known})")
            elif self.inputs[rule.input].is_alarm:
                problems.append(f"{where}: input {rule.input!r} is an alarm: use an alarm rule "
                                f"(alarm: {rule.input}, adjust: +1)")
        names: set[str] = set()
        for i, s in enumerate(self.schedules):
            if s.name in names:
                problems.append(f"schedule name {s.name!r} is used twice")
            names.add(s.name)
            where = f"schedules[{i}] {s.name!r}"
            if s.min is not None and s.max is None and s.min > self.max:
                problems.append(f"{where}: min ({s.min}) is greater than the pool's max ({self.max}); "
                                "set max in the schedule too")
            if s.max is not None and s.min is None and s.max < self.min:
                problems.append(f"{where}: max ({s.max}) is less than the pool's min ({self.min}); "
                                "set min in the schedule too")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def input_of(self, rule: ThresholdRule | TargetRule | AlarmRule) -> str:
        """The key under `inputs` a rule reads."""
        if not isinstance(rule, AlarmRule):
            return rule.input
        inp = self.inputs.get(rule.alarm)
        if inp is not None and inp.is_alarm:
            return rule.alarm
        for name, i in self.inputs.items():
            if i.is_alarm and i.alarm == rule.alarm:
                return name
        return rule.alarm

    def alarm_inputs(self) -> dict[str, str]:
        """{input key: alarm name} of every alarm input: the series the alarm receiver feeds."""
        return {name: i.alarm for name, i in self.inputs.items() if i.is_alarm and i.alarm}


class PolicyFile(Strict):
    """One policy file: one or more pools, keyed by pool name."""

    pools: dict[str, PoolPolicy] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _name_pools(cls, data: Any) -> Any:
        # The key is the name; copying it in keeps error locations (pools.web.rules.0) intact.
        if isinstance(data, dict) and isinstance(data.get("pools"), dict):
            pools = {k: ({**v, "name": k} if isinstance(v, dict) else v) for k, v in data["pools"].items()}
            data = {**data, "pools": pools}
        return data


__all__ = [
    "ALARM_SOURCE", "Adjustment", "Aggregate", "AlarmRule", "Cooldown", "Input", "MissingData", "PolicyFile",
    "PoolPolicy", "Rule", "Schedule", "Stabilization", "Steps", "TargetRule", "ThresholdRule", "parse_aggregate",
    "series_name",
]
