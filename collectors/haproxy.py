"""Reads one LB member's HAProxy (2.6) through its built-in Prometheus exporter.

It asks for `?scope=global&scope=frontend&scope=backend` (never per-server series: with many servers
the full answer is megabytes and costs HAProxy ~10 ms of CPU per scrape), parses only the six metric
names it needs, and returns current sessions, session and request rates, backend queue and process
connections. Rates are derived from counter deltas and are reset-aware: HAProxy zeroes its counters on
every reload, detected through `haproxy_process_start_time_seconds`.

It must not turn a failed read into a zero: a connect failure, timeout, non-200 answer or unparsable
body raises a `CollectorError` naming the target. It never acts on HAProxy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Self

import httpx
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, model_validator

from collectors.base import Sample, Target
from collectors.errors import CollectorError, CollectorParseError
from collectors.httpfetch import (
    HttpFetcher,
    TransportFactory,
    check_status,
    decode_text,
    default_transport_factory,
    describe,
    no_tcp_netns,
)
from collectors.promtext import PromSample, PromTextError, parse
from collectors.rates import RateTracker

__all__ = ["METRIC_NAMES", "SCOPES", "HAProxyCollector", "HAProxyCollectorConfig"]

# Exporter scopes (verified against haproxy 2.6.12: an unknown scope answers 400). "global" carries
# the haproxy_process_* series; "server" is deliberately left out.
SCOPES = ("global", "frontend", "backend")

START_TIME = "haproxy_process_start_time_seconds"
CURRENT_CONNECTIONS = "haproxy_process_current_connections"
FRONTEND_CURRENT_SESSIONS = "haproxy_frontend_current_sessions"
FRONTEND_SESSIONS_TOTAL = "haproxy_frontend_sessions_total"
# Only emitted for frontends in `mode http`; TCP frontends have no such series.
FRONTEND_HTTP_REQUESTS_TOTAL = "haproxy_frontend_http_requests_total"
BACKEND_CURRENT_QUEUE = "haproxy_backend_current_queue"

METRIC_NAMES = frozenset(
    {
        START_TIME,
        CURRENT_CONNECTIONS,
        FRONTEND_CURRENT_SESSIONS,
        FRONTEND_SESSIONS_TOTAL,
        FRONTEND_HTTP_REQUESTS_TOTAL,
        BACKEND_CURRENT_QUEUE,
    }
)

class HAProxyCollectorConfig(BaseModel):
    """Settings of the `haproxy` collector.

    `frontend`: read only that frontend's sessions and rates (default: sum over all frontends).
    `exclude_frontends`: frontends left out of the sum, e.g. the stats/metrics frontend whose only
    sessions are the scrapes themselves. `max_rate_gap_s`: no rate across a longer gap between two
    successful reads. The backend queue is always summed over all backends: the exporter does not say
    which backends a frontend uses.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(default=2.0, gt=0, le=60)
    frontend: str | None = Field(default=None, min_length=1)
    exclude_frontends: tuple[str, ...] = ()
    max_rate_gap_s: FiniteFloat = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _frontend_or_exclusions(self) -> Self:
        if self.frontend is not None and self.exclude_frontends:
            raise ValueError("set either frontend or exclude_frontends, not both")
        return self


# No keep-alive: see `default_transport_factory` (a pooled connection outlives a reload).
_default_transport = default_transport_factory(keepalive=False)


