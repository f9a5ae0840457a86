"""HTTP receivers for alarms: Alertmanager and Grafana webhooks, and signed scale signals.

    POST /v1/alerts/alertmanager             Alertmanager webhook (payload version 4)
    POST /v1/alerts/grafana                  Grafana contact point (webhook integration)
    POST /v1/pools/{pool}/signal/{action}    signed URL or Standard Webhooks call
    GET  /v1/pools/{pool}/alarms             alarm states and recent signals of a pool

A request is answered 2xx only once what it carried is committed to the store, and it never waits
for (or triggers) scaling: an alarm is an input the engine reads at its next evaluation. Each step
refuses as early and as cheaply as it can, in this order: credentials in headers (401), the body,
read with a size limit and a deadline (413, 408), signatures over the raw body (401), UTF-8 (422),
the pools the credential may speak for, read from the JSON before the payload schema is checked
(403), the payload schema (422), the number of alerts (413). Nothing is stored for a refused
request. Duplicates answer 200: Alertmanager re-sends every 4xx forever, so 4xx is kept for what an
operator must fix (credentials, limits, malformed payloads).

This module must not scale, sleep, or read the clock except through the injected `clock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Body, HTTPException, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPBasic, HTTPBearer
from prometheus_client import CollectorRegistry
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from scaler.alerts.config import AlertsConfig, allows
from scaler.alerts.metrics import AlertMetrics, alert_metrics
from scaler.alerts.signing import (
    ACTIONS,
    Action,
    AuthError,
    CredentialTable,
    Verified,
    forbidden,
    unauthorized,
    verify_grafana,
    verify_standard_webhook,
    verify_url,
)
from scaler.alerts.store import (
    SIGNAL_SCALE_IN,
    SIGNAL_SCALE_OUT,
    Incoming,
    Stored,
    alarm_states,
    recent_signals,
    record_alerts,
    record_signal,
)
from scaler.store import Store

log = logging.getLogger("scaler.alerts")

RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
MAX_TEXT = 4096
T = TypeVar("T")


def _parse_time(text: str) -> str:
    # The regex shapes the string (and the OpenAPI schema); this catches month 13 and the like.
    try:
        datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"not an RFC 3339 time: {exc}") from None
    return text


Rfc3339 = Annotated[str, Field(pattern=RFC3339, max_length=64), AfterValidator(_parse_time)]
Label = Annotated[str, Field(max_length=MAX_TEXT)]


def epoch(text: str | None) -> float | None:
    """RFC 3339 → epoch seconds; Go's zero time (0001-01-01, "not set") and anything before
    1970 → None."""
    if not text:
        return None
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return None if t.year < 1970 else t.timestamp()


def normalised(text: str) -> str:
    """One spelling per instant (UTC, microseconds) for the dedup key."""
    t = epoch(text)
    return "" if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")


# --- payloads ------------------------------------------------------------------------------------


class _Open(BaseModel):
    # Unknown fields are accepted and ignored: senders add fields between versions.
    model_config = ConfigDict(extra="allow")


class AlertIn(_Open):
    status: Literal["firing", "resolved"] = Field(description="this alert's own status (read it, not the "
                                                  "group's: a group is 'firing' while any alert fires)")
    labels: dict[Label, Label]
    annotations: dict[Label, Label] = Field(default_factory=dict)
    startsAt: Rfc3339
    endsAt: Rfc3339 | None = None
    generatorURL: str = Field(default="", max_length=MAX_TEXT)
    fingerprint: str = Field(min_length=1, max_length=128)


class AlertmanagerPayload(_Open):
    """Alertmanager's webhook payload, version 4."""

    version: Literal["4"]
    groupKey: str = Field(max_length=MAX_TEXT)
    truncatedAlerts: int = Field(default=0, ge=0, le=10**9)
    status: Literal["firing", "resolved"]
    receiver: str = Field(max_length=MAX_TEXT)
    groupLabels: dict[Label, Label] = Field(default_factory=dict)
    commonLabels: dict[Label, Label] = Field(default_factory=dict)
    commonAnnotations: dict[Label, Label] = Field(default_factory=dict)
    externalURL: str = Field(default="", max_length=MAX_TEXT)
    alerts: list[AlertIn]


