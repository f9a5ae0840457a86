"""The HTTP API: health, the service's metrics, read-only views of pools and their decisions, the
evaluations explained as text, and a policy reload.

Handlers only read the store, except `POST /v1/reload`, which re-reads the policy files (the same
as SIGHUP) and never scales anything by itself. Response models are declared so the OpenAPI document
(`/openapi.json`) matches what the server sends. Access: every /v1 read and /metrics need the `read`
scope, every state change `operate` (scaler.auth); /healthz, /docs (Swagger UI served from the
installed package, no CDN) and /openapi.json are open.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, PlainTextResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from policies import PoolPolicy
from scaler import __version__
from scaler.alerts import AlertsConfig, alerts_router
from scaler.auth import Operator, install, require_scope
from scaler.breaker import BreakerOut, breaker_out, breaker_state, reset_breaker
from scaler.config import ApiConfig, PoolConfig
from scaler.console import console_router
from scaler.explain import explain
from scaler.metrics import Metrics
from scaler.rollout import outdated, progress
from scaler.store import CAPACITY, DecisionRow, MemberState, OpKind, Store, StoreError


class ServiceView(Protocol):
    """What the API needs from the running service."""

    store: Store
    metrics: Metrics
    pools: dict[str, PoolConfig]
    policies: dict[str, PoolPolicy]
    alerts: AlertsConfig

    @property
    def last_reload(self) -> Any: ...

    def health(self) -> dict[str, Any]: ...

    def router_health(self) -> dict[str, Any]: ...

    def member_check(self, member_id: str) -> dict[str, Any] | None:
        """The health checker's last result for a member (None: not checked by this process yet)."""

    def health_panic(self, pool: str) -> str | None:
        """Why the pool's health checks are in panic (every route kept), None when they are not."""

    def cluster(self) -> dict[str, Any]:
        """This scaler's role, epoch, the leader's identity and its lease (scaler.leader)."""

    def reload_policies(self, trigger: str) -> Any: ...


def pause_out(row: Any) -> PauseOut | None:
    if row is None or row.paused_at is None:
        return None
    return PauseOut(at=iso(row.paused_at), by=row.paused_by, reason=row.paused_reason)


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


class MemberOut(BaseModel):
    instance: str
    state: str
    address: str | None
    since: str | None
    error: str | None = None
    health: str = Field("unknown", description="up, down or unknown (not decided yet: routed)")
    health_since: str | None = None
    health_reason: str | None = None
    check: dict[str, Any] | None = Field(None, description="last check: at, result, detail, latency_ms, "
                                         "consecutive failures and successes")
    template: str | None = Field(None, description="the pool's instance template it was created with "
                                 "(another than the pool's: outdated, `scaler rollout` replaces it)")


class DecisionOut(BaseModel):
    id: int | None
    at: str | None
    outcome: str
    current: int
    desired: int
    rule: str | None
    reason: str
    dry_run: bool
    inputs: dict[str, float | None]
    verdicts: list[dict[str, Any]]
    operation: str | None
    context: dict[str, Any] = Field(default_factory=dict, description="cause, recommended size, bounds in "
                                    "force, members warming up, alarm signals")


class OperationOut(BaseModel):
    id: str
    kind: str
    state: str
    from_size: int
    to_size: int
    reason: str
    started: str | None
    finished: str | None
    error: str | None


class PoolOut(BaseModel):
    name: str
    vip: str
    min: int | None
    max: int | None
    dry_run: bool
    size: int
    members: list[MemberOut]
    operation: OperationOut | None
    last_decision: DecisionOut | None
    launch_breaker: BreakerOut
    health_panic: str | None = Field(None, description="set while more than the panic threshold of the pool "
                                     "is down: every route is kept and no replacement starts")
    paused: PauseOut | None = Field(None, description="set while an operator has paused the pool: decisions "
                                    "are evaluated and stored but start nothing; dead members are still "
                                    "withdrawn, not replaced")
    standby: int = Field(0, description="warm standby members ready (booted, checked, not announced; not in "
                         "size, not counted toward max)")
    standby_wanted: int | None = Field(None, description="the policy's standby")
    template: str = Field("", description="the pool's current instance template (hash of its instance: options)")
    outdated: int = Field(0, description="members in service or standby on another template")


class RolloutIn(BaseModel):
    surge: int = Field(1, ge=1, le=100, description="members replaced at a time")


