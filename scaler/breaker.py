"""The launch circuit breaker: after repeated launches of a pool that never became healthy, stop
launching members of that pool until an operator resets it or a cool-off has passed.

What counts as a failed launch is decided by the lifecycle (`scaler.lifecycle`): the orchestrator's
`LaunchFailed` (the cloud put the server in ERROR, or it stayed in BUILD past the driver's build
timeout) and the pool's `boot_timeout` expiring. A refused or unanswered create (quota, conflict,
timeout) launched nothing and does not count. A launch that becomes healthy resets the count and
closes the breaker.

    closed ──N consecutive failures──▶ open ──cool-off passed──▶ half-open ──failure──▶ open
       ▲                                 │                          │
       └──── a launch became healthy, or `scaler breaker reset POOL` ┘

Half-open allows launches again; because the count is not reset by the cool-off, the next failure
re-opens it at once, while a success closes it.

The state is one row per pool in table `launch_breakers` (migration 0004), so it survives a restart.
Writers commit the row and an event in one transaction. This module never calls an actuator and
never decides a pool's size: the engine turns an open breaker into a hold (`hold_for_breaker`), the
lifecycle refuses to create members of a pool whose breaker is open.
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Field as SqlField
from sqlmodel import Session, SQLModel, select

from policies import Cause, Decision, Outcome, format_duration
from policies.durations import Duration
from scaler.store import EventRow, Store

EVENT_KIND = "launch_breaker"
MAX_ERROR = 500     # characters of the last failure kept (cloud fault messages can be long)


class LaunchBreakerConfig(BaseModel):
    """A pool's `launch_breaker:` in scaler.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="false: failures are counted and shown, launches never stop")
    failures: int = Field(default=3, ge=1, le=1000, description="consecutive failed launches that open it")
    cool_off: Duration = Field(default=600.0, ge=0, description="open this long, then half-open; 0: until reset")


class LaunchBreaker(SQLModel, table=True):
    """One pool's breaker. No row: closed, no failure counted."""

    __tablename__ = "launch_breakers"
    pool: str = SqlField(primary_key=True)
    failures: int = 0                        # consecutive failed launches
    last_member: str | None = None           # the instance of the last counted failure (counted once)
    last_error: str | None = None
    last_failure_at: float | None = None
    opened_at: float | None = None           # set while open or half-open
    resets_at: float | None = None           # end of the cool-off; None while open: only a reset closes it
    cool_off_noted: bool = False             # the "cool-off over" event was written
    trips: int = 0                           # times it opened, ever
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class BreakerState:
    """What the breaker says now. `open`: no launch of the pool may start."""

    pool: str
    open: bool
    failures: int
    opened_at: float | None = None
    resets_at: float | None = None
    reason: str | None = None                # the last failed launch: "web-…-0: server … is in ERROR: …"
    last_failure_at: float | None = None
    trips: int = 0

    @property
    def half_open(self) -> bool:
        """The cool-off passed: launches are allowed, and the next failure re-opens it."""
        return self.opened_at is not None and not self.open

    @property
    def status(self) -> str:
        return "open" if self.open else "half_open" if self.half_open else "closed"

    def summary(self, now: float | None = None) -> str:
        """One line: 'launch circuit breaker open since …: 3 launches failed (last: …); resets at …'."""
        if self.open:
            assert self.opened_at is not None
            resets = (f"resets at {stamp(self.resets_at, now)} or `scaler breaker reset {self.pool}`"
                      if self.resets_at is not None else f"reset it with `scaler breaker reset {self.pool}`")
            return (f"launch circuit breaker open since {stamp(self.opened_at, now)}: "
                    f"{_launches(self.failures)} failed (last: {self.reason or '?'}); {resets}")
        if self.half_open:
            return (f"launch circuit breaker half-open (cool-off over): launches allowed, the next failure "
                    f"re-opens it ({_launches(self.failures)} failed, last: {self.reason or '?'})")
        if self.failures:
            return f"launch circuit breaker closed: {_launches(self.failures)} failed in a row (last: {self.reason})"
        return "launch circuit breaker closed"


def _launches(n: int) -> str:
    return f"{n} launch{'' if n == 1 else 'es'}"


