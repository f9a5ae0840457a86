"""Reads LB members' metrics from a Prometheus server that already scrapes them: one PromQL instant
query (`/api/v1/query`) per configured metric, whose vector result holds one series per member;
each member takes the series whose `member_label` equals its rendered `member_value` template.

**One query serves a whole poll round.** The engine collects every member concurrently; the first
member to ask starts the query and every member asking while it runs, or within `share_ttl_s` of its
start, is answered from the same result (an index by member label is built once per answer). So a
round costs one query per metric, not one per member; a template that uses `${member}` in the query
itself naturally becomes one query per member. Errors are shared the same way: a dead server costs
one timeout per round, not one per member.

"No data" is never 0 (unlike KEDA's default): an empty result, no series for this member, a result
older than `max_age_s`, a NaN, or several series for one member without an `aggregate` → the metric
is absent with a reason (`last_absences()`), and if every metric is absent the collect raises a
`CollectorError` with that reason. Transport failures, HTTP errors, `status: error` answers (reason
`promql_<errorType>`) and non-vector results raise. It never writes to Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator, model_validator

from collectors.base import Sample, Target, check_output_names
from collectors.errors import CollectorAuthError, CollectorError, CollectorParseError
from collectors.httpfetch import (
    HttpFetcher,
    HttpOptions,
    TransportFactory,
    default_transport_factory,
    describe,
    redact_url,
)
from collectors.prometheus_scrape import aggregate
from collectors.promtext import LABEL_NAME

__all__ = [
    "ABSENCE_REASONS",
    "PLACEHOLDERS",
    "PrometheusQueryCollector",
    "PrometheusQueryConfig",
    "QueryAnswer",
    "QuerySpec",
    "decode_answer",
    "render",
    "target_values",
]

# Placeholders every template may use, besides the target's labels (`${pool}`, `${member}`).
PLACEHOLDERS = ("key", "url", "host", "port", "netloc")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Reasons a metric is absent (the source answered, but not with a value for this member); they are
# also the `reason` of the CollectorError raised when every metric is absent for the same one.
ABSENCE_REASONS = ("empty", "no_match", "stale", "not_finite", "ambiguous")


def target_values(target: Target) -> dict[str, str]:
    """What `${…}` can refer to for `target`: its labels, then `key`, `url`, `host`, `port`, `netloc`
    (from the target's URL; a bare `host:port` works too)."""
    url = target.url
    parts = urlsplit(url if "://" in url else f"//{url}")
    netloc = parts.netloc.rpartition("@")[2]
    try:
        port = str(parts.port) if parts.port is not None else ""
    except ValueError:
        port = ""
    return {
        **target.labels,
        "key": target.key,
        "url": redact_url(url),
        "host": parts.hostname or "",
        "port": port,
        "netloc": netloc,
    }


def render(template: str, values: Mapping[str, str], *, promql: bool = False) -> str:
    """Fill `${name}` placeholders. With `promql`, values are escaped for a PromQL string literal
    (placeholders in a query sit inside `"…"`; a quote in a value must not end it). KeyError names a
    missing placeholder."""

    def fill(match: re.Match[str]) -> str:
        value = values[match.group(1)]
        return value.replace("\\", "\\\\").replace('"', '\\"') if promql else value

    return _PLACEHOLDER.sub(fill, template)


def _check_template(template: str) -> str:
    # `$` alone is legal PromQL (regex anchors); only `${…}` is ours, and it must be well formed.
    for start in [m.start() for m in re.finditer(r"\$\{", template)]:
        if not _PLACEHOLDER.match(template, start):
            raise ValueError(f"bad placeholder at {template[start:start + 20]!r}: write ${{name}}")
    return template


class QuerySpec(BaseModel):
    """One output metric: `query` (PromQL, `${…}` placeholders allowed) and, when set here, overrides of
    the collector's `member_label` / `member_value`. `aggregate` combines several series that match
    one member; without it several series are ambiguous (absent)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str = Field(min_length=1)
    member_label: str | None = "instance"
    member_value: str = "${netloc}"
    aggregate: Literal["sum", "avg", "max", "min"] | None = None

    _check_query = field_validator("query", "member_value")(_check_template)

    @field_validator("member_label")
    @classmethod
    def _label_name(cls, value: str | None) -> str | None:
        if value is not None and not LABEL_NAME.match(value):
            raise ValueError(f"{value!r} is not a label name")
        return value


class PrometheusQueryConfig(HttpOptions):
    """Settings of the `prometheus_query` collector (plus `HttpOptions`: timeout, auth, TLS).

    `url`: the Prometheus server (`http://prometheus:9090`, a path prefix allowed).
    `member_label` / `member_value`: the defaults of every metric: the result label naming a member
    and the template it must equal (default `instance` = `${netloc}`, the host:port of the target's
    URL, which is what Prometheus puts in `instance` for a static or SD target). `member_label: null`
    takes the whole result as one pool-wide value given to every member (aggregate it with max or
    avg in the policy, not sum).
    `max_age_s`: a result stamped (evaluated) longer ago than this is stale.
    `share_ttl_s`: members asking within this long after a query started share its answer; keep it
    well below the collect interval (0: share only while the query is in flight).
    """

    url: str
    metrics: dict[str, QuerySpec] = Field(min_length=1)
    member_label: str | None = "instance"
    member_value: str = "${netloc}"
    max_age_s: FiniteFloat = Field(default=60.0, gt=0)
    share_ttl_s: float = Field(default=2.0, ge=0, le=60)
    keepalive: bool = True

    _check_member_value = field_validator("member_value")(_check_template)

    @field_validator("url")
    @classmethod
    def _server_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{value!r} is not an http(s) URL")
        if "@" in parts.netloc:
            raise ValueError("credentials do not belong in the URL: use basic_auth or bearer_token")
        if parts.query or parts.fragment:
            raise ValueError("the server URL takes no query or fragment")
        return value.rstrip("/")

    @field_validator("metrics")
    @classmethod
    def _output_names(cls, value: dict[str, QuerySpec]) -> dict[str, QuerySpec]:
        check_output_names(value)
        return value

    @field_validator("member_label")
    @classmethod
    def _label_name(cls, value: str | None) -> str | None:
        if value is not None and not LABEL_NAME.match(value):
            raise ValueError(f"{value!r} is not a label name")
        return value

    @model_validator(mode="after")
    def _inherit(self) -> Self:
        # A metric that does not set member_label/member_value takes the collector's.
        inherited = {}
        for out, spec in self.metrics.items():
            updates: dict[str, Any] = {}
            if "member_label" not in spec.model_fields_set:
                updates["member_label"] = self.member_label
            if "member_value" not in spec.model_fields_set:
                updates["member_value"] = self.member_value
            inherited[out] = spec.model_copy(update=updates) if updates else spec
        object.__setattr__(self, "metrics", inherited)
        return self


@dataclass(frozen=True, slots=True)
class _Series:
    labels: Mapping[str, str]
    value: float
    timestamp: float


@dataclass(slots=True)
class QueryAnswer:
    """A decoded vector result, shared by every member of a round. `by_label` indexes it lazily."""

    series: list[_Series]
    _index: dict[str, dict[str, list[_Series]]] = field(default_factory=dict)

    def by_label(self, label: str) -> dict[str, list[_Series]]:
        index = self._index.get(label)
        if index is None:
            index = {}
            for s in self.series:
                value = s.labels.get(label)
                if value is not None:
                    index.setdefault(value, []).append(s)
            self._index[label] = index
        return index


def decode_answer(status: int, body: bytes, what: str) -> QueryAnswer:
    """Decode one `/api/v1/query` answer: a vector → `QueryAnswer`; anything else raises with a
    distinct reason (auth, promql_<errorType>, http_<code>, parse, result_type)."""
    if status in (401, 403):
        raise CollectorAuthError(f"{what}: HTTP {status} (credentials refused or missing)")
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("status") == "error":
        # Prometheus answers 400 bad_data, 422 execution, 503 timeout/canceled, ... with this body.
        kind = str(doc.get("errorType") or "unknown")
        reason = "promql_" + re.sub(r"[^a-z0-9_]", "_", kind.lower())
        raise CollectorError(f"{what}: Prometheus said {kind}: {doc.get('error', '')}", reason=reason)
    if status != 200:
        raise CollectorError(f"{what}: HTTP {status}", reason=f"http_{status}")
    if not isinstance(doc, dict) or doc.get("status") != "success" or not isinstance(doc.get("data"), dict):
        raise CollectorParseError(f"{what}: not a Prometheus API answer")
    data = doc["data"]
    kind = data.get("resultType")
    if kind != "vector":
        raise CollectorError(
            f"{what}: result is a {kind}, not an instant vector (wrap a scalar in vector(...))", reason="result_type"
        )
    series: list[_Series] = []
    try:
        for item in data["result"]:
            stamp, text = item["value"]
            labels = item.get("metric") or {}
            series.append(_Series(labels, float(text), float(stamp)))
    except (KeyError, TypeError, ValueError) as exc:
        raise CollectorParseError(f"{what}: malformed vector: {exc!r}") from exc
    return QueryAnswer(series)


@dataclass(slots=True)
class _Shared:
    task: asyncio.Task[QueryAnswer | CollectorError]
    started: float


class PrometheusQueryCollector:
    """The `prometheus_query` collector. One instance serves every target of every pool.

    `transport_factory(uds)` builds the HTTP transport (tests pass `httpx.MockTransport`; `uds` is
    always None); `clock` judges result timestamps (epoch seconds); `monotonic` times the sharing.
    """

    name = "prometheus_query"

    def __init__(
        self,
        config: PrometheusQueryConfig,
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
        self._endpoint = f"{config.url}/api/v1/query"
        self._shared: dict[str, _Shared] = {}
        self._pruned_at = 0.0
        self._absences: dict[str, dict[str, str]] = {}
        self.queries_sent = 0  # for tests and benchmarks: proves the sharing

    def __repr__(self) -> str:
        return f"PrometheusQueryCollector(url={self.config.url!r}, metrics={sorted(self.config.metrics)})"

    async def collect(self, target: Target) -> list[Sample]:
        what, queries, wanted = self._prepare(target)
        # Every query of this member is started (or joined) before any is awaited, so they run at
        # once; an answer already shared is used without a task or a future (most members of a round).
        tasks = [self._shared_task(query) for query in queries]
        answers = [t.result() if t.done() else await asyncio.shield(t) for t in tasks]
        return self._samples(target, what, queries, wanted, answers)

    async def collect_many(self, targets: Sequence[Target]) -> list[list[Sample] | CollectorError]:
        """Every target of a round at once (collectors.batch): the queries started once, awaited
        once, each target picked from the shared answers — no task per target."""
        prepared: list[tuple[str, list[str], list[str | None]] | CollectorError] = []
        for target in targets:
            try:
                prepared.append(self._prepare(target))
            except CollectorError as exc:
                prepared.append(exc)
        tasks = {q: self._shared_task(q) for p in prepared if not isinstance(p, CollectorError) for q in p[1]}
        pending = {t for t in tasks.values() if not t.done()}
        if pending:
            # Not cancelled with this call (asyncio.wait): other members may share them.
            await asyncio.wait(pending)
        out: list[list[Sample] | CollectorError] = []
        for target, p in zip(targets, prepared, strict=True):
            if isinstance(p, CollectorError):
                out.append(p)
                continue
            what, queries, wanted = p
            try:
                out.append(self._samples(target, what, queries, wanted, [tasks[q].result() for q in queries]))
            except CollectorError as exc:
                out.append(exc)
        return out

    def _prepare(self, target: Target) -> tuple[str, list[str], list[str | None]]:
        """(how the target is named in errors, its rendered queries, its member values)."""
        values = target_values(target)
        what = f"prometheus_query {describe(target)}"
        outs = list(self.config.metrics.values())
        try:
            queries = [render(spec.query, values, promql=True) for spec in outs]
            wanted = [render(spec.member_value, values) if spec.member_label is not None else None for spec in outs]
        except KeyError as exc:
            known = ", ".join(sorted(values))
            raise CollectorError(f"{what}: unknown placeholder ${{{exc.args[0]}}} (known: {known})",
                                 reason="config") from None
        return what, queries, wanted

    def _samples(self, target: Target, what: str, queries: list[str], wanted: list[str | None],
                 answers: list[QueryAnswer | CollectorError]) -> list[Sample]:
        now = self._clock()
        out: list[Sample] = []
        absences: dict[str, str] = {}
        for (name, spec), query, member, answer in zip(self.config.metrics.items(), queries, wanted, answers,
                                                       strict=True):
            if isinstance(answer, CollectorError):
                # Shared between members: raise a fresh error naming this member, same class and reason.
                raise type(answer)(f"{what}: {name}: {answer}", reason=answer.reason) from answer
            got = self._pick(name, spec, query, member, answer, now)
            if isinstance(got, Sample):
                out.append(got)
            else:
                absences[name] = got
        self._absences[target.key] = absences
        if not out:
            reasons = {text.split(":", 1)[0] for text in absences.values()}
            reason = reasons.pop() if len(reasons) == 1 else "no_data"
            detail = "; ".join(f"{name}: {text}" for name, text in absences.items())
            raise CollectorError(f"{what}: no data: {detail}", reason=reason)
        return out

    def last_absences(self, key: str) -> Mapping[str, str]:
        """Why each configured metric was missing from the last collect of `key` ({metric: reason text})."""
        return dict(self._absences.get(key, {}))

    def forget(self, key: str) -> None:
        self._absences.pop(key, None)

    async def close(self) -> None:
        pending = [entry.task for entry in self._shared.values() if not entry.task.done()]
        self._shared.clear()
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._http.close()

    # -- internals -------------------------------------------------------------------------------

    def _shared_task(self, query: str) -> asyncio.Task[QueryAnswer | CollectorError]:
        """The task answering `query` for every member asking within `share_ttl_s`. Awaited through
        `asyncio.shield`: a member whose poll is cancelled (its own deadline) must not cancel the
        query the other members of the round are waiting for."""
        now = self._monotonic()
        entry = self._shared.get(query)
        if entry is None or (entry.task.done() and now - entry.started > self.config.share_ttl_s):
            entry = _Shared(asyncio.create_task(self._query(query)), now)
            self._shared[query] = entry
            self._prune(now)
        return entry.task

    def _prune(self, now: float) -> None:
        # At most once per TTL: with per-member queries the dict holds one entry per member.
        if now - self._pruned_at <= max(self.config.share_ttl_s, 1.0):
            return
        self._pruned_at = now
        for query, entry in list(self._shared.items()):
            if entry.task.done() and now - entry.started > self.config.share_ttl_s:
                del self._shared[query]

    async def _query(self, query: str) -> QueryAnswer | CollectorError:
        shown = query if len(query) <= 120 else query[:117] + "..."
        what = f"query {shown!r} on {self.config.url}"
        self.queries_sent += 1
        try:
            # POST: a long query does not fit every proxy's URL limit. `timeout` makes Prometheus give up
            # when we do, instead of finishing work nobody waits for (plain seconds: 2.42 refuses "0.5s").
            response = await self._http.request(
                "POST", self._endpoint, what, data={"query": query, "timeout": f"{self.config.timeout_s:g}"}
            )
            return decode_answer(response.status_code, response.content, what)
        except CollectorError as exc:
            return exc

    def _pick(
        self, name: str, spec: QuerySpec, query: str, member: str | None, answer: QueryAnswer, now: float
    ) -> Sample | str:
        """This member's sample from a shared answer, or the reason it is absent (`reason: detail`)."""
        if not answer.series:
            return f"empty: the query returned no series: {query}"
        if spec.member_label is None:
            candidates = answer.series
        else:
            assert member is not None
            candidates = answer.by_label(spec.member_label).get(member, [])
            if not candidates:
                return (
                    f"no_match: none of the {len(answer.series)} series has "
                    f'{spec.member_label}="{member}"'
                )
        oldest = now - self.config.max_age_s
        fresh = [s for s in candidates if s.timestamp >= oldest]
        if not fresh:
            newest = max(s.timestamp for s in candidates)
            return f"stale: result is {now - newest:.0f}s old (max_age_s {self.config.max_age_s:g})"
        if any(not math.isfinite(s.value) for s in fresh):
            return "not_finite: the result is NaN or infinite"
        if len(fresh) > 1 and spec.aggregate is None:
            return (
                f"ambiguous: {len(fresh)} series match"
                + (f' {spec.member_label}="{member}"' if spec.member_label else "")
                + "; set aggregate or narrow the query"
            )
        how = spec.aggregate or "sum"
        return Sample(name, aggregate(how, [s.value for s in fresh]), min(s.timestamp for s in fresh))
