"""Received alarm signals and the alarm state they imply, in the service's store.

Three tables, created by migration 0002:
- `alarm_signals`: every *new* signal (an alert occurrence or a scale signal), once: the UNIQUE
  `dedup_key` over (receiver, groupKey, fingerprint, startsAt, status) turns Alertmanager's
  repeats, retries and post-crash re-sends into no-ops, across restarts and concurrent requests.
- `alarm_instances`: the current state of each alert instance (pool, alarm, fingerprint).
- `signal_seen`: replay detection for signed URLs and Standard Webhooks ids.

Writers take the lead's `Store` and commit before returning, so a receiver answers 2xx only for
what is durably recorded. Readers (`alarm_states`, `recent_signals`) are pure queries for the
engine, the API and `scaler why`. Nothing here decides to scale or calls an actuator: an alarm is
an *input* of a pool's policy, like a metric.

Alerts are state, not events. An instance's state only moves forward in (startsAt, status) order
(resolved after firing for the same startsAt), so a late or re-sent older message never overrides
a newer one; a re-fired alert keeps its fingerprint and comes with a new startsAt.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, Table, delete
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, SQLModel, col, select

from scaler.store import EventRow, Store

Status = Literal["firing", "resolved"]
# What a new signal did to its alarm instance.
Effect = Literal["fired", "resolved", "refreshed", "stale", "unknown_pool", "no_pool"]
_RANK = {"firing": 0, "resolved": 1}

SIGNAL_SCALE_OUT = "signal:scale-out"
SIGNAL_SCALE_IN = "signal:scale-in"
MAX_LABELS_JSON = 4096


class AlarmSignal(SQLModel, table=True):
    __tablename__ = "alarm_signals"
    id: int | None = Field(default=None, primary_key=True)
    dedup_key: str = Field(unique=True, index=True)   # sha256 hex; see Incoming.dedup_key()
    at: float = Field(index=True)            # when it was received
    receiver: str                            # alertmanager | grafana | signal
    credential: str                          # name of the credential or key (never the secret)
    pool: str = Field(index=True)            # "" when the alert had no pool label
    known_pool: bool
    alarm: str
    status: str                              # firing | resolved
    fingerprint: str
    starts_at: float | None = None
    ends_at: float | None = None
    group_key: str = ""
    effect: str                              # Effect
    truncated: int = 0                       # truncatedAlerts of the delivery that carried it
    summary: str = ""
    labels: str = "{}"                       # JSON object, capped at MAX_LABELS_JSON

    @property
    def source(self) -> str:
        return f"{self.receiver}/{self.credential}"

    def describe(self) -> str:
        """One line for `scaler why` and event logs."""
        text = f"{self.alarm} {self.status} via {self.source} → {self.effect}"
        if self.summary:
            text += f": {self.summary}"
        return text


class AlarmInstance(SQLModel, table=True):
    __tablename__ = "alarm_instances"
    pool: str = Field(primary_key=True)
    alarm: str = Field(primary_key=True)
    fingerprint: str = Field(primary_key=True)
    status: str
    starts_at: float | None = None           # the source's startsAt
    since: float                             # when we saw it enter `status`
    last_seen: float                         # last delivery asserting this state (repeats count)
    expires_at: float | None = None          # scale signals: firing only until then
    receiver: str
    credential: str
    signal_id: int | None = None             # the alarm_signals row that set the state


class SignalSeen(SQLModel, table=True):
    __tablename__ = "signal_seen"
    key: str = Field(primary_key=True)
    at: float                                # when last accepted
    expires_at: float = Field(index=True)    # forgettable after this


_SIGNALS: Table = AlarmSignal.__table__  # type: ignore[attr-defined]
_INSTANCES: Table = AlarmInstance.__table__  # type: ignore[attr-defined]
_SEEN: Table = SignalSeen.__table__  # type: ignore[attr-defined]
_EVENTS: Table = EventRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Incoming:
    """One alert (or scale signal) as a receiver understood it, before storing."""

    receiver: str
    credential: str
    pool: str
    known_pool: bool
    alarm: str
    status: Status
    fingerprint: str
    starts_at: float | None
    ends_at: float | None = None
    starts_at_text: str = ""                 # normalised, part of the dedup key
    group_key: str = ""
    summary: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    expires_at: float | None = None

    def dedup_key(self) -> str:
        parts = (self.receiver, self.group_key, self.fingerprint, self.starts_at_text, self.status)
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class Stored:
    """What storing one alert did."""

    new: bool
    effect: Effect | None                    # None for a duplicate
    signal_id: int | None


def _insert_ignore(conn: Connection, table: Table, values: dict[str, Any], *key: str) -> int | None:
    """INSERT … ON CONFLICT (key) DO NOTHING RETURNING id: the id if the row is new, None if it
    existed (a table without `id`: 1 or None). One statement, so two concurrent requests with the
    same key cannot both see "new". RETURNING, not rowcount: SQLAlchemy does not keep an INSERT's
    rowcount on every driver (psycopg gives -1)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table).values(**values).on_conflict_do_nothing(index_elements=list(key))
    if "id" in table.c:
        return conn.execute(stmt.returning(table.c.id)).scalar_one_or_none()
    return None if conn.execute(stmt.returning(table.c[key[0]])).scalar_one_or_none() is None else 1


