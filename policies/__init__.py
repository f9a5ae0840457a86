"""Pure decision code and the policy-file model: no I/O, no clock of its own, no database."""

from policies.durations import format_duration, parse_duration
from policies.evaluate import (
    Cause,
    Decision,
    Outcome,
    PoolState,
    RuleVerdict,
    Verdict,
    cooldown_left,
    evaluate,
    history_needed,
    is_warming,
    remember,
    warming_left,
    window_needed,
)
from policies.model import (
    ALARM_SOURCE,
    Adjustment,
    Aggregate,
    AlarmRule,
    Cooldown,
    Input,
    MissingData,
    PolicyFile,
    PoolPolicy,
    Rule,
    Schedule,
    Stabilization,
    TargetRule,
    ThresholdRule,
    series_name,
)
from policies.schedule import Bounds, active_since, describe_schedule, effective_bounds
from policies.series import Point, Reading, aggregate, percentile

__all__ = [
    "ALARM_SOURCE", "Adjustment", "Aggregate", "AlarmRule", "Bounds", "Cause", "Cooldown", "Decision", "Input",
    "MissingData", "Outcome", "Point", "PolicyFile", "PoolPolicy", "PoolState", "Reading", "Rule", "RuleVerdict",
    "Schedule", "Stabilization", "TargetRule", "ThresholdRule", "Verdict", "active_since", "aggregate",
    "cooldown_left", "describe_schedule", "effective_bounds", "evaluate", "format_duration", "history_needed",
    "is_warming", "parse_duration", "percentile", "remember", "series_name", "warming_left",
    "window_needed",
]