def stamp(t: float | None, now: float | None = None) -> str:
    """UTC time to the second, with the distance from `now` when given: '2024-10-01 03:12:09Z (in 9m12s)'."""
    if t is None:
        return "?"
    text = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if now is not None:
        delta = t - now
        if delta >= 0.5:
            text += f" (in {format_duration(delta)})"
        elif delta <= -0.5:
            text += f" ({format_duration(-delta)} ago)"
    return text


def _state(pool: str, row: LaunchBreaker | None, now: float) -> BreakerState:
    if row is None:
        return BreakerState(pool, False, 0)
    is_open = row.opened_at is not None and (row.resets_at is None or now < row.resets_at)
    return BreakerState(pool, is_open, row.failures, row.opened_at, row.resets_at, row.last_error,
                        row.last_failure_at, row.trips)


def breaker_state(store: Store, pool: str, now: float) -> BreakerState:
    """The pool's breaker at time `now` (a pure read)."""
    with store.session() as s:
        return _state(pool, s.get(LaunchBreaker, pool), now)


def breaker_states(store: Store, pools: list[str], now: float) -> dict[str, BreakerState]:
    """Several pools in one query (for the API's pool list and the lifecycle's pass)."""
    with store.session() as s:
        # Every row: only pools whose launches ever failed have one.
        rows = {r.pool: r for r in s.exec(select(LaunchBreaker))}
    return {p: _state(p, rows.get(p), now) for p in pools}


def _row(s: Session, pool: str) -> LaunchBreaker:
    row = s.get(LaunchBreaker, pool)
    if row is None:
        row = LaunchBreaker(pool=pool)
    return row


def record_launch_failure(store: Store, pool: str, cfg: LaunchBreakerConfig, member: str, error: str,
                          now: float) -> tuple[BreakerState, bool]:
    """Count a launch that will never serve; open the breaker at `cfg.failures` in a row.

    Counted once per member: a retried pass that sees the same failure again (a crash between this
    write and the member's transition) changes nothing. Returns the state and whether it opened now.
    """
    error = error[:MAX_ERROR]
    with store.session(fenced=True) as s:
        row = _row(s, pool)
        if row.last_member == member and row.failures > 0:
            return _state(pool, row, now), False
        row.failures += 1
        row.last_member, row.last_error, row.last_failure_at = member, f"{member}: {error}", now
        row.updated_at = now
        was_open = _state(pool, row, now).open
        opened = cfg.enabled and not was_open and row.failures >= cfg.failures
        if opened:
            row.opened_at = now
            row.resets_at = now + cfg.cool_off if cfg.cool_off > 0 else None
            row.cool_off_noted = False
            row.trips += 1
        s.add(row)
        state = _state(pool, row, now)
        if opened:
            again = " again (a launch failed while half-open)" if row.failures > cfg.failures else ""
            s.add(EventRow(at=now, pool=pool, member=member, kind=EVENT_KIND,
                           message=f"launch circuit breaker opened{again}: launches of pool {pool} stop; "
                                   f"{state.summary(now)}"))
        s.commit()
        return state, opened


def record_launch_success(store: Store, pool: str, member: str, now: float) -> BreakerState:
    """A launch became healthy: the count goes back to 0 and an open or half-open breaker closes."""
    with store.session(fenced=True) as s:
        row = s.get(LaunchBreaker, pool)
        if row is None or (row.failures == 0 and row.opened_at is None):
            return _state(pool, row, now)
        was = _state(pool, row, now)
        row.failures, row.last_member = 0, None
        row.opened_at = row.resets_at = None
        row.updated_at = now
        s.add(row)
        if was.opened_at is not None:
            s.add(EventRow(at=now, pool=pool, member=member, kind=EVENT_KIND,
                           message=f"launch circuit breaker closed: {member} became healthy"))
        s.commit()
        return _state(pool, row, now)


def reset_breaker(store: Store, pool: str, now: float, by: str = "operator") -> BreakerState:
    """Close the breaker and forget the failures (`scaler breaker reset POOL`). Idempotent."""
    with store.session() as s:
        row = s.get(LaunchBreaker, pool)
        if row is None:
            return _state(pool, None, now)
        was = _state(pool, row, now)
        row.failures, row.last_member = 0, None
        row.opened_at = row.resets_at = None
        row.updated_at = now
        s.add(row)
        if was.status != "closed" or was.failures:
            s.add(EventRow(at=now, pool=pool, kind=EVENT_KIND,
                           message=f"launch circuit breaker reset by {by} (was {was.status}, "
                                   f"{_launches(was.failures)} failed in a row)"))
        s.commit()
        return _state(pool, row, now)