def _labels_json(labels: Mapping[str, str]) -> str:
    text = json.dumps(dict(labels), separators=(",", ":"), sort_keys=True)
    return text if len(text) <= MAX_LABELS_JSON else json.dumps({"_truncated": True})


def _apply(conn: Connection, inc: Incoming, signal_id: int, now: float) -> Effect:
    """Move the instance's state forward if this signal is newer than what is known."""
    c = _INSTANCES.c
    key = (c.pool == inc.pool, c.alarm == inc.alarm, c.fingerprint == inc.fingerprint)
    # The instance's row stays locked until the commit (PostgreSQL: FOR UPDATE; SQLite has one writer
    # at a time), so concurrent deliveries about one alert apply one after the other, never on a
    # stale read; a row inserted meanwhile by another delivery is read again once that one commits.
    current = sa_select(c.status, c.starts_at, c.expires_at).where(*key).with_for_update()
    cur = conn.execute(current).first()
    values = dict(status=inc.status, starts_at=inc.starts_at, last_seen=now, expires_at=inc.expires_at,
                  receiver=inc.receiver, credential=inc.credential, signal_id=signal_id)
    if cur is None:
        new = dict(pool=inc.pool, alarm=inc.alarm, fingerprint=inc.fingerprint, since=now, **values)
        if _insert_ignore(conn, _INSTANCES, new, "pool", "alarm", "fingerprint") is not None:
            return "fired" if inc.status == "firing" else "resolved"
        cur = conn.execute(current).first()
        assert cur is not None, "an instance row that conflicted on insert is gone"
    if inc.expires_at is None:
        if (inc.starts_at or 0.0, _RANK[inc.status]) < (cur.starts_at or 0.0, _RANK[cur.status]):
            return "stale"
        was_firing = cur.status == "firing"
    else:
        # A scale signal re-arms its hold; it was firing only if the previous hold had not run out.
        was_firing = cur.status == "firing" and (cur.expires_at is None or now < cur.expires_at)
    changed = was_firing != (inc.status == "firing")
    if changed:
        values["since"] = now
    conn.execute(_INSTANCES.update().where(*key).values(**values))
    if not changed:
        return "refreshed"
    return "fired" if inc.status == "firing" else "resolved"


def _new_signal(conn: Connection, inc: Incoming, dedup_key: str, now: float, truncated: int) -> int | None:
    values = dict(dedup_key=dedup_key, at=now, receiver=inc.receiver, credential=inc.credential, pool=inc.pool,
                  known_pool=inc.known_pool, alarm=inc.alarm, status=inc.status, fingerprint=inc.fingerprint,
                  starts_at=inc.starts_at, ends_at=inc.ends_at, group_key=inc.group_key, effect="stale",
                  truncated=truncated, summary=inc.summary[:500], labels=_labels_json(inc.labels))
    return _insert_ignore(conn, _SIGNALS, values, "dedup_key")


def _event(conn: Connection, now: float, pool: str, kind: str, message: str) -> None:
    conn.execute(_EVENTS.insert().values(at=now, pool=pool, member=None, kind=kind, message=message))