class GrafanaPayload(_Open):
    """Grafana's webhook payload: Alertmanager's shape plus Grafana's own fields (ignored here)."""

    version: str = Field(default="1", max_length=16)
    groupKey: str = Field(default="", max_length=MAX_TEXT)
    truncatedAlerts: int = Field(default=0, ge=0, le=10**9)
    status: Literal["firing", "resolved"]
    receiver: str = Field(default="", max_length=MAX_TEXT)
    alerts: list[AlertIn]


class SignalBody(_Open):
    """Optional for a signed URL (Aodh's alarm body fits: its `reason` is recorded). Required for
    Standard Webhooks, where the signed body must name the pool and action it is for."""

    pool: str | None = Field(default=None, max_length=64)
    action: str | None = Field(default=None, max_length=16)
    reason: str | None = Field(default=None, max_length=MAX_TEXT)


# --- answers -------------------------------------------------------------------------------------


class AlertResult(BaseModel):
    fingerprint: str
    alarm: str
    pool: str | None
    status: str
    result: Literal["new", "duplicate", "unknown_pool", "no_pool"]
    effect: str | None = Field(description="what a new alert did to its alarm: fired, resolved, refreshed "
                               "(no change), stale (older than what is known)")


class DeliveryOut(BaseModel):
    result: Literal["accepted", "duplicate", "unknown_pool"]
    new: int
    duplicates: int
    truncated_alerts: int
    alerts: list[AlertResult]


class SignalOut(BaseModel):
    result: Literal["accepted", "duplicate", "unknown_pool"]
    pool: str
    action: str
    alarm: str
    key: str
    scheme: str
    firing_until: str | None


class Problem(BaseModel):
    detail: str


class AlarmOut(BaseModel):
    alarm: str
    firing: bool | None
    since: str | None
    last_seen: str | None
    instances: int
    source: str


class SignalRecordOut(BaseModel):
    id: int | None
    at: str | None
    alarm: str
    status: str
    effect: str
    source: str
    fingerprint: str
    starts_at: str | None
    summary: str
    truncated: int


class PoolAlarmsOut(BaseModel):
    pool: str
    alarms: list[AlarmOut]
    signals: list[SignalRecordOut]


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def _problem(description: str) -> dict[str, Any]:
    return {"model": Problem, "description": description}


RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": DeliveryOut, "description": "accepted and recorded, nothing to do: no alert was for a "
          "pool this scaler knows"},
    401: _problem("missing or invalid credentials or signature"),
    403: _problem("valid credentials, not allowed for a pool named in the request"),
    408: _problem("the body was not received within alerts.read_timeout"),
    413: _problem("body above alerts.max_body_bytes, or more alerts than alerts.max_alerts"),
    503: _problem("the store could not record the request; retry (Alertmanager does)"),
}


class _DocumentedBearer(HTTPBearer):
    """Puts the bearer scheme in the OpenAPI document; the guard has already checked the header."""

    def __init__(self, description: str) -> None:
        super().__init__(auto_error=False, description=description, scheme_name="bearer")

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None


class _DocumentedBasic(HTTPBasic):
    """Puts the basic scheme in the OpenAPI document; the guard has already checked the header."""

    def __init__(self, description: str) -> None:
        super().__init__(auto_error=False, description=description, scheme_name="basic")

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None


