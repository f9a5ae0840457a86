"""The HTTP API: health, the service's metrics, read-only views of pools and their decisions, the
evaluations explained as text, and a policy reload.

Handlers only read the store, except `POST /v1/reload`, which re-reads the policy files (the same
as SIGHUP) and never scales anything by itself. Response models are declared so the OpenAPI document
(`/openapi.json`) matches what the server sends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from fastapi import FastAPI, HTTPException, Query, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from policies import PoolPolicy
from scaler.alerts import AlertsConfig, alerts_router
from scaler.breaker import BreakerOut, breaker_out, breaker_state, reset_breaker
from scaler.config import PoolConfig
from scaler.explain import explain
from scaler.metrics import Metrics
from scaler.store import CAPACITY, DecisionRow, MemberState, Store


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


def create_app(service: ServiceView, clock: Callable[[], float] = time.time) -> FastAPI:
    app = FastAPI(title="scaler", version="0.1.0",
                  description="Autoscaler for HAProxy LB fleets sharing one ECMP-routed /32 VIP")

    def pool_out(name: str) -> PoolOut:
        cfg = service.pools[name]
        policy = service.policies.get(name)
        members = service.store.members(name)
        op = service.store.running_operation(name)
        last = service.store.decisions(name, limit=1)
        return PoolOut(
            name=name, vip=str(cfg.vip), min=policy.min if policy else None, max=policy.max if policy else None,
            dry_run=policy.dry_run if policy else False,
            size=sum(1 for m in members if MemberState(m.state) in CAPACITY),
            members=[MemberOut(instance=m.instance, state=m.state, address=m.address, since=iso(m.state_since),
                               error=m.error, health=m.health, health_since=iso(m.health_since),
                               health_reason=m.health_reason, check=service.member_check(m.id)) for m in members],
            operation=None if op is None else OperationOut(
                id=op.id, kind=op.kind, state=op.state, from_size=op.from_size, to_size=op.to_size,
                reason=op.reason, started=iso(op.created_at), finished=iso(op.finished_at), error=op.error),
            last_decision=decision_out(last[0]) if last else None,
            launch_breaker=breaker_out(breaker_state(service.store, name, clock()), clock()),
            health_panic=service.health_panic(name),
        )

    # Alarm receivers: they only record alarms (durably) and never scale inside a request.
    app.include_router(alerts_router(service.store, lambda: service.alerts, lambda: set(service.pools),
                                     service.metrics.registry, clock))

    def known(pool: str) -> None:
        if pool not in service.pools:
            raise HTTPException(404, f"unknown pool {pool!r}; pools: {', '.join(sorted(service.pools))}")

    @app.get("/healthz")
    def healthz(response: Response) -> dict[str, Any]:
        h = service.health()
        if not h.get("ok"):
            response.status_code = 503
        return h

    @app.get("/metrics", response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/cluster")
    def cluster() -> dict[str, Any]:
        """Which scaler leads: this one's role (leader, standby, follower), epoch, lease left."""
        return service.cluster()

    @app.get("/v1/router")
    def router_state() -> dict[str, Any]:
        """The router driver: for `bgp`, the speaker process and each router session (state, since,
        flaps, replays and the last replay's size and duration)."""
        return service.router_health()

    @app.get("/v1/pools")
    def pools() -> list[PoolOut]:
        return [pool_out(n) for n in sorted(service.pools)]

    @app.get("/v1/pools/{pool}")
    def pool(pool: str) -> PoolOut:
        known(pool)
        return pool_out(pool)

    @app.get("/v1/pools/{pool}/decisions")
    def decisions(pool: str, limit: int = Query(50, ge=1, le=1000),
                  before: int | None = Query(None, description="only decisions with a smaller id"),
                  ) -> list[DecisionOut]:
        known(pool)
        return [decision_out(d) for d in service.store.decisions(pool, limit, before)]

    @app.get("/v1/pools/{pool}/why", response_class=PlainTextResponse)
    def why(pool: str, limit: int = Query(5, ge=1, le=200)) -> PlainTextResponse:
        """The latest evaluations of the pool as text: decision, reason, inputs, each rule's verdict."""
        known(pool)
        now = clock()
        rows = [decision_out(d).model_dump() for d in service.store.decisions(pool, limit)]
        st = breaker_state(service.store, pool, now)
        head = f"{pool}: {st.summary(now)}\n" if st.status != "closed" else ""
        panic = service.health_panic(pool)
        head += f"{pool}: health {panic}\n" if panic else ""
        for m in service.store.members(pool):
            if m.health == "down" and m.state != MemberState.DELETED:
                head += (f"{pool}: {m.instance} ({m.state}) is down since {iso(m.health_since)}: "
                         f"{m.health_reason}\n")
        return PlainTextResponse((head + "\n" if head else "") + explain(pool, rows, now))

    @app.post("/v1/pools/{pool}/breaker/reset")
    def breaker_reset(pool: str) -> BreakerOut:
        """Close the pool's launch circuit breaker and forget its failures (`scaler breaker reset`)."""
        known(pool)
        now = clock()
        return breaker_out(reset_breaker(service.store, pool, now, by="api"), now)

    @app.get("/v1/policies")
    def policies() -> PoliciesOut:
        last = service.last_reload
        return PoliciesOut(valid=last is None or last.ok, last_reload=None if last is None else reload_out(last),
                           pools={n: p.model_dump(mode="json", by_alias=True)
                                  for n, p in sorted(service.policies.items())})

    @app.post("/v1/reload", responses={422: {"model": ReloadOut, "description": "an edit was rejected; "
                                             "the previous policies keep running"}})
    def reload(response: Response) -> ReloadOut:
        """Re-read the policy files now (the same as SIGHUP). All-or-nothing: on any problem nothing
        changes and every problem is listed as FILE:LINE:COL: message."""
        result = service.reload_policies("api")
        if not result.ok:
            response.status_code = 422
        return reload_out(result)

    @app.get("/v1/pools/{pool}/operations")
    def operations(pool: str, limit: int = Query(20, ge=1, le=500)) -> list[OperationOut]:
        known(pool)
        return [OperationOut(id=o.id, kind=o.kind, state=o.state, from_size=o.from_size, to_size=o.to_size,
                             reason=o.reason, started=iso(o.created_at), finished=iso(o.finished_at),
                             error=o.error) for o in service.store.operations(pool, limit)]

    @app.get("/v1/events")
    def events(pool: str | None = None, after: int = Query(0, ge=0),
               limit: int = Query(200, ge=1, le=2000)) -> list[EventOut]:
        if pool is not None:
            known(pool)
        return [EventOut(id=e.id, at=iso(e.at), pool=e.pool, member=e.member, kind=e.kind, message=e.message)
                for e in service.store.events(pool, after, limit)]

    return app