def _record_one(conn: Connection, inc: Incoming, signal_id: int, now: float) -> Effect:
    effect: Effect
    if not inc.pool:
        effect = "no_pool"
    elif not inc.known_pool:
        effect = "unknown_pool"
    else:
        effect = _apply(conn, inc, signal_id, now)
    conn.execute(_SIGNALS.update().where(_SIGNALS.c.id == signal_id).values(effect=effect))
    if effect in ("fired", "resolved"):
        _event(conn, now, inc.pool, "alarm", f"alarm {inc.alarm} {inc.status} via {inc.receiver}/{inc.credential}"
               f" (fingerprint {inc.fingerprint})" + (f": {inc.summary[:200]}" if inc.summary else ""))
    return effect


def record_alerts(store: Store, alerts: Sequence[Incoming], now: float, *, truncated: int = 0) -> list[Stored]:
    """Store one delivery's alerts in one transaction, committed before returning. New alerts
    become signals and move their instance's state; duplicates only refresh `last_seen` of the
    instance whose current state they repeat. `truncated` > 0 (alerts Alertmanager dropped) is
    kept on each signal and raised as an event for the pools concerned."""
    out: list[Stored] = []
    c = _INSTANCES.c
    # Core statements, one connection, one commit: a delivery costs a few statements, not an ORM
    # unit of work. The first statement of the transaction is a write (the insert), so SQLite
    # takes the write lock up front and waits for it (busy_timeout) instead of failing later.
    with store.engine.connect() as conn:
        truncated_pools: set[str] = set()
        for inc in alerts:
            signal_id = _new_signal(conn, inc, inc.dedup_key(), now, truncated)
            if signal_id is None:
                if inc.pool and inc.known_pool and inc.starts_at is not None:
                    conn.execute(_INSTANCES.update()
                                 .where(c.pool == inc.pool, c.alarm == inc.alarm, c.fingerprint == inc.fingerprint,
                                        c.status == inc.status, c.starts_at == inc.starts_at)
                                 .values(last_seen=now))
                out.append(Stored(new=False, effect=None, signal_id=None))
                continue
            out.append(Stored(new=True, effect=_record_one(conn, inc, signal_id, now), signal_id=signal_id))
            if truncated and inc.pool and inc.known_pool:
                truncated_pools.add(inc.pool)
        for pool in sorted(truncated_pools):
            group = next(a.group_key for a in alerts if a.pool == pool)
            _event(conn, now, pool, "alerts_truncated", f"Alertmanager dropped {truncated} alert(s) of group "
                   f"{group} (max_alerts); the pool's alarms may be incomplete")
        conn.commit()
    return out


def record_signal(store: Store, inc: Incoming, replay_key: str, *, remember_until: float, window_s: float,
                  now: float) -> Stored:
    """Store a scale signal unless its replay key was accepted within `window_s` (a replayed
    webhook-id, or the same URL called again): then nothing changes and `new` is False."""
    seen = _SEEN.c
    with store.engine.connect() as conn:
        # Re-accept a key whose last acceptance is older than the window (a URL called again
        # later); the WHERE makes it atomic against a concurrent call with the same key.
        renewed = conn.execute(_SEEN.update().where(seen.key == replay_key, seen.at <= now - window_s)
                               .values(at=now, expires_at=remember_until)).rowcount == 1
        if not renewed and _insert_ignore(conn, _SEEN, dict(key=replay_key, at=now, expires_at=remember_until),
                                          "key") is None:
            conn.rollback()
            return Stored(new=False, effect=None, signal_id=None)
        signal_id = _new_signal(conn, inc, uuid.uuid4().hex, now, 0)
        assert signal_id is not None
        effect = _record_one(conn, inc, signal_id, now)
        conn.commit()
    return Stored(new=True, effect=effect, signal_id=signal_id)


# --- queries for the engine, the API and `scaler why` ---------------------------------------------


@dataclass(frozen=True)
class AlarmState:
    """Whether one alarm of a pool is firing now, and since when.

    `firing` is None when nothing is known (never received, or firing but not re-sent within
    `stale_after_s`): no data, which policies treat as "hold", never as 0.
    """

    pool: str
    alarm: str
    firing: bool | None
    since: float | None          # when it entered this state (our clock)
    last_seen: float | None      # newest delivery about it, repeats included
    instances: int               # alert instances firing now (e.g. one per member)
    source: str                  # receiver/credential of the signal that set the state
    signal_id: int | None = None

    @property
    def value(self) -> float | None:
        """As a policy input point: 1 firing, 0 not firing, None no data."""
        return None if self.firing is None else float(self.firing)