class Refused(Exception):
    def __init__(self, status: int, result: str, detail: str, reason: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.result, self.detail, self.reason = status, result, detail, reason


def _auth(exc: AuthError) -> Refused:
    return Refused(exc.status, "unauthorized" if exc.status == 401 else "forbidden", exc.message, exc.reason)


def pools_named(doc: Any, pool_label: str) -> set[str]:
    """The pools the alerts of a delivery name (their `pool_label` label), read from the parsed JSON
    before the payload schema is checked: what is not shaped like a delivery names no pool here (the
    schema refuses it afterwards)."""
    alerts = doc.get("alerts") if isinstance(doc, dict) else None
    named: set[str] = set()
    for alert in alerts if isinstance(alerts, list) else ():
        labels = alert.get("labels") if isinstance(alert, dict) else None
        pool = labels.get(pool_label) if isinstance(labels, dict) else None
        if isinstance(pool, str) and pool:
            named.add(pool)
    return named


def check_pools(receiver: str, sender: str, scopes: Sequence[list[str]], named: Collection[str]) -> None:
    """All or nothing: one pool outside any of the sender's scopes refuses the delivery (403), so
    a misrouted group is visible at once (Alertmanager's failed-notification metrics, ours)."""
    denied = sorted(p for p in named if not all(allows(scope, p) for scope in scopes))
    if denied:
        raise _auth(forbidden("pool_not_allowed", f"{receiver} credential {sender!r} may not send alerts for "
                              f"pool(s) {', '.join(repr(p)[:80] for p in denied[:10])}"))


async def check_pools_before_parsing(receiver: str, request: Request, pool_label: str) -> None:
    """The pool check on the raw JSON: a credential gets 403 for a pool outside its scope whatever
    else the delivery holds, not a 422 that describes the payload (a valid alert of its own pool
    beside a malformed one of another pool is still a misrouted group). Starlette keeps the parsed
    JSON, so FastAPI does not parse the body a second time."""
    try:
        doc = await request.json()
    except ValueError:          # not JSON: FastAPI answers 422 for it
        return
    sender, scopes = request.state.alerts_sender
    check_pools(receiver, sender, scopes, pools_named(doc, pool_label))


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, refused (413) as soon as it exceeds `limit` and (408) if it takes longer
    than `timeout_s`. Kept on the request so FastAPI parses these same bytes afterwards."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise Refused(413, "too_large", f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Refused(413, "too_large", f"body larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise Refused(408, "timeout", f"body not received within {timeout_s:g}s") from None
    body = b"".join(chunks)
    request._body = body    # Starlette's cache of the body: FastAPI reads it from here
    return body


def require_utf8(body: bytes) -> None:
    """JSON is UTF-8 (RFC 8259); refuse anything else as malformed (422) here, after the
    signatures were checked over the raw bytes and before a parser sees it."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The same shape as FastAPI's own JSON errors, so the documented 422 schema holds.
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.start), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": "the body is not UTF-8"}}]) from None


Guard = Callable[[Request], Awaitable[None]]


def guarded(receiver: str, guard: Guard) -> Callable[[T], T]:
    """Mark an endpoint: `guard` runs on the raw request before FastAPI reads or parses anything."""

    def mark(fn: T) -> T:
        fn.__alerts_guard__ = (receiver, guard)  # type: ignore[attr-defined]
        return fn

    return mark


def _route_class(metrics: AlertMetrics) -> type[APIRoute]:
    class GuardedRoute(APIRoute):
        """Runs the endpoint's guard first, and counts refusals (including FastAPI's 422s)."""

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            mark: tuple[str, Guard] | None = getattr(self.endpoint, "__alerts_guard__", None)
            if mark is None:
                return handler
            receiver, guard = mark

            async def guarded_handler(request: Request) -> Response:
                request.state.alerts_t0 = time.perf_counter()
                try:
                    await guard(request)
                    return await handler(request)
                except Refused as exc:
                    metrics.deliveries.labels(receiver, exc.result).inc()
                    if exc.reason is not None:
                        metrics.auth_failures.labels(receiver, exc.reason).inc()
                    client = request.client.host if request.client else "?"
                    log.warning("%s: refused %s from %s: %s", receiver, exc.status, client, exc.detail)
                    headers = {"WWW-Authenticate": 'Bearer realm="scaler", Basic realm="scaler"'} \
                        if exc.status == 401 else None
                    raise HTTPException(exc.status, exc.detail, headers=headers) from None
                except RequestValidationError:
                    metrics.deliveries.labels(receiver, "invalid").inc()
                    raise

            return guarded_handler

    return GuardedRoute


def alerts_router(store: Store, config: AlertsConfig | Callable[[], AlertsConfig],
                  pools: Callable[[], Collection[str]], registry: CollectorRegistry,
                  clock: Callable[[], float] = time.time) -> APIRouter:
    """The receivers' routes. `config` may be a callable returning the current config (a reload
    then takes effect on the next request); `pools` returns the pools this scaler manages now."""
    current: Callable[[], AlertsConfig] = config if callable(config) else (lambda: config)
    metrics = alert_metrics(registry)
    router = APIRouter(route_class=_route_class(metrics), tags=["alerts"])
    documented_auth = [Security(_DocumentedBearer(description="a token from alerts.<receiver>.credentials")),
                       Security(_DocumentedBasic(description="a user and password from "
                                                 "alerts.<receiver>.credentials"))]
    cache: dict[str, Any] = {}

    def table(cfg: AlertsConfig, receiver: Literal["alertmanager", "grafana"]) -> CredentialTable:
        # Digests are computed once per config object (a reload brings a new one), not per request.
        if cache.get("config") is not cfg:
            cache.clear()
            cache.update(config=cfg, alertmanager=CredentialTable.of(cfg.alertmanager.credentials),
                         grafana=CredentialTable.of(cfg.grafana.credentials))
        found: CredentialTable = cache[receiver]
        return found

    # --- guards: what is checked on the raw request ---------------------------------------------

    async def alertmanager_guard(request: Request) -> None:
        cfg = current()
        creds = table(cfg, "alertmanager")
        if not creds:
            raise _auth(unauthorized("not_configured", "no credentials configured in alerts.alertmanager"))
        try:
            credential = creds.authenticate(request.headers.get("authorization"))
        except AuthError as exc:
            raise _auth(exc) from None
        require_utf8(await read_body(request, cfg.max_body_bytes, cfg.read_timeout))
        request.state.alerts_sender = (credential.name, [list(credential.pools)])
        await check_pools_before_parsing("alertmanager", request, cfg.pool_label)

    async def grafana_guard(request: Request) -> None:
        cfg = current()
        creds, hm = table(cfg, "grafana"), cfg.grafana.hmac
        if not creds and hm is None:
            raise _auth(unauthorized("not_configured", "no credentials or hmac configured in alerts.grafana"))
        scopes: list[list[str]] = []
        name = "hmac"
        try:
            if creds:
                credential = creds.authenticate(request.headers.get("authorization"))
                scopes.append(list(credential.pools))
                name = credential.name
            body = await read_body(request, cfg.max_body_bytes, cfg.read_timeout)
            if hm is not None:
                verify_grafana(hm.secret, body, request.headers.get(hm.header),
                               request.headers.get(hm.timestamp_header) if hm.timestamp_header else None,
                               clock(), hm.max_skew, timestamp_required=hm.timestamp_header is not None)
                scopes.append(list(hm.pools))
        except AuthError as exc:
            raise _auth(exc) from None
        require_utf8(body)
        request.state.alerts_sender = (name, scopes)
        await check_pools_before_parsing("grafana", request, cfg.pool_label)

    async def signal_guard(request: Request) -> None:
        cfg = current()
        sig = cfg.signals
        pool, action = request.path_params.get("pool", ""), request.path_params.get("action", "")
        if not sig.keys:
            raise _auth(unauthorized("not_configured", "no signing keys configured in alerts.signals"))
        now = clock()
        try:
            if "sig" in request.query_params:
                verified = verify_url(sig.keys, pool, action, request.query_params, now, sig.max_ttl)
                body = await read_body(request, cfg.max_body_bytes, cfg.read_timeout)
            elif "webhook-signature" in request.headers:
                body = await read_body(request, cfg.max_body_bytes, cfg.read_timeout)
                verified, key = verify_standard_webhook(sig.keys, request.headers, body, now, sig.replay_window)
                if not allows(key.pools, pool):
                    raise forbidden("pool_not_allowed", f"key {key.id!r} may not signal pool {pool!r}")
            else:
                raise unauthorized("missing", "a signed URL (kid, exp, sig) or Standard Webhooks headers "
                                   "(webhook-id, webhook-timestamp, webhook-signature) are required")
            if action == "scale-in" and not sig.allow_scale_in:
                raise forbidden("scale_in_disabled", "scale-in signals are disabled (alerts.signals.allow_scale_in)")
        except AuthError as exc:
            raise _auth(exc) from None
        require_utf8(body)
        request.state.alerts_verified = verified

    # --- storing --------------------------------------------------------------------------------

    # SQLite has one writer at a time, and a writer that finds the lock taken sleeps in growing
    # steps (busy_timeout): under a burst, some requests would wait far longer than the work takes.
    # Queueing this router's writers on a lock first keeps the waits short and the tail flat.
    write_lock = threading.Lock() if store.engine.dialect.name == "sqlite" else contextlib.nullcontext()

    def serialised(fn: Callable[[], T]) -> T:
        with write_lock:
            return fn()

    async def stored_or_503(receiver: str, fn: Callable[[], T]) -> T:
        # The one blocking step (a transaction and its commit) runs in a worker thread: the event
        # loop, shared with the scheduler, never waits for the disk.
        try:
            return await run_in_threadpool(serialised, fn)
        except SQLAlchemyError as exc:
            log.error("%s: could not store: %s", receiver, exc)
            raise Refused(503, "unavailable", "the store could not record this request; retry") from None

    async def deliver(receiver: Literal["alertmanager", "grafana"], request: Request, response: Response,
                alerts: Sequence[AlertIn], group_key: str, truncated: int) -> DeliveryOut:
        cfg = current()
        name, scopes = request.state.alerts_sender
        if len(alerts) > cfg.max_alerts:
            raise Refused(413, "too_many_alerts", f"{len(alerts)} alerts in one delivery, more than "
                          f"alerts.max_alerts={cfg.max_alerts}; set max_alerts in the sender")
        # The guard checked the pools on the raw JSON already; the same check on the validated
        # payload keeps "nothing stored for a pool outside the scope" true on its own.
        check_pools(receiver, name, scopes, {a.labels.get(cfg.pool_label, "") for a in alerts} - {""})
        known = set(pools())
        incoming = []
        for a in alerts:
            pool = a.labels.get(cfg.pool_label, "")
            incoming.append(Incoming(
                receiver=receiver, credential=name, pool=pool, known_pool=pool in known,
                alarm=a.labels.get(cfg.alarm_label, ""), status=a.status, fingerprint=a.fingerprint,
                starts_at=epoch(a.startsAt), ends_at=epoch(a.endsAt), starts_at_text=normalised(a.startsAt),
                group_key=group_key, labels=a.labels,
                summary=a.annotations.get("summary") or a.annotations.get("description") or ""))
        results = await stored_or_503(receiver, lambda: record_alerts(store, incoming, clock(), truncated=truncated))
        return answer(receiver, request, response, incoming, results, truncated)

    def answer(receiver: str, request: Request, response: Response, incoming: Sequence[Incoming],
               results: Sequence[Stored], truncated: int) -> DeliveryOut:
        out: list[AlertResult] = []
        for inc, res in zip(incoming, results, strict=True):
            kind: Literal["new", "duplicate", "unknown_pool", "no_pool"]
            if not inc.pool:
                kind = "no_pool"
            elif not inc.known_pool:
                kind = "unknown_pool"
            else:
                kind = "new" if res.new else "duplicate"
            if res.new:
                metrics.signals.labels(receiver, inc.status).inc()
            else:
                metrics.duplicates.labels(receiver).inc()
            out.append(AlertResult(fingerprint=inc.fingerprint, alarm=inc.alarm, pool=inc.pool or None,
                                   status=inc.status, result=kind, effect=res.effect))
        new = sum(1 for r in results if r.new)
        for_us = any(i.known_pool for i in incoming)
        result: Literal["accepted", "duplicate", "unknown_pool"] = \
            "unknown_pool" if not for_us else ("accepted" if new else "duplicate")
        if truncated:
            metrics.truncated.labels(receiver).inc(truncated)
        metrics.deliveries.labels(receiver, result).inc()
        metrics.store_seconds.labels(receiver).observe(time.perf_counter() - request.state.alerts_t0)
        response.status_code = 200 if for_us else 202
        return DeliveryOut(result=result, new=new, duplicates=len(results) - new, truncated_alerts=truncated,
                           alerts=out)

    # --- routes ---------------------------------------------------------------------------------

    @router.post("/v1/alerts/alertmanager", responses=RESPONSES, dependencies=documented_auth)
    @guarded("alertmanager", alertmanager_guard)
    async def alertmanager(payload: AlertmanagerPayload, request: Request, response: Response) -> DeliveryOut:
        """Alertmanager webhook receiver. Authenticate with a bearer token
        (`http_config.authorization.credentials_file`) or basic auth; each credential may send
        alerts only for its pools. The pool of each alert is its `pool` label (alerts.pool_label);
        a group may mix pools, and each alert counts for its own pool. Repeats, retries and
        re-sends are recognised by (groupKey, fingerprint, startsAt, status) and change nothing."""
        return await deliver("alertmanager", request, response, payload.alerts, payload.groupKey,
                       payload.truncatedAlerts)

    @router.post("/v1/alerts/grafana", responses=RESPONSES, dependencies=documented_auth)
    @guarded("grafana", grafana_guard)
    async def grafana(payload: GrafanaPayload, request: Request, response: Response) -> DeliveryOut:
        """Grafana contact point (webhook integration). Bearer or basic credentials and/or the HMAC
        signature (`X-Grafana-Alerting-Signature`, hex HMAC-SHA256 over `[timestamp:]body`)."""
        return await deliver("grafana", request, response, payload.alerts, payload.groupKey, payload.truncatedAlerts)

    signal_responses = {**RESPONSES, 202: {"model": SignalOut, "description": "recorded, but this scaler does "
                                           "not manage the pool"}}

    @router.post("/v1/pools/{pool}/signal/{action}", responses=signal_responses)
    @guarded("signal", signal_guard)
    async def signal(
        request: Request, response: Response,
        pool: Annotated[str, Path(max_length=64)],
        action: Annotated[Action, Path(description="scale-out, or scale-in if alerts.signals.allow_scale_in")],
        body: Annotated[SignalBody | None, Body()] = None,
        kid: Annotated[str | None, Query(description="signed URL: key id")] = None,
        exp: Annotated[int | None, Query(description="signed URL: expiry, unix seconds")] = None,
        sig: Annotated[str | None, Query(description="signed URL: base64url HMAC-SHA256")] = None,
    ) -> SignalOut:
        """Signal a pool: a scale-out signal keeps the alarm `signal:scale-out` firing for
        `alerts.signals.hold.scale_out`; the pool's policy decides what it does (cooldowns and
        bounds apply). Authenticated by a signed URL (`scaler signal-url`) or by Standard Webhooks
        headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`; the signed JSON body must
        carry `pool` and `action`). A replay inside `alerts.signals.replay_window` changes nothing
        and answers `duplicate`."""
        cfg = current()
        verified: Verified = request.state.alerts_verified
        if verified.scheme == "standard-webhooks" and (body is None or body.pool != pool or body.action != action):
            raise _auth(forbidden("wrong_target", "the signed body must name this pool and action "
                                  '({"pool": …, "action": …})'))
        now = clock()
        hold = cfg.signals.hold.scale_out if action == "scale-out" else cfg.signals.hold.scale_in
        alarm = SIGNAL_SCALE_OUT if action == "scale-out" else SIGNAL_SCALE_IN
        known = pool in set(pools())
        inc = Incoming(receiver="signal", credential=verified.key_id, pool=pool, known_pool=known, alarm=alarm,
                       status="firing", fingerprint=alarm, starts_at=now, expires_at=now + hold,
                       summary=(body.reason if body and body.reason else f"{verified.scheme} signal")[:500])
        remember = max(verified.timestamp or now, now) + cfg.signals.replay_window
        stored = await stored_or_503("signal", lambda: record_signal(store, inc, verified.replay_key,
                                                               remember_until=remember,
                                                               window_s=cfg.signals.replay_window, now=now))
        result: Literal["accepted", "duplicate", "unknown_pool"] = \
            "unknown_pool" if not known else ("accepted" if stored.new else "duplicate")
        if stored.new:
            metrics.signals.labels("signal", "firing").inc()
        else:
            metrics.duplicates.labels("signal").inc()
        metrics.deliveries.labels("signal", result).inc()
        metrics.store_seconds.labels("signal").observe(time.perf_counter() - request.state.alerts_t0)
        response.status_code = 202 if not known else 200
        return SignalOut(result=result, pool=pool, action=action, alarm=alarm, key=verified.key_id,
                         scheme=verified.scheme, firing_until=iso(now + hold) if stored.new and known else None)

    @router.get("/v1/pools/{pool}/alarms", responses={404: _problem("unknown pool")})
    def alarms(pool: Annotated[str, Path(max_length=64)],
               limit: Annotated[int, Query(ge=1, le=500)] = 20) -> PoolAlarmsOut:
        """The pool's alarms as the engine sees them (firing now or not, since when, from whom) and
        the newest signals received for it (duplicates are not kept)."""
        if pool not in set(pools()):
            raise HTTPException(404, f"unknown pool {pool!r}")
        now = clock()
        states = alarm_states(store, pool, now)
        return PoolAlarmsOut(
            pool=pool,
            alarms=[AlarmOut(alarm=s.alarm, firing=s.firing, since=iso(s.since), last_seen=iso(s.last_seen),
                             instances=s.instances, source=s.source) for s in states.values()],
            signals=[SignalRecordOut(id=r.id, at=iso(r.at), alarm=r.alarm, status=r.status, effect=r.effect,
                                     source=r.source, fingerprint=r.fingerprint, starts_at=iso(r.starts_at),
                                     summary=r.summary, truncated=r.truncated)
                     for r in recent_signals(store, pool, limit)],
        )

    return router


__all__ = ["ACTIONS", "AlertmanagerPayload", "GrafanaPayload", "alerts_router"]
