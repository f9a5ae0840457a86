"""Persistent state: pools, members, operations and their steps, decisions, events.

SQLModel on SQLite (default, one file, locked so two scalers never share it) or PostgreSQL by URL
(`postgresql+psycopg://` or `postgresql://`, both through psycopg 3).
The schema is created and upgraded by the Alembic migrations in scaler/migrations at open time.
Every member transition is written here *before* the side effect that follows it, which is what
lets a restarted scaler resume or undo half-done work. This module never calls an actuator.

Times are float seconds since the epoch (UTC): comparable, timezone-free, cheap to store.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import functools
import importlib.util
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import BigInteger, Engine, Index, event, insert, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, create_engine, delete, select

from scaler.errors import StoreError

T = TypeVar("T")


class MemberState(enum.StrEnum):
    CREATING = "creating"
    BOOTING = "booting"
    HEALTHY = "healthy"
    ANNOUNCING = "announcing"
    IN_SERVICE = "in_service"
    DRAINING = "draining"
    WITHDRAWN = "withdrawn"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"
    # Booted and healthy, checked, not announced: the pool's warm standby (PoolPolicy.standby).
    STANDBY = "standby"


# Members that serve or will serve: the pool's size as policies see it.
CAPACITY = frozenset({MemberState.CREATING, MemberState.BOOTING, MemberState.HEALTHY,
                      MemberState.ANNOUNCING, MemberState.IN_SERVICE})
# Warm standby members: ready (standby) or on their way to it (a member with `standby` set, still early).
# Not capacity, not routed, not counted toward max.
STANDBY_EARLY = frozenset({MemberState.CREATING, MemberState.BOOTING, MemberState.HEALTHY})
# Members whose work is over: never touched again.
TERMINAL = frozenset({MemberState.DELETED})
# Allowed transitions; anything else is a bug and raises.
TRANSITIONS: dict[MemberState, frozenset[MemberState]] = {
    MemberState.CREATING: frozenset({MemberState.BOOTING, MemberState.FAILED}),
    MemberState.BOOTING: frozenset({MemberState.HEALTHY, MemberState.FAILED}),
    MemberState.HEALTHY: frozenset({MemberState.ANNOUNCING, MemberState.STANDBY, MemberState.FAILED}),
    # Taken by a scale-out, a replacement or a rollout (announcing); found down or its instance gone
    # (failed); no longer wanted (deleting: it never had a route).
    MemberState.STANDBY: frozenset({MemberState.ANNOUNCING, MemberState.FAILED, MemberState.DELETING}),
    MemberState.ANNOUNCING: frozenset({MemberState.IN_SERVICE, MemberState.FAILED}),
    MemberState.IN_SERVICE: frozenset({MemberState.DRAINING, MemberState.FAILED}),
    MemberState.DRAINING: frozenset({MemberState.WITHDRAWN}),
    MemberState.WITHDRAWN: frozenset({MemberState.DELETING}),
    MemberState.DELETING: frozenset({MemberState.DELETED}),
    MemberState.FAILED: frozenset({MemberState.DELETING}),
    MemberState.DELETED: frozenset(),
}


class OpKind(enum.StrEnum):
    SCALE_OUT = "scale_out"
    SCALE_IN = "scale_in"
    # Boots members into standby. Never blocks a decision (left out of the one-running index).
    STANDBY = "standby"
    # Replaces every member on another instance template (scaler.rollout).
    ROLLOUT = "rollout"


class OpState(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Pool(SQLModel, table=True):
    __tablename__ = "pools"
    name: str = Field(primary_key=True)
    vip: str
    last_scale_out_at: float | None = None
    last_scale_in_at: float | None = None
    created_at: float
    # Paused by an operator (Store.pause): decisions are evaluated and stored but start nothing.
    paused_at: float | None = None
    paused_by: str | None = None
    paused_reason: str | None = None

    def pause_summary(self) -> str | None:
        """'paused by api (alice) at …: reason', or None when the pool is not paused."""
        if self.paused_at is None:
            return None
        at = datetime.fromtimestamp(self.paused_at, UTC).isoformat(timespec="seconds")
        return f"paused by {self.paused_by} at {at}" + (f": {self.paused_reason}" if self.paused_reason else "")


class Member(SQLModel, table=True):
    __tablename__ = "members"
    id: str = Field(primary_key=True)
    pool: str = Field(index=True, foreign_key="pools.name")
    instance: str = Field(unique=True)       # the orchestrator's name for it: "{pool}-{op id}-{n}"
    op_id: str = Field(index=True)
    state: str = Field(index=True)
    address: str | None = None
    endpoints: str = "{}"                    # JSON object
    error: str | None = None
    created_at: float
    state_since: float
    # Health as the scaler's checks last decided it (policies.health.Health), stored on change only.
    health: str = "unknown"
    health_since: float | None = None
    health_reason: str | None = None
    replaced_by: str | None = None           # the operation that replaces it after it was found dead
    # Created for the pool's warm standby: once healthy it rests in `standby` instead of announcing.
    # Cleared when a scale-out, a replacement or a rollout takes it.
    standby: bool = False
    # PoolConfig.instance_template() of the `instance:` options it was created with (None: created
    # before templates were recorded); another value than the pool's makes it outdated (rollout).
    template: str | None = None

    def endpoint_map(self) -> dict[str, str]:
        return dict(json.loads(self.endpoints or "{}"))

    def template_values(self) -> dict[str, str]:
        """What target templates (`{address}`, `{instance}`, endpoints) are filled with. An endpoint the
        orchestrator does not report fills in as "", which reads as "not set"."""
        return _Blank({"address": self.address or "", "instance": self.instance, **self.endpoint_map()})


class _FencedSession(Session):
    def __init__(self, *args: Any, fence: Callable[[Session], None] | None = None,
                 committed: Callable[[], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fence = fence
        self._committed = committed

    def commit(self) -> None:
        if self._fence is not None:
            self._fence(self)
        try:
            super().commit()
        except IntegrityError as exc:
            if any(k in str(exc) for k in ("one_running_operation_per_pool", "one_standby_operation_per_pool",
                                           "operations.pool")):
                raise StoreError("another operation of the pool is already running (a concurrent start was "
                                 "refused by the database)") from exc
            raise
        if self._committed is not None:
            self._committed()


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


class Leadership(SQLModel, table=True):
    """One row: the epoch of the current leader (scaler.leader); bumped by each new leader."""

    __tablename__ = "leadership"
    id: int = Field(default=1, primary_key=True)
    epoch: int = 0
    holder: str | None = None
    acquired_at: float | None = None


class StoreVersion(SQLModel, table=True):
    """One row: moved by the database on every write to `members` (triggers, migration 0008)."""

    __tablename__ = "store_version"
    id: int = Field(default=1, primary_key=True)
    members: int = Field(default=0, sa_type=BigInteger)


@dataclass(frozen=True)
class _Snapshot:
    """The members not deleted, as read at `version` of store_version (Store.members)."""

    version: int
    all: tuple[Member, ...]
    by_pool: dict[str, tuple[Member, ...]]


class Operation(SQLModel, table=True):
    __tablename__ = "operations"
    # At most one running operation per pool, enforced by the database too (migrations 0007, 0010),
    # standby replenishments apart: at most one of those too, and they never make a pool busy.
    __table_args__ = (Index("one_running_operation_per_pool", "pool", unique=True,
                            sqlite_where=text("state = 'running' AND kind != 'standby'"),
                            postgresql_where=text("state = 'running' AND kind != 'standby'")),
                      Index("one_standby_operation_per_pool", "pool", unique=True,
                            sqlite_where=text("state = 'running' AND kind = 'standby'"),
                            postgresql_where=text("state = 'running' AND kind = 'standby'")))
    id: str = Field(primary_key=True)
    pool: str = Field(index=True, foreign_key="pools.name")
    kind: str
    state: str = Field(index=True)
    from_size: int
    to_size: int
    reason: str
    error: str | None = None
    created_at: float
    finished_at: float | None = None
    params: str = "{}"                       # JSON: a rollout's {surge, template, by}

    def param(self, key: str, default: Any = None) -> Any:
        return json.loads(self.params or "{}").get(key, default)


class Step(SQLModel, table=True):
    __tablename__ = "steps"
    id: int | None = Field(default=None, primary_key=True)
    op_id: str = Field(index=True)
    member_id: str | None = None
    name: str                                # the state entered, or a side effect ("drain_haproxy")
    at: float
    detail: str = ""


class DecisionRow(SQLModel, table=True):
    __tablename__ = "decisions"
    id: int | None = Field(default=None, primary_key=True)
    pool: str = Field(index=True)
    at: float = Field(index=True)
    outcome: str
    current: int
    desired: int
    rule: str | None = None
    reason: str
    dry_run: bool = False
    inputs: str = "{}"                       # JSON {input: value|null}
    verdicts: str = "[]"                     # JSON [{rule, verdict, step, detail}]
    op_id: str | None = None
    # JSON {cause, recommended, bounds, warming, signals}: the rest of the explanation.
    context: str = "{}"


class EventRow(SQLModel, table=True):
    __tablename__ = "events"
    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(index=True)
    pool: str = Field(index=True)
    member: str | None = None
    kind: str                                # "member_state", "route", "operation", "error", ...
    message: str


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Store:
    """Synchronous access to the database. Each method is one short transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock_fd: int | None = None
        # Checks a leader's write before it commits (set by the service from its Leadership).
        self.fence: Callable[[Session], None] | None = None
        # The one thread the service's jobs use the store from (`call`): off the event loop, and in
        # the same order as before it was moved there (no two of the jobs' store calls overlap).
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        # The last members read and the store_version it was read at (`members`).
        self._snapshot: _Snapshot | None = None
        # When the database last confirmed it (time.monotonic()), and how many writes this store
        # had committed then (`_writes`, counted by every session's commit).
        self._checked = (-math.inf, 0)
        self._writes = 0
        self._snapshot_lock = threading.Lock()
        self.engine: Engine = self._open(url)

    def _open(self, url: str) -> Engine:
        u = engine_url(url)
        if u.get_backend_name() == "sqlite":
            db = u.database
            if db and db != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)
                self._lock(Path(db))
            engine = create_engine(u, connect_args={"check_same_thread": False})

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")       # readers never block the writer
                cur.execute("PRAGMA synchronous=NORMAL")     # durable across process crashes
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=5000")
                cur.close()
        else:
            # libpq waits forever for an unanswered connect; its name shows in pg_stat_activity. A
            # value given in the URL's query (?connect_timeout=…) wins.
            defaults = {"connect_timeout": 10, "application_name": "scaler"}
            engine = create_engine(u, pool_pre_ping=True,
                                   connect_args={k: v for k, v in defaults.items() if k not in u.query})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            engine.dispose()
            reason = str(exc).replace(u.password, "***") if u.password else str(exc)
            raise StoreError(f"cannot open the store {mask(url)}: {reason}") from exc
        return engine

    def _lock(self, db: Path) -> None:
        lock_path = db.with_name(db.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"{db} is in use by another scaler (lock {lock_path} is held)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def migrate(self) -> None:
        from scaler.migrations import upgrade

        try:
            upgrade(self.engine)
        except Exception as exc:
            raise StoreError(f"migrating the store {mask(self.url)} failed: {exc}") from exc

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store method (or a function of store calls) in the store's thread and await it: the
        event loop never waits for the database. Each call commits before it returns."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.engine.dispose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def session(self, *, fenced: bool = False) -> Session:
        """A session; `fenced`: a leader's write, whose commit first runs `self.fence` in the same
        transaction (scaler.leader: refused when another scaler has taken over)."""
        return _FencedSession(self.engine, expire_on_commit=False, fence=self.fence if fenced else None,
                              committed=self._written)

    def _written(self) -> None:
        # This store wrote: `members_if_fresh` asks the database again before trusting its last read.
        self._writes += 1

    # --- pools ------------------------------------------------------------------------------------

    def ensure_pool(self, name: str, vip: str, now: float) -> Pool:
        return self.ensure_pools({name: vip}, now)[name]

    def ensure_pools(self, vips: Mapping[str, str], now: float) -> dict[str, Pool]:
        """Every configured pool (name → VIP) stored, in one transaction: created if new, its VIP
        changed if it has no member. The rows are read in one query (1,000 pools at leadership)."""
        with self.session() as s:
            have = {p.name: p for p in s.exec(select(Pool))}
            for name, vip in vips.items():
                pool = have.get(name)
                if pool is None:
                    pool = have[name] = Pool(name=name, vip=vip, created_at=now)
                    s.add(pool)
                elif pool.vip != vip:
                    live = s.exec(select(Member).where(Member.pool == name,
                                                       col(Member.state) != MemberState.DELETED)).first()
                    if live is not None:
                        raise StoreError(f"pool {name}: VIP changed from {pool.vip} to {vip} while it has "
                                         f"members; scale it to 0 first")
                    pool.vip = vip
                    s.add(pool)
            s.commit()
            return {name: have[name] for name in vips}

    def pause(self, name: str, by: str, reason: str, now: float) -> Pool:
        """Pause the pool's decisions, with an event. Not a leader's write (unfenced): an operator may
        ask any scaler, and the leader reads it at its next evaluation. Pausing a paused pool keeps
        the first pause's time and says so in the event."""
        with self.session() as s:
            pool = s.get(Pool, name)
            if pool is None:
                raise StoreError(f"pool {name} does not exist")
            again = pool.paused_at is not None
            if not again:
                pool.paused_at = now
            pool.paused_by, pool.paused_reason = by, reason or None
            s.add(pool)
            what = f"{'still paused' if again else 'paused'} by {by}" + (f": {reason}" if reason else "")
            s.add(EventRow(at=now, pool=name, kind="pause",
                           message=f"{what}: decisions start nothing; health checks still withdraw dead members"))
            s.commit()
            return pool

    def resume(self, name: str, by: str, now: float) -> Pool:
        with self.session() as s:
            pool = s.get(Pool, name)
            if pool is None:
                raise StoreError(f"pool {name} does not exist")
            if pool.paused_at is not None:
                was = pool.pause_summary()
                pool.paused_at = pool.paused_by = pool.paused_reason = None
                s.add(pool)
                s.add(EventRow(at=now, pool=name, kind="pause", message=f"resumed by {by} ({was})"))
                s.commit()
            return pool

    def pools(self) -> list[Pool]:
        with self.session() as s:
            return list(s.exec(select(Pool).order_by(Pool.name)))

    def pool(self, name: str) -> Pool | None:
        with self.session() as s:
            return s.get(Pool, name)

    # --- members ----------------------------------------------------------------------------------

    def members(self, pool: str | None = None, *, include_deleted: bool = False) -> list[Member]:
        """The members (of one pool), oldest first; deleted ones only if asked.

        Every job reads the whole fleet several times a second (collect, evaluate, each reconcile
        pass, each pool's health round), and loading 4,000 rows into objects costs tens of ms. So
        the members not deleted are kept from the last read with the store_version it saw, and
        read again only when the database says a member was written since (one row; triggers of
        migration 0008 move it on any write, from any process). The objects are shared between
        callers: treat them as read-only (every write goes through a Store method, by id)."""
        if include_deleted:
            with self.session() as s:
                q = select(Member)
                if pool is not None:
                    q = q.where(Member.pool == pool)
                return list(s.exec(q.order_by(col(Member.created_at), col(Member.id))))
        snap = self._members_snapshot()
        return list(snap.all if pool is None else snap.by_pool.get(pool, ()))

    def members_if_fresh(self, pool: str, max_age: float) -> list[Member] | None:
        """A pool's members from the last read if the database confirmed it within `max_age`
        seconds and this store wrote nothing since; else None (then call `members`). No I/O: for
        callers many times a second (each pool's health round), to which a write by another
        process may show up to `max_age` late."""
        snap = self._snapshot
        checked_at, writes = self._checked
        if snap is None or writes != self._writes or time.monotonic() - checked_at > max_age:
            return None
        return list(snap.by_pool.get(pool, ()))

    def _members_snapshot(self) -> _Snapshot:
        with self._snapshot_lock, self.session() as s:
            # The version first: a write that commits between the two reads makes the rows newer
            # than the version, never older, so the next call reads them again.
            checked = (time.monotonic(), self._writes)
            version = s.exec(select(StoreVersion.members).where(StoreVersion.id == 1)).one()
            if self._snapshot is not None and self._snapshot.version == version:
                self._checked = checked
                return self._snapshot
            rows = tuple(s.exec(select(Member).where(col(Member.state) != MemberState.DELETED)
                                .order_by(col(Member.created_at), col(Member.id))))
            by_pool: dict[str, list[Member]] = {}
            for m in rows:
                by_pool.setdefault(m.pool, []).append(m)
            self._snapshot = _Snapshot(version, rows, {p: tuple(ms) for p, ms in by_pool.items()})
            self._checked = checked
            return self._snapshot

    def members_of(self, op_id: str) -> list[Member]:
        """The members an operation works on, deleted ones included (op_id is indexed)."""
        with self.session() as s:
            return list(s.exec(select(Member).where(Member.op_id == op_id).order_by(col(Member.created_at))))

    def member(self, member_id: str) -> Member | None:
        with self.session() as s:
            return s.get(Member, member_id)

    def transition(self, member_id: str, to: MemberState, now: float, *, detail: str = "",
                   error: str | None = None, **fields: Any) -> Member:
        """Move a member to state `to` (checked against TRANSITIONS), with a step and an event."""
        with self.session(fenced=True) as s:
            m = s.get(Member, member_id)
            if m is None:
                raise StoreError(f"member {member_id} does not exist")
            frm = MemberState(m.state)
            if to not in TRANSITIONS[frm]:
                raise StoreError(f"member {m.instance}: transition {frm} → {to} is not allowed")
            m.state = to
            m.state_since = now
            if error is not None:
                m.error = error
            for k, v in fields.items():
                setattr(m, k, v)
            s.add(m)
            msg = f"{m.instance}: {frm} → {to}" + (f" ({detail})" if detail else "")
            s.add(Step(op_id=m.op_id, member_id=m.id, name=str(to), at=now, detail=detail or (error or "")))
            s.add(EventRow(at=now, pool=m.pool, member=m.instance, kind="member_state", message=msg))
            s.commit()
            return m

    def update_member(self, member_id: str, **fields: Any) -> None:
        with self.session(fenced=True) as s:
            m = s.get(Member, member_id)
            if m is None:
                raise StoreError(f"member {member_id} does not exist")
            for k, v in fields.items():
                setattr(m, k, v)
            s.add(m)
            s.commit()

    # --- operations -------------------------------------------------------------------------------

    def set_health(self, member_id: str, health: str, now: float, reason: str, event: str | None = None) -> None:
        """Record a member's new health and, in the same transaction, the event that says why."""
        with self.session(fenced=True) as s:
            m = s.get(Member, member_id)
            if m is None:
                raise StoreError(f"member {member_id} does not exist")
            m.health, m.health_since, m.health_reason = health, now, reason
            s.add(m)
            if event is not None:
                s.add(EventRow(at=now, pool=m.pool, member=m.instance, kind="health", message=event))
            s.commit()

    def start_replacement(self, dead: Member, from_size: int, reason: str, now: float,
                          template: str | None = None) -> Operation:
        """One transaction: `dead` (announcing or in service, already unrouted) fails, and a
        scale-out of one member replaces it: a ready standby member if the pool has one (announced
        at once; `template`: preferred), else a new one. Not a policy decision: no cooldown applies."""
        with self.session(fenced=True) as s:
            m = s.get(Member, dead.id)
            if m is None or m.state not in (MemberState.ANNOUNCING, MemberState.IN_SERVICE):
                raise StoreError(f"member {dead.instance} is not serving; nothing to replace")
            op = self._begin(s, m.pool, OpKind.SCALE_OUT, from_size - 1, from_size, reason, now, None)
            taken = self._take_standby(s, m.pool, 1, op.id, now, prefer=template)
            frm = m.state
            m.state, m.state_since, m.error, m.replaced_by = MemberState.FAILED, now, reason, op.id
            s.add(m)
            s.add(Step(op_id=m.op_id, member_id=m.id, name=MemberState.FAILED, at=now, detail=reason))
            s.add(EventRow(at=now, pool=m.pool, member=m.instance, kind="member_state",
                           message=f"{m.instance}: {frm} → failed ({reason})"))
            if not taken:
                self._create(s, m.pool, op.id, 1, now)
            s.commit()
            return op

    def start_scale_out(self, pool: str, count: int, from_size: int, reason: str, now: float,
                        decision: DecisionRow | None = None, template: str | None = None) -> Operation:
        """One transaction: the operation; up to `count` ready standby members (those on `template`
        first, then the oldest) move to announcing and join it, the rest are new members in state
        creating. The decision's reason says how many came from standby (`scaler why`)."""
        with self.session(fenced=True) as s:
            op = self._begin(s, pool, OpKind.SCALE_OUT, from_size, from_size + count, reason, now, decision)
            taken = self._take_standby(s, pool, count, op.id, now, prefer=template)
            self._create(s, pool, op.id, count - len(taken), now)
            if taken:
                what = (f"{len(taken)} of {count} from standby ({', '.join(m.instance for m in taken)}), "
                        f"announced at once")
                s.add(EventRow(at=now, pool=pool, kind="operation", message=f"{op.id}: {what}"))
                if decision is not None:
                    decision.reason = f"{decision.reason}; {what}"
                    s.add(decision)
            s.commit()
            return op

    @staticmethod
    def _create(s: Session, pool: str, op_id: str, count: int, now: float, *, standby: bool = False,
                first: int = 0) -> list[Member]:
        """`count` new members of operation `op_id` in state creating, named {pool}-{op}-{n} from `first`."""
        out = []
        for i in range(first, first + count):
            mid = new_id("m")
            m = Member(id=mid, pool=pool, instance=f"{pool}-{op_id.removeprefix('op-')}-{i}", op_id=op_id,
                       state=MemberState.CREATING, created_at=now, state_since=now, standby=standby)
            s.add(m)
            s.add(Step(op_id=op_id, member_id=mid, name=MemberState.CREATING, at=now))
            out.append(m)
        return out

    @staticmethod
    def _take_standby(s: Session, pool: str, count: int, op_id: str, now: float, *, prefer: str | None = None,
                      only: str | None = None) -> list[Member]:
        """Up to `count` ready standby members (health not down) moved to announcing and joined to
        operation `op_id`, in the caller's transaction: those on template `prefer` first, then the
        oldest; `only`: those on that template alone."""
        if count <= 0:
            return []
        ready = [m for m in s.exec(select(Member).where(Member.pool == pool, Member.state == MemberState.STANDBY)
                                   .order_by(col(Member.created_at), col(Member.id)))
                 if m.health != "down" and (only is None or m.template == only)]
        ready.sort(key=lambda m: m.template != prefer)          # stable: the oldest first within each
        for m in ready[:count]:
            m.state, m.state_since, m.op_id, m.standby = MemberState.ANNOUNCING, now, op_id, False
            s.add(m)
            s.add(Step(op_id=op_id, member_id=m.id, name=MemberState.ANNOUNCING, at=now, detail="taken from standby"))
            s.add(EventRow(at=now, pool=pool, member=m.instance, kind="member_state",
                           message=f"{m.instance}: standby → announcing (taken by {op_id})"))
        return ready[:count]

    def start_standby(self, pool: str, count: int, ready: int, reason: str, now: float) -> Operation:
        """One transaction: a standby operation and its `count` new members (flagged standby) in
        state creating. Refused while another standby operation of the pool runs; never refused
        because of a scale operation (it does not make the pool busy)."""
        with self.session(fenced=True) as s:
            op = self._begin(s, pool, OpKind.STANDBY, ready, ready + count, reason, now, None)
            self._create(s, pool, op.id, count, now, standby=True)
            s.commit()
            return op

    def drop_standby(self, members: Sequence[Member], reason: str, now: float) -> None:
        """Standby members no longer wanted → deleting (they never had a route), in one transaction."""
        with self.session(fenced=True) as s:
            for v in members:
                m = s.get(Member, v.id)
                if m is None or m.state != MemberState.STANDBY:
                    continue
                m.state, m.state_since = MemberState.DELETING, now
                s.add(m)
                s.add(Step(op_id=m.op_id, member_id=m.id, name=MemberState.DELETING, at=now, detail=reason))
                s.add(EventRow(at=now, pool=m.pool, member=m.instance, kind="member_state",
                               message=f"{m.instance}: standby → deleting ({reason})"))
            s.commit()

    def start_rollout(self, pool: str, surge: int, template: str, outdated: int, size: int, by: str,
                      now: float) -> Operation:
        """The rollout operation (scaler.rollout advances it pass after pass). Refused while
        another operation (standby replenishments apart) runs; it makes the pool busy."""
        with self.session(fenced=True) as s:
            reason = (f"rollout to template {template} by {by}: {outdated} outdated member"
                      f"{'' if outdated == 1 else 's'}, surge {surge}")
            op = self._begin(s, pool, OpKind.ROLLOUT, size, size, reason, now, None)
            op.params = dumps({"surge": surge, "template": template, "by": by, "outdated": outdated})
            s.add(op)
            s.commit()
            return op

    def rollout_launch(self, op_id: str, count: int, template: str, now: float) -> list[Member]:
        """One transaction: `count` members for a rollout: ready standby members on `template`
        first (announced at once), the rest new members in creating."""
        with self.session(fenced=True) as s:
            op = s.get(Operation, op_id)
            if op is None or op.state != OpState.RUNNING:
                raise StoreError(f"operation {op_id} is not running")
            taken = self._take_standby(s, op.pool, count, op_id, now, only=template)
            prefix = f"{op.pool}-{op_id.removeprefix('op-')}-"
            made = sum(1 for m in s.exec(select(Member).where(Member.op_id == op_id)) if m.instance.startswith(prefix))
            new = self._create(s, op.pool, op_id, count - len(taken), now, first=made)
            s.commit()
            return [*taken, *new]

    def rollout_drain(self, op_id: str, member: Member, reason: str, now: float) -> None:
        """One transaction: an outdated member in service → draining, joined to the rollout."""
        with self.session(fenced=True) as s:
            m = s.get(Member, member.id)
            if m is None or m.state != MemberState.IN_SERVICE:
                raise StoreError(f"member {member.instance} is not in service; cannot drain it")
            m.state, m.state_since, m.op_id = MemberState.DRAINING, now, op_id
            s.add(m)
            s.add(Step(op_id=op_id, member_id=m.id, name=MemberState.DRAINING, at=now, detail=reason))
            s.add(EventRow(at=now, pool=m.pool, member=m.instance, kind="member_state",
                           message=f"{m.instance}: in_service → draining ({reason})"))
            s.commit()

    def operation(self, op_id: str) -> Operation | None:
        with self.session() as s:
            return s.get(Operation, op_id)

    def start_scale_in(self, pool: str, victims: Sequence[Member], from_size: int, reason: str, now: float,
                       decision: DecisionRow | None = None) -> Operation:
        """One transaction: the operation and its victims moved from in_service to draining."""
        with self.session(fenced=True) as s:
            op = self._begin(s, pool, OpKind.SCALE_IN, from_size, from_size - len(victims), reason, now, decision)
            for v in victims:
                m = s.get(Member, v.id)
                if m is None or m.state != MemberState.IN_SERVICE:
                    raise StoreError(f"member {v.instance} is not in service; cannot drain it")
                m.state, m.state_since, m.op_id = MemberState.DRAINING, now, op.id
                s.add(m)
                s.add(Step(op_id=op.id, member_id=m.id, name=MemberState.DRAINING, at=now))
                s.add(EventRow(at=now, pool=pool, member=m.instance, kind="member_state",
                               message=f"{m.instance}: in_service → draining"))
            s.commit()
            return op

    def _begin(self, s: Session, pool: str, kind: OpKind, from_size: int, to_size: int, reason: str,
               now: float, decision: DecisionRow | None) -> Operation:
        """The operation row, its event and the decision that asked for it, in the caller's transaction."""
        self._no_running_op(s, pool, standby=kind == OpKind.STANDBY)
        op = Operation(id=new_id("op"), pool=pool, kind=kind, state=OpState.RUNNING, from_size=from_size,
                       to_size=to_size, reason=reason, created_at=now)
        s.add(op)
        s.add(EventRow(at=now, pool=pool, kind="operation",
                       message=f"{op.id}: {kind.replace('_', '-')} {from_size} → {to_size}: {reason}"))
        if decision is not None:
            decision.op_id = op.id
            s.add(decision)
        return op

    @staticmethod
    def _no_running_op(s: Session, pool: str, *, standby: bool = False) -> None:
        """Refuse a second running operation of the pool: of the busy kinds (every kind but
        standby), or a second standby replenishment."""
        kind = col(Operation.kind) == OpKind.STANDBY if standby else col(Operation.kind) != OpKind.STANDBY
        running = s.exec(select(Operation).where(Operation.pool == pool, Operation.state == OpState.RUNNING,
                                                 kind)).first()
        if running is not None:
            raise StoreError(f"pool {pool}: operation {running.id} ({running.kind.replace('_', '-')}) is still running")

    def running_operation(self, pool: str) -> Operation | None:
        """The pool's running operation that makes it busy (a standby replenishment does not)."""
        with self.session() as s:
            return s.exec(select(Operation).where(Operation.pool == pool, Operation.state == OpState.RUNNING,
                                                  col(Operation.kind) != OpKind.STANDBY)).first()

    def running_operations(self) -> dict[str, Operation]:
        """Every pool's running busy operation, in one query (the partial unique index keeps it to one)."""
        with self.session() as s:
            return {op.pool: op for op in s.exec(select(Operation).where(Operation.state == OpState.RUNNING,
                                                                         col(Operation.kind) != OpKind.STANDBY))}

    def running_standby(self) -> dict[str, Operation]:
        """Every pool's running standby replenishment (at most one per pool), in one query."""
        with self.session() as s:
            return {op.pool: op for op in s.exec(select(Operation).where(Operation.state == OpState.RUNNING,
                                                                         Operation.kind == OpKind.STANDBY))}

    def last_operation(self, pool: str, kind: OpKind) -> Operation | None:
        with self.session() as s:
            return s.exec(select(Operation).where(Operation.pool == pool, Operation.kind == kind)
                          .order_by(col(Operation.created_at).desc())).first()

    def operations(self, pool: str, limit: int = 50) -> list[Operation]:
        with self.session() as s:
            return list(s.exec(select(Operation).where(Operation.pool == pool)
                               .order_by(col(Operation.created_at).desc()).limit(limit)))

    def finish_operation(self, op_id: str, state: OpState, now: float, error: str | None = None) -> None:
        with self.session(fenced=True) as s:
            op = s.get(Operation, op_id)
            if op is None or op.state != OpState.RUNNING:
                return
            op.state, op.finished_at, op.error = state, now, error
            s.add(op)
            pool = s.get(Pool, op.pool)
            # Cooldowns count from scale operations only (not from standby boots or rollouts).
            if pool is not None and state == OpState.DONE and op.kind in (OpKind.SCALE_OUT, OpKind.SCALE_IN):
                if op.kind == OpKind.SCALE_OUT:
                    pool.last_scale_out_at = now
                else:
                    pool.last_scale_in_at = now
                s.add(pool)
            msg = f"{op_id}: {op.kind.replace('_', '-')} {state}" + (f": {error}" if error else "")
            s.add(EventRow(at=now, pool=op.pool, kind="operation", message=msg))
            s.commit()

    def steps(self, op_id: str) -> list[Step]:
        with self.session() as s:
            return list(s.exec(select(Step).where(Step.op_id == op_id).order_by(col(Step.id))))

    def add_step(self, op_id: str, member_id: str | None, name: str, now: float, detail: str = "") -> None:
        with self.session(fenced=True) as s:
            s.add(Step(op_id=op_id, member_id=member_id, name=name, at=now, detail=detail))
            s.commit()

    def has_step(self, op_id: str, member_id: str, name: str) -> bool:
        with self.session() as s:
            return s.exec(select(Step).where(Step.op_id == op_id, Step.member_id == member_id,
                                             Step.name == name)).first() is not None

    # --- decisions and events ---------------------------------------------------------------------

    def add_decision(self, row: DecisionRow) -> None:
        with self.session(fenced=True) as s:
            s.add(row)
            s.commit()

    def add_decisions(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Decisions that start nothing (holds), given as their columns, in one transaction and one
        multi-row INSERT: one commit per evaluation of the fleet, not one per pool, and no ORM object
        per row (building 1,000 of them cost more than the evaluations)."""
        if not rows:
            return
        with self.session(fenced=True) as s:
            s.execute(insert(DecisionRow), list(rows))
            s.commit()

    def decisions(self, pool: str, limit: int = 50, before_id: int | None = None) -> list[DecisionRow]:
        with self.session() as s:
            q = select(DecisionRow).where(DecisionRow.pool == pool)
            if before_id is not None:
                q = q.where(col(DecisionRow.id) < before_id)
            return list(s.exec(q.order_by(col(DecisionRow.id).desc()).limit(limit)))

    def prune_decisions(self, pool: str, keep: int) -> None:
        with self.session(fenced=True) as s:
            ids = list(s.exec(select(DecisionRow.id).where(DecisionRow.pool == pool)
                              .order_by(col(DecisionRow.id).desc()).offset(keep).limit(1)))
            if ids and ids[0] is not None:
                s.exec(delete(DecisionRow).where(col(DecisionRow.pool) == pool,
                                                 col(DecisionRow.id) <= ids[0]))
                s.commit()

    def add_event(self, pool: str, kind: str, message: str, now: float, member: str | None = None) -> None:
        with self.session() as s:
            s.add(EventRow(at=now, pool=pool, member=member, kind=kind, message=message))
            s.commit()

    def events(self, pool: str | None = None, after_id: int = 0, limit: int = 500) -> list[EventRow]:
        with self.session() as s:
            q = select(EventRow).where(col(EventRow.id) > after_id)
            if pool is not None:
                q = q.where(EventRow.pool == pool)
            return list(s.exec(q.order_by(col(EventRow.id)).limit(limit)))


def engine_url(url: str) -> URL:
    """The URL the store's engine opens. PostgreSQL goes through psycopg 3 (the driver installed and
    tested): `postgresql://` means `postgresql+psycopg://`, another driver is refused. Without a
    password in the URL, libpq takes it from PGPASSWORD or the password file (PGPASSFILE, ~/.pgpass)."""
    try:
        u = make_url(url)
    except Exception:
        raise StoreError(f"the store URL {mask(url)} is not a database URL") from None
    if u.get_backend_name() == "postgresql":
        if u.drivername == "postgresql":
            u = u.set(drivername="postgresql+psycopg")
        elif u.get_driver_name() != "psycopg":
            raise StoreError(f"the store URL {mask(url)}: PostgreSQL is used through psycopg 3 only; "
                             f"write postgresql+psycopg://… (or postgresql://…)")
        if importlib.util.find_spec("psycopg") is None:
            raise StoreError(f"the store URL {mask(url)} is PostgreSQL, and its driver (psycopg 3) is not "
                             f"installed: pip install 'scaler[postgresql]'")
    return u


def mask(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable database URL>"


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def counts(members: Iterable[Member]) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in members:
        out[m.state] = out.get(m.state, 0) + 1
    return out