class RolloutOut(BaseModel):
    operation: str
    state: str = Field(description="running, done or failed")
    template: str = Field(description="the template members are replaced with")
    surge: int
    outdated: list[str] = Field(description="members in service still on another template (left to replace)")
    outdated_standby: list[str]
    in_flight: list[str] = Field(description="new members on their way into service")
    new_down: list[str] = Field(default_factory=list, description="new members in service found down: no old "
                                "member is drained for them; failed after health.replace_after")
    draining: list[str] = Field(description="old members being drained and deleted")
    replaced: int = Field(description="old members drained so far")
    new_in_service: int
    failed_launches: int
    stops_after_failed_launches: int
    paused: bool
    started: str | None
    finished: str | None
    error: str | None


class PauseOut(BaseModel):
    at: str | None
    by: str | None
    reason: str | None


class PauseIn(BaseModel):
    reason: str = Field("", max_length=500, description="why, for the events and `scaler why`")


class ReloadOut(BaseModel):
    ok: bool
    trigger: str
    at: str | None
    changed: list[str]
    problems: list[str]


class PoliciesOut(BaseModel):
    valid: bool = Field(description="false when the last edit was rejected; the previous policies keep running")
    last_reload: ReloadOut | None
    pools: dict[str, dict[str, Any]] = Field(description="the running policy of each pool")


class EventOut(BaseModel):
    id: int | None
    at: str | None
    pool: str
    member: str | None
    kind: str
    message: str


def decision_out(d: DecisionRow) -> DecisionOut:
    return DecisionOut(id=d.id, at=iso(d.at), outcome=d.outcome, current=d.current, desired=d.desired,
                       rule=d.rule, reason=d.reason, dry_run=d.dry_run, inputs=json.loads(d.inputs),
                       verdicts=json.loads(d.verdicts), operation=d.op_id, context=json.loads(d.context or "{}"))


def reload_out(r: Any) -> ReloadOut:
    return ReloadOut(ok=r.ok, trigger=r.trigger, at=iso(r.at), changed=list(r.changed), problems=list(r.problems))


DOCS_ASSETS = "/docs/assets"