class HAProxyCollector:
    """The `haproxy` collector. One instance serves every target; rate baselines are kept per
    `target.key`.

    `transport_factory(uds)` builds the HTTP transport for a unix socket path (or None for TCP);
    tests pass one returning `httpx.MockTransport`. `clock` stamps samples (epoch seconds);
    `monotonic` measures rate intervals, so a wall-clock step cannot distort a rate.
    """

    name = "haproxy"

    def __init__(
        self,
        config: HAProxyCollectorConfig | None = None,
        *,
        transport_factory: TransportFactory = _default_transport,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or HAProxyCollectorConfig()
        self._clock = clock
        self._monotonic = monotonic
        self._rates = RateTracker(max_gap_s=self.config.max_rate_gap_s)
        self._http = HttpFetcher(timeout_s=self.config.timeout_s, transport_factory=transport_factory)

    async def collect(self, target: Target) -> list[Sample]:
        where = describe(target)
        text = await self._fetch(target, where)
        # Stamp when the source answered, before parsing (parsing time is ours, not HAProxy's).
        now = self._clock()
        mono = self._monotonic()
        try:
            series = parse(text, METRIC_NAMES)
        except PromTextError as exc:
            raise CollectorParseError(f"haproxy {where}: {exc}") from exc
        return self._samples(target, where, series, now, mono)

    def forget(self, key: str) -> None:
        self._rates.forget(key)

    async def close(self) -> None:
        await self._http.close()

    # -- internals -------------------------------------------------------------------------------

    def _url(self, target: Target) -> httpx.URL:
        url = httpx.URL(target.url)
        if "scope" in url.params:
            # The operator chose scopes explicitly; respect them.
            return url
        return url.copy_merge_params([("scope", scope) for scope in SCOPES])

    async def _fetch(self, target: Target, where: str) -> str:
        what = f"haproxy {where}"
        no_tcp_netns(target, what)
        try:
            url = self._url(target)
        except (httpx.InvalidURL, TypeError) as exc:
            raise CollectorError(f"{what}: bad URL: {exc}", reason="config") from exc
        response = await self._http.request("GET", url, what, uds=target.uds)
        check_status(response, what)
        return decode_text(response, what)

    def _samples(self, target: Target, where: str, series: list[PromSample], now: float, mono: float) -> list[Sample]:
        start: float | None = None
        connections: float | None = None
        sessions = 0.0
        sessions_total = 0.0
        requests_total = 0.0
        queue = 0.0
        frontends_seen = 0
        http_frontends_seen = 0
        backends_seen = 0
        config = self.config
        for sample in series:
            name = sample.name
            if name == START_TIME:
                start = sample.value
            elif name == CURRENT_CONNECTIONS:
                connections = sample.value
            elif name == BACKEND_CURRENT_QUEUE:
                queue += sample.value
                backends_seen += 1
            else:
                proxy = sample.labels.get("proxy")
                if config.frontend is not None:
                    if proxy != config.frontend:
                        continue
                elif proxy in config.exclude_frontends:
                    continue
                if name == FRONTEND_CURRENT_SESSIONS:
                    sessions += sample.value
                    frontends_seen += 1
                elif name == FRONTEND_SESSIONS_TOTAL:
                    sessions_total += sample.value
                else:
                    requests_total += sample.value
                    http_frontends_seen += 1

        if start is None or connections is None:
            # Scope "global" always carries both: this answer is not HAProxy's exporter (a wrong URL
            # answering 200 with some other page), and "nothing matched" must not read as "idle".
            raise CollectorParseError(
                f"haproxy {where}: no {START_TIME}/{CURRENT_CONNECTIONS} in the answer "
                "(not a HAProxy prometheus-exporter?)"
            )
        if config.frontend is not None and frontends_seen == 0:
            raise CollectorError(f"haproxy {where}: frontend {config.frontend!r} not found", reason="no_frontend")

        # Unlabelled even with `frontend:` set: it is this collector's one series of each metric, the
        # one a policy input without `labels:` reads (the frontend is the collector's scope, in its config).
        out = [Sample("current_connections", connections, now)]
        if frontends_seen:
            out.append(Sample("current_sessions", sessions, now))
            rate = self._rates.update(target.key, "session_rate", sessions_total, mono, start=start)
            if rate.rate is not None:
                out.append(Sample("session_rate", rate.rate, now))
        if http_frontends_seen:
            rate = self._rates.update(target.key, "request_rate", requests_total, mono, start=start)
            if rate.rate is not None:
                out.append(Sample("request_rate", rate.rate, now))
        if backends_seen:
            out.append(Sample("queue", queue, now))
        return out
