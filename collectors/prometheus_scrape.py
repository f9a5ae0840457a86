"""Reads chosen series from any Prometheus text-exposition endpoint (HAProxy's built-in exporter,
node_exporter, a Prometheus server's `/federate`, ...) over HTTP or a unix socket, and turns each
configured selection into one sample: gauges as read, counters as reset-aware per-second rates.

Only the configured metric names are parsed (`collectors.promtext` skips every other line by prefix:
HAProxy's full answer is megabytes). A selection that matches nothing, only stale samples (an
exposition timestamp older than `max_age_s`) or a NaN is *absent*, with a reason kept for
`last_absences()`; if no configured metric could be read at all the collect raises a
`CollectorError` saying why (except when the only reason is a rate waiting for its second reading:
that is an empty list, "no data yet"). It must never turn missing data into 0 and never act on the
source.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator, model_validator

from collectors.base import Sample, Target, check_output_names
from collectors.errors import CollectorError, CollectorParseError
from collectors.httpfetch import (
    HttpFetcher,
    HttpOptions,
    TransportFactory,
    check_status,
    decode_text,
    default_transport_factory,
    describe,
    no_tcp_netns,
)
from collectors.promtext import LABEL_NAME, METRIC_NAME, PromSample, PromTextError, parse
from collectors.rates import RateTracker

__all__ = [
    "AGGREGATES",
    "RATE_WARMUP",
    "LabelMatcher",
    "PrometheusScrapeCollector",
    "PrometheusScrapeConfig",
    "SeriesSpec",
    "aggregate",
]

Aggregate = Literal["sum", "avg", "max", "min"]
AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "sum": math.fsum,
    "avg": lambda values: math.fsum(values) / len(values),
    "max": max,
    "min": min,
}
# Absence reasons that only mean "a rate needs another reading": not worth an error on their own.
RATE_WARMUP = frozenset({"first", "reset", "gap", "clock"})



def aggregate(how: str, values: list[float]) -> float:
    """`values` must not be empty (an empty selection is an absence, decided by the caller)."""
    return AGGREGATES[how](values)


@dataclass(frozen=True, slots=True)
class LabelMatcher:
    """One label matcher with PromQL's semantics: a missing label reads as "", regexes are anchored.

    Written in config as the label's value: `idle` (equal), `"!=metrics"`, `"=~fe.*"`, `"!~stats|metrics"`;
    a value that itself starts with `=` or `!` is written with a leading `=` (`"==x"` means equal to `=x`).
    """

    op: Literal["=", "!=", "=~", "!~"]
    value: str
    regex: re.Pattern[str] | None = None

    @classmethod
    def parse(cls, text: str) -> LabelMatcher:
        for op in ("=~", "!~", "!=", "="):
            if text.startswith(op):
                value = text[len(op) :]
                break
        else:
            return cls("=", text)
        if op in ("=~", "!~"):
            try:
                return cls(op, value, re.compile(value))
            except re.error as exc:
                raise ValueError(f"bad regex {value!r}: {exc}") from None
        return cls(op, value)

    def matches(self, actual: str) -> bool:
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.regex is not None
        found = self.regex.fullmatch(actual) is not None
        return found if self.op == "=~" else not found


class SeriesSpec(BaseModel):
    """One output metric: the series named `name` whose labels match `labels`, combined with
    `aggregate` across the matching series. `type: counter` reports the per-second rate (each
    series' rate, then combined), absent until two readings of every matching series exist."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    aggregate: Aggregate = "sum"
    type: Literal["gauge", "counter"] = "gauge"

    @field_validator("name")
    @classmethod
    def _metric_name(cls, value: str) -> str:
        if not METRIC_NAME.match(value):
            raise ValueError(f"{value!r} is not a metric name")
        return value

    @field_validator("labels")
    @classmethod
    def _matchers(cls, value: dict[str, str]) -> dict[str, str]:
        for label, text in value.items():
            if not LABEL_NAME.match(label):
                raise ValueError(f"{label!r} is not a label name")
            LabelMatcher.parse(text)  # raises on a bad regex
        return value

    def matchers(self) -> tuple[tuple[str, LabelMatcher], ...]:
        return tuple((label, LabelMatcher.parse(text)) for label, text in self.labels.items())


class PrometheusScrapeConfig(HttpOptions):
    """Settings of the `prometheus_scrape` collector (plus `HttpOptions`: timeout, auth, TLS).

    `start_marker`: a series whose value changes when the source's counters restart
    (`haproxy_process_start_time_seconds`, `process_start_time_seconds`, `node_boot_time_seconds`);
    a change means no rate for that interval. A counter going down is a reset with or without it.
    `start_tolerance_s`: how far the marker may move and still be the same process.
    `max_rate_gap_s`: no rate across a longer gap between two readings.
    `max_age_s`: a sample whose exposition timestamp is older than this is stale (absent). Samples
    without a timestamp (most exporters) are as old as the answer.
    `keepalive`: reuse connections; leave it off for HAProxy (a pooled connection outlives a reload).
    """

    metrics: dict[str, SeriesSpec] = Field(min_length=1)
    start_marker: str | None = None
    start_tolerance_s: FiniteFloat = Field(default=0.0, ge=0)
    max_rate_gap_s: FiniteFloat = Field(default=60.0, gt=0)
    max_age_s: FiniteFloat = Field(default=300.0, gt=0)
    keepalive: bool = False

    @field_validator("metrics")
    @classmethod
    def _output_names(cls, value: dict[str, SeriesSpec]) -> dict[str, SeriesSpec]:
        check_output_names(value)
        return value

    @field_validator("start_marker")
    @classmethod
    def _marker_name(cls, value: str | None) -> str | None:
        if value is not None and not METRIC_NAME.match(value):
            raise ValueError(f"{value!r} is not a metric name")
        return value

    @model_validator(mode="after")
    def _marker_needs_counter(self) -> Self:
        if self.start_marker is not None and not any(s.type == "counter" for s in self.metrics.values()):
            raise ValueError("start_marker only matters for metrics of type counter")
        return self


@dataclass(frozen=True, slots=True)
class _Selection:
    out: str
    spec: SeriesSpec
    matchers: tuple[tuple[str, LabelMatcher], ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels.get(label, "")) for label, m in self.matchers)