def note_cool_off(store: Store, pool: str, now: float) -> bool:
    """Write the 'cool-off over, half-open' event once per opening. True if it was written now."""
    with store.session(fenced=True) as s:
        row = s.get(LaunchBreaker, pool)
        if row is None or row.cool_off_noted or not _state(pool, row, now).half_open:
            return False
        row.cool_off_noted = True
        s.add(row)
        s.add(EventRow(at=now, pool=pool, kind=EVENT_KIND,
                       message=f"launch circuit breaker cool-off over: launches of pool {pool} allowed again; "
                               f"the next failed launch re-opens it"))
        s.commit()
        return True


def hold_for_breaker(decision: Decision, state: BreakerState, cause: Cause | None = None) -> Decision:
    """A scale-out decision turned into a hold while the pool's breaker is open; anything else as is.

    The reason reads 'launch circuit breaker open since …: 3 launches failed (last: …); resets at …
    or `scaler breaker reset POOL`' followed by what the rules asked for. Dry-run scale-outs are held
    too (they would not launch either).
    """
    if decision.outcome is not Outcome.SCALE_OUT or not state.open:
        return decision
    return dataclasses.replace(decision, outcome=Outcome.HOLD, desired=decision.current,
                               reason=f"{state.summary()}; wanted {decision.current} → {decision.desired}: "
                                      f"{decision.reason}",
                               cause=cause if cause is not None else decision.cause)


class BreakerOut(BaseModel):
    """The breaker as the API shows it (`GET /v1/pools/{pool}` → `launch_breaker`)."""

    status: str = Field(description="closed | open | half_open")
    open: bool
    failures: int = Field(description="consecutive launches that never became healthy")
    opened_at: float | None
    resets_at: float | None = Field(description="end of the cool-off; null while open: only a reset closes it")
    last_failure: str | None
    last_failure_at: float | None
    trips: int
    summary: str


def breaker_out(state: BreakerState, now: float) -> BreakerOut:
    return BreakerOut(status=state.status, open=state.open, failures=state.failures, opened_at=state.opened_at,
                      resets_at=state.resets_at, last_failure=state.reason, last_failure_at=state.last_failure_at,
                      trips=state.trips, summary=state.summary(now))


class BreakerMetrics:
    """The breaker's and the audit's metrics, on the service's registry (one set per registry)."""

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, BreakerMetrics] = weakref.WeakKeyDictionary()

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.open = Gauge("scaler_launch_breaker_open", "1 while the pool's launch circuit breaker is open "
                          "(no launch starts)", ["pool"], registry=r)
        self.failures = Gauge("scaler_launch_failures", "Consecutive launches of the pool that never became "
                              "healthy", ["pool"], registry=r)
        self.failed_launches = Counter("scaler_failed_launches_total", "Launches that never became healthy, by "
                                       "kind (error, build_timeout, boot_timeout)", ["pool", "kind"], registry=r)
        self.trips = Counter("scaler_launch_breaker_trips_total", "Times the launch circuit breaker opened",
                             ["pool"], registry=r)
        self.findings = Gauge("scaler_audit_findings", "What the latest audit of orchestrator vs store found, by "
                              "kind (unknown_instance, leftover, vanished, missing, list_failed)",
                              ["pool", "kind"], registry=r)

    @classmethod
    def of(cls, registry: CollectorRegistry) -> BreakerMetrics:
        found = cls._by_registry.get(registry)
        if found is None:
            found = cls._by_registry[registry] = cls(registry)
        return found

    def export(self, state: BreakerState) -> None:
        self.open.labels(state.pool).set(1 if state.open else 0)
        self.failures.labels(state.pool).set(state.failures)


__all__ = [
    "EVENT_KIND", "BreakerMetrics", "BreakerOut", "BreakerState", "LaunchBreaker", "LaunchBreakerConfig",
    "breaker_out", "breaker_state", "breaker_states", "hold_for_breaker", "note_cool_off", "record_launch_failure",
    "record_launch_success", "reset_breaker", "stamp",
]