def _fires(i: AlarmInstance, now: float) -> bool:
    return i.status == "firing" and (i.expires_at is None or now < i.expires_at)


def _state_of(pool: str, alarm: str, instances: Sequence[AlarmInstance], now: float,
              stale_after_s: float | None) -> AlarmState:
    firing = [i for i in instances if _fires(i, now)]
    last_seen = max(i.last_seen for i in instances)
    if firing:
        first = min(firing, key=lambda i: i.since)
        newest = max(i.last_seen for i in firing)
        # A signal's hold is its own freshness; an alert must be re-sent (repeat_interval) to stay
        # believed.
        stale = stale_after_s is not None and all(i.expires_at is None for i in firing) \
            and now - newest > stale_after_s
        return AlarmState(pool, alarm, None if stale else True, first.since, last_seen, len(firing),
                          f"{first.receiver}/{first.credential}", first.signal_id)

    def ended(i: AlarmInstance) -> float:
        return i.expires_at if i.status == "firing" and i.expires_at is not None else i.since

    last = max(instances, key=ended)
    return AlarmState(pool, alarm, False, ended(last), last_seen, 0, f"{last.receiver}/{last.credential}",
                      last.signal_id)


def alarm_states(store: Store, pool: str, now: float, *, stale_after_s: float | None = None) -> dict[str, AlarmState]:
    """Every alarm ever heard of for `pool`, by alarm name (alertname, or signal:scale-out /
    signal:scale-in). One indexed query: cheap enough for every evaluation."""
    with store.session() as s:
        rows = list(s.exec(select(AlarmInstance).where(AlarmInstance.pool == pool)))
    by_alarm: dict[str, list[AlarmInstance]] = {}
    for r in rows:
        by_alarm.setdefault(r.alarm, []).append(r)
    return {a: _state_of(pool, a, inst, now, stale_after_s) for a, inst in sorted(by_alarm.items())}


def alarm_state(store: Store, pool: str, alarm: str, now: float, *,
                stale_after_s: float | None = None) -> AlarmState:
    """One alarm's state; `firing` None if it was never heard of."""
    with store.session() as s:
        rows = list(s.exec(select(AlarmInstance).where(AlarmInstance.pool == pool, AlarmInstance.alarm == alarm)))
    if not rows:
        return AlarmState(pool, alarm, None, None, None, 0, "")
    return _state_of(pool, alarm, rows, now, stale_after_s)


def recent_signals(store: Store, pool: str | None, limit: int = 20, before_id: int | None = None) -> list[AlarmSignal]:
    """The newest new signals (duplicates are never stored), newest first; `pool` None = all."""
    with store.session() as s:
        q = select(AlarmSignal)
        if pool is not None:
            q = q.where(AlarmSignal.pool == pool)
        if before_id is not None:
            q = q.where(col(AlarmSignal.id) < before_id)
        return list(s.exec(q.order_by(col(AlarmSignal.id).desc()).limit(limit)))


def prune(store: Store, now: float, keep_s: float) -> int:
    """Forget signals older than `keep_s`, replay keys past their window, and instances that
    ended more than `keep_s` ago. Returns the number of rows removed. Dedup keys of pruned
    signals are forgotten too, so keep `keep_s` well above Alertmanager's repeat_interval."""
    before = now - keep_s
    with store.session() as s:
        conn = s.connection()
        n = conn.execute(delete(AlarmSignal).where(col(AlarmSignal.at) < before)).rowcount
        n += conn.execute(delete(SignalSeen).where(col(SignalSeen.expires_at) < now)).rowcount
        n += conn.execute(delete(AlarmInstance).where(col(AlarmInstance.status) == "resolved",
                                                      col(AlarmInstance.since) < before)).rowcount
        n += conn.execute(delete(AlarmInstance).where(col(AlarmInstance.expires_at).is_not(None),
                                                      col(AlarmInstance.expires_at) < before)).rowcount
        s.commit()
    return int(n)
