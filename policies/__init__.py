"""Pure decision code and the policy-file model: no I/O, no clock of its own, no database."""

from policies.durations import format_duration, parse_duration
from policies.evaluate import (
    Decision,
    Outcome,
    Point,
    PoolState,
    RuleVerdict,
    Verdict,
    aggregate,
    cooldown_left,
    evaluate,
    window_needed,
)
from policies.model import Adjustment, Aggregate, Cooldown, Input, PolicyFile, PoolPolicy, ThresholdRule

__all__ = [
    "Adjustment", "Aggregate", "Cooldown", "Decision", "Input", "Outcome", "Point", "PolicyFile",
    "PoolPolicy", "PoolState", "RuleVerdict", "ThresholdRule", "Verdict", "aggregate", "cooldown_left",
    "evaluate", "format_duration", "parse_duration", "window_needed",
]