def _serve_docs(app: FastAPI) -> None:
    """/docs from Swagger UI's files in the installed `swagger-ui-bundle-v2` package (Apache-2.0,
    its licence ships in the package): the page works on a control plane without internet."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="scaler API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
                                   swagger_ui_parameters={"persistAuthorization": False})


def create_app(service: ServiceView, clock: Callable[[], float] = time.time, *,
               access: ApiConfig | None = None) -> FastAPI:
    """The API of `service`. `access`: who may use it (api: in scaler.yaml); the default refuses
    every /v1 request that carries no valid credential."""
    app = FastAPI(title="scaler", version=__version__, docs_url=None, redoc_url=None,
                  description="Autoscaler for HAProxy LB fleets sharing one ECMP-routed /32 VIP")
    install(app, access if access is not None else ApiConfig())
    app.state.refused = service.metrics.api_refused
    _serve_docs(app)
    read = [Depends(require_scope("read"))]

    def pool_out(name: str) -> PoolOut:
        cfg = service.pools[name]
        policy = service.policies.get(name)
        members = service.store.members(name)
        op = service.store.running_operation(name)
        last = service.store.decisions(name, limit=1)
        return PoolOut(
            name=name, vip=str(cfg.vip), min=policy.min if policy else None, max=policy.max if policy else None,
            dry_run=policy.dry_run if policy else False,
            size=sum(1 for m in members if MemberState(m.state) in CAPACITY and not m.standby),
            members=[MemberOut(instance=m.instance, state=m.state, address=m.address, since=iso(m.state_since),
                               error=m.error, health=m.health, health_since=iso(m.health_since),
                               health_reason=m.health_reason, check=service.member_check(m.id),
                               template=m.template) for m in members],
            operation=None if op is None else OperationOut(
                id=op.id, kind=op.kind, state=op.state, from_size=op.from_size, to_size=op.to_size,
                reason=op.reason, started=iso(op.created_at), finished=iso(op.finished_at), error=op.error),
            last_decision=decision_out(last[0]) if last else None,
            launch_breaker=breaker_out(breaker_state(service.store, name, clock()), clock()),
            health_panic=service.health_panic(name),
            paused=pause_out(service.store.pool(name)),
            standby=sum(1 for m in members if m.state == MemberState.STANDBY),
            standby_wanted=policy.standby if policy else None, template=cfg.instance_template(),
            outdated=sum(len(x) for x in outdated(members, cfg.instance_template())),
        )

    def rollout_out(name: str, op: Any) -> RolloutOut:
        p = progress(service.store, op, service.pools[name].instance_template()).as_dict()
        row = service.store.pool(name)
        return RolloutOut.model_validate({**p, "paused": row is not None and row.paused_at is not None,
                                          "started": iso(op.created_at), "finished": iso(op.finished_at)})

    # Alarm receivers: they only record alarms (durably) and never scale inside a request. They
    # check their own credentials; their read (a pool's alarms) needs `read` like the other reads.
    receivers = alerts_router(service.store, lambda: service.alerts, lambda: set(service.pools),
                              service.metrics.registry, clock)
    reads = APIRouter()
    for route in list(receivers.routes):
        if isinstance(route, APIRoute) and (route.methods or set()) <= {"GET", "HEAD"}:
            receivers.routes.remove(route)
            reads.routes.append(route)
    app.include_router(receivers)
    app.include_router(reads, dependencies=read)
    app.include_router(console_router(service, clock))     # /console/: read-only web pages (scaler.console)

    def known(pool: str) -> None:
        if pool not in service.pools:
            raise HTTPException(404, f"unknown pool {pool!r}; pools: {', '.join(sorted(service.pools))}")

    @app.get("/healthz")
    def healthz(response: Response) -> dict[str, Any]:
        h = service.health()
        if not h.get("ok"):
            response.status_code = 503
        return h

    @app.get("/metrics", response_class=Response, dependencies=read)
    def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/cluster", dependencies=read)
    def cluster() -> dict[str, Any]:
        """Which scaler leads: this one's role (leader, standby, follower), epoch, lease left."""
        return service.cluster()

    @app.get("/v1/router", dependencies=read)
    def router_state() -> dict[str, Any]:
        """The router driver: for `bgp`, the speaker process and each router session (state, since,
        flaps, replays and the last replay's size and duration)."""
        return service.router_health()

    @app.get("/v1/pools", dependencies=read)
    def pools() -> list[PoolOut]:
        return [pool_out(n) for n in sorted(service.pools)]

    @app.get("/v1/pools/{pool}", dependencies=read)
    def pool(pool: str) -> PoolOut:
        known(pool)
        return pool_out(pool)

    @app.get("/v1/pools/{pool}/decisions", dependencies=read)
    def decisions(pool: str, limit: int = Query(50, ge=1, le=1000),
                  before: int | None = Query(None, description="only decisions with a smaller id"),
                  ) -> list[DecisionOut]:
        known(pool)
        return [decision_out(d) for d in service.store.decisions(pool, limit, before)]

    @app.get("/v1/pools/{pool}/why", response_class=PlainTextResponse, dependencies=read)
    def why(pool: str, limit: int = Query(5, ge=1, le=200)) -> PlainTextResponse:
        """The latest evaluations of the pool as text: decision, reason, inputs, each rule's verdict."""
        known(pool)
        now = clock()
        rows = [decision_out(d).model_dump() for d in service.store.decisions(pool, limit)]
        st = breaker_state(service.store, pool, now)
        head = f"{pool}: {st.summary(now)}\n" if st.status != "closed" else ""
        panic = service.health_panic(pool)
        head += f"{pool}: health {panic}\n" if panic else ""
        row = service.store.pool(pool)
        paused = row.pause_summary() if row is not None else None
        head += f"{pool}: {paused}: decisions start nothing (`scaler resume {pool}`)\n" if paused else ""
        op = service.store.running_operation(pool)
        if op is not None and op.kind == OpKind.ROLLOUT:
            p = progress(service.store, op, service.pools[pool].instance_template())
            head += (f"{pool}: rollout {op.id} to template {p.template} running: {len(p.outdated)} outdated left, "
                     f"{p.replaced} replaced, {len(p.in_flight)} in flight, {p.failed} failed launches; "
                     f"decisions wait for it (`scaler rollout {pool} --status`)\n")
        for m in service.store.members(pool):
            if m.health == "down" and m.state != MemberState.DELETED:
                head += (f"{pool}: {m.instance} ({m.state}) is down since {iso(m.health_since)}: "
                         f"{m.health_reason}\n")
        return PlainTextResponse((head + "\n" if head else "") + explain(pool, rows, now))

    @app.post("/v1/pools/{pool}/pause")
    def pause(pool: str, who: Operator, body: PauseIn | None = None) -> PoolOut:
        """Pause the pool's decisions (persisted, every scaler of the cluster): they are still
        evaluated and stored, with what the rules asked for, but start nothing. A running operation
        finishes; health checks keep withdrawing dead members but do not replace them."""
        known(pool)
        try:
            service.store.pause(pool, f"api ({who.name})", body.reason if body else "", clock())
        except StoreError as exc:       # configured, but no leader has stored it yet
            raise HTTPException(409, str(exc)) from exc
        return pool_out(pool)

    @app.post("/v1/pools/{pool}/resume")
    def resume(pool: str, who: Operator) -> PoolOut:
        """Resume the pool's decisions (the next evaluation may act)."""
        known(pool)
        try:
            service.store.resume(pool, f"api ({who.name})", clock())
        except StoreError as exc:
            raise HTTPException(409, str(exc)) from exc
        return pool_out(pool)

    @app.post("/v1/pools/{pool}/rollout", status_code=201)
    def rollout_start(pool: str, who: Operator, body: RolloutIn | None = None) -> RolloutOut:
        """Replace every member on another instance template than the pool's current one (`scaler
        rollout POOL`): `surge` new members at a time, each old member drained only once a new one
        is in service. Persisted: a restarted scaler resumes it. Stops when the launch breaker opens
        or after surge + 2 failed launches (the old members keep serving). 409: another operation
        runs, or no member is outdated."""
        known(pool)
        surge = body.surge if body else 1
        template = service.pools[pool].instance_template()
        members = service.store.members(pool)
        serving, standby = outdated(members, template)
        if not serving and not standby:
            raise HTTPException(409, f"pool {pool}: every member is on the current template {template}: "
                                     f"nothing to roll out")
        size = sum(1 for m in members if MemberState(m.state) in CAPACITY and not m.standby)
        try:
            op = service.store.start_rollout(pool, surge, template, len(serving) + len(standby), size,
                                             f"api ({who.name})", clock())
        except StoreError as exc:
            raise HTTPException(409, str(exc)) from exc
        return rollout_out(pool, op)

    @app.get("/v1/pools/{pool}/rollout", dependencies=read)
    def rollout_status(pool: str) -> RolloutOut | None:
        """The pool's running rollout, else its last one: what is left, in flight, replaced, failed
        (null: the pool has had none)."""
        known(pool)
        op = service.store.last_operation(pool, OpKind.ROLLOUT)
        return None if op is None else rollout_out(pool, op)

    @app.post("/v1/pools/{pool}/breaker/reset")
    def breaker_reset(pool: str, who: Operator) -> BreakerOut:
        """Close the pool's launch circuit breaker and forget its failures (`scaler breaker reset`)."""
        known(pool)
        now = clock()
        return breaker_out(reset_breaker(service.store, pool, now, by=f"api ({who.name})"), now)

    @app.get("/v1/policies", dependencies=read)
    def policies() -> PoliciesOut:
        last = service.last_reload
        return PoliciesOut(valid=last is None or last.ok, last_reload=None if last is None else reload_out(last),
                           pools={n: p.model_dump(mode="json", by_alias=True)
                                  for n, p in sorted(service.policies.items())})

    @app.post("/v1/reload", dependencies=[Depends(require_scope("operate"))],
              responses={422: {"model": ReloadOut, "description": "an edit was rejected; "
                               "the previous policies keep running"}})
    def reload(response: Response) -> ReloadOut:
        """Re-read the policy files now (the same as SIGHUP). All-or-nothing: on any problem nothing
        changes and every problem is listed as FILE:LINE:COL: message."""
        result = service.reload_policies("api")
        if not result.ok:
            response.status_code = 422
        return reload_out(result)

    @app.get("/v1/pools/{pool}/operations", dependencies=read)
    def operations(pool: str, limit: int = Query(20, ge=1, le=500)) -> list[OperationOut]:
        known(pool)
        return [OperationOut(id=o.id, kind=o.kind, state=o.state, from_size=o.from_size, to_size=o.to_size,
                             reason=o.reason, started=iso(o.created_at), finished=iso(o.finished_at),
                             error=o.error) for o in service.store.operations(pool, limit)]

    @app.get("/v1/events", dependencies=read)
    def events(pool: str | None = None, after: int = Query(0, ge=0),
               limit: int = Query(200, ge=1, le=2000)) -> list[EventOut]:
        if pool is not None:
            known(pool)
        return [EventOut(id=e.id, at=iso(e.at), pool=e.pool, member=e.member, kind=e.kind, message=e.message)
                for e in service.store.events(pool, after, limit)]

    return app