class PrometheusScrapeCollector:
    """The `prometheus_scrape` collector. One instance serves every target; rate baselines and the
    last absences are kept per `target.key`.

    `transport_factory(uds)` builds the HTTP transport (tests pass `httpx.MockTransport`); `clock`
    stamps samples and judges exposition timestamps (epoch seconds); `monotonic` measures rate
    intervals of samples without timestamps, so a wall-clock step cannot distort a rate.
    """

    name = "prometheus_scrape"

    def __init__(
        self,
        config: PrometheusScrapeConfig,
        *,
        transport_factory: TransportFactory | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        self._monotonic = monotonic
        factory = transport_factory or default_transport_factory(keepalive=config.keepalive, verify=config.verify())
        self._http = HttpFetcher(timeout_s=config.timeout_s, transport_factory=factory, headers=config.auth_headers())
        self._rates = RateTracker(max_gap_s=config.max_rate_gap_s, start_tolerance_s=config.start_tolerance_s)
        self._selections = [_Selection(out, spec, spec.matchers()) for out, spec in config.metrics.items()]
        names = {spec.name for spec in config.metrics.values()}
        if config.start_marker is not None:
            names.add(config.start_marker)
        self._names = frozenset(names)
        self._absences: dict[str, dict[str, str]] = {}

    def __repr__(self) -> str:
        return f"PrometheusScrapeCollector(metrics={sorted(self.config.metrics)})"

    async def collect(self, target: Target) -> list[Sample]:
        what = f"prometheus_scrape {describe(target)}"
        no_tcp_netns(target, what)
        response = await self._http.request("GET", target.url, what, uds=target.uds)
        check_status(response, what)
        text = decode_text(response, what)
        # Stamp when the source answered, before parsing (parsing time is ours, not the source's).
        now = self._clock()
        mono = self._monotonic()
        try:
            series = parse(text, self._names)
        except PromTextError as exc:
            raise CollectorParseError(f"{what}: {exc}") from exc
        return self.samples(target, what, series, now, mono)

    def last_absences(self, key: str) -> Mapping[str, str]:
        """Why each configured metric was missing from the last collect of `key` ({metric: reason text})."""
        return dict(self._absences.get(key, {}))

    def forget(self, key: str) -> None:
        self._rates.forget(key)
        self._absences.pop(key, None)

    async def close(self) -> None:
        await self._http.close()

    # -- internals -------------------------------------------------------------------------------

    def samples(self, target: Target, what: str, series: list[PromSample], now: float, mono: float) -> list[Sample]:
        """Turn parsed series into samples (public for benchmarks: the part after the read)."""
        by_name: dict[str, list[PromSample]] = {}
        for sample in series:
            by_name.setdefault(sample.name, []).append(sample)
        start: float | None = None
        if self.config.start_marker is not None:
            markers = by_name.get(self.config.start_marker)
            # An exporter reports one start time; absent, the tracker treats the change as a reset.
            start = markers[0].value if markers else None

        out: list[Sample] = []
        absences: dict[str, str] = {}
        for selection in self._selections:
            got = self._one(target.key, selection, by_name.get(selection.spec.name, ()), start, now, mono)
            if isinstance(got, Sample):
                out.append(got)
            else:
                absences[selection.out] = got
        self._absences[target.key] = absences
        if not out and any(reason.split(":", 1)[0] not in RATE_WARMUP for reason in absences.values()):
            raise _nothing_read(what, absences)
        return out

    def _one(
        self,
        key: str,
        selection: _Selection,
        candidates: list[PromSample] | tuple[()],
        start: float | None,
        now: float,
        mono: float,
    ) -> Sample | str:
        """The selection's sample, or the reason it is absent (`reason: detail`)."""
        spec = selection.spec
        matched = [s for s in candidates if selection.matches(s.labels)]
        if not matched:
            return f"no_series: no {spec.name} series matches {dict(spec.labels) or 'any labels'}"
        oldest = now - self.config.max_age_s
        fresh = [s for s in matched if s.timestamp_ms is None or s.timestamp_ms / 1000.0 >= oldest]
        if not fresh:
            newest = max(s.timestamp_ms or 0 for s in matched) / 1000.0
            return f"stale: newest {spec.name} sample is {now - newest:.0f}s old (max_age_s {self.config.max_age_s:g})"
        if any(not math.isfinite(s.value) for s in fresh):
            return f"not_finite: {spec.name} has a NaN or infinite value"
        stamps = [s.timestamp_ms / 1000.0 for s in fresh if s.timestamp_ms is not None]
        # The oldest reading that went into the value dates it (never claim fresher data than we have).
        stamp = min(stamps) if len(stamps) == len(fresh) else now
        if spec.type == "gauge":
            return Sample(selection.out, aggregate(spec.aggregate, [s.value for s in fresh]), stamp)
        rates: list[float] = []
        status = ""
        for s in fresh:
            # Exposition timestamps (e.g. /federate) date the reading better than our answer time does.
            has_ts = s.timestamp_ms is not None
            when = s.timestamp_ms / 1000.0 if s.timestamp_ms is not None else mono
            series_key = (selection.out, has_ts, tuple(sorted(s.labels.items())))
            result = self._rates.update(key, series_key, s.value, when, start=start)
            if result.rate is None:
                status = status or result.status
            else:
                rates.append(result.rate)
        if status:
            # One series without a trustworthy rate spoils the combination (a sum would undercount).
            return f"{status}: no rate for {spec.name} this round"
        return Sample(selection.out, aggregate(spec.aggregate, rates), stamp)


def _nothing_read(what: str, absences: Mapping[str, str]) -> CollectorError:
    reasons = {text.split(":", 1)[0] for text in absences.values()} - RATE_WARMUP
    reason = reasons.pop() if len(reasons) == 1 else "no_data"
    detail = "; ".join(f"{out}: {text}" for out, text in absences.items())
    return CollectorError(f"{what}: no configured metric could be read: {detail}", reason=reason)
