"""The policy-file model: what an operator writes to say when a pool grows or shrinks.

Only the shape and its validation live here (pydantic, `extra="forbid"` everywhere so a typo is an
error, not a silently ignored key). Loading files and mapping errors to lines is the caller's job.

    pools:
      web:
        min: 1
        max: 4
        inputs:
          sessions: {source: haproxy, metric: current_sessions, aggregate: avg}
        rules:
          - {name: busy, input: sessions, above: 20, for: 30s, adjust: +1}
          - {name: idle, input: sessions, below: 5, for: 2m, adjust: -1}
        cooldown: {scale_out: 1m, scale_in: 5m}
"""

from __future__ import annotations

import enum
import math
import re
from typing import Annotated, Any, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from policies.durations import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Aggregate(enum.StrEnum):
    """How one value per member becomes one value for the pool."""

    AVG = "avg"
    MAX = "max"
    MIN = "min"
    SUM = "sum"


class Input(Strict):
    """A pool-level signal: one metric from one collector, aggregated across in-service members."""

    source: str = Field(description="name of a collector in scaler.yaml")
    metric: str
    aggregate: Aggregate = Aggregate.AVG


_ADJUST = re.compile(r"^([+-])(\d+)(%?)$")


class Adjustment(Strict):
    """A step: `+n` / `-n` members, or `+p%` / `-p%` of the current size (at least one member)."""

    sign: int
    amount: int
    percent: bool = False

    @classmethod
    def parse(cls, value: Any) -> Any:
        if isinstance(value, Adjustment | dict):
            return value
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"adjust must look like +1, -2 or +50%, got {value!r}")
        text = str(value).strip()
        if isinstance(value, int):
            text = f"+{value}" if value >= 0 else str(value)
        m = _ADJUST.match(text)
        if not m or int(m.group(2)) == 0:
            raise ValueError(f"adjust must look like +1, -2 or +50% (not zero), got {value!r}")
        return {"sign": 1 if m.group(1) == "+" else -1, "amount": int(m.group(2)),
                "percent": bool(m.group(3))}

    def step(self, current: int) -> int:
        """Signed number of members this adjustment asks for at `current` size."""
        n = max(1, math.ceil(current * self.amount / 100)) if self.percent else self.amount
        return self.sign * n

    def __str__(self) -> str:
        return f"{'+' if self.sign > 0 else '-'}{self.amount}{'%' if self.percent else ''}"


class ThresholdRule(Strict):
    """Fires when `input` stays above (or below) a value for `for` seconds, asking for `adjust`."""

    name: Name
    input: str
    above: float | None = None
    below: float | None = None
    for_s: Duration = Field(default=0.0, alias="for")
    adjust: Annotated[Adjustment, BeforeValidator(Adjustment.parse)]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_comparison(self) -> Self:
        if (self.above is None) == (self.below is None):
            raise ValueError("a rule needs exactly one of 'above' or 'below'")
        return self

    def holds(self, value: float) -> bool:
        if self.above is not None:
            return value > self.above
        assert self.below is not None
        return value < self.below

    def condition(self) -> str:
        return f"{self.input} > {self.above:g}" if self.above is not None else f"{self.input} < {self.below:g}"


class Cooldown(Strict):
    """Quiet periods, per direction, counted from the completion of the last action of either
    direction: a scale-out waits `scale_out` after any action, a scale-in waits `scale_in`.

    Counting from either direction bounds flapping: a square wave cannot cause more than one action
    per cooldown. Keep `scale_out` short (capacity is urgent) and `scale_in` long.
    """

    scale_out: Duration = 60.0
    scale_in: Duration = 300.0


class PoolPolicy(Strict):
    name: Name = Field(description="the pool's name; filled from the key under `pools:`")
    min: int = Field(ge=0)
    max: int = Field(ge=1)
    inputs: dict[str, Input]
    rules: list[ThresholdRule] = Field(min_length=1)
    cooldown: Cooldown = Cooldown()
    dry_run: bool = False
    # An input whose newest sample is older than this has no data.
    stale_after: Duration = 30.0

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = []
        if self.min > self.max:
            problems.append(f"min ({self.min}) is greater than max ({self.max})")
        seen: set[str] = set()
        for rule in self.rules:
            if rule.input not in self.inputs:
                known = ", ".join(sorted(self.inputs)) or "none"
                problems.append(f"rule {rule.name!r} uses unknown input {rule.input!r} (inputs: {known})")
            if rule.name in seen:
                problems.append(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        if problems:
            raise ValueError("; ".join(problems))
        return self


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
