"""What the console's pages show, read from the store: only what a page draws, in a few queries.

The overview reads every pool's members (the store's cached snapshot), breakers and pause state
in one query each, and each pool's newest decision in one query over the decisions' pool index.
A pool page reads the evaluations of the chart's window with only the columns the chart draws,
the newest decisions for the list, and the newest events.
"""

from __future__ import annotations

import bisect
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from sqlalchemy import case, func
from sqlalchemy import select as columns
from sqlmodel import col, select

from policies import PoolPolicy, format_duration
from policies.model import TargetRule, ThresholdRule
from scaler.breaker import BreakerState, breaker_states
from scaler.config import PoolConfig
from scaler.console import chart
from scaler.explain import explain_one
from scaler.store import CAPACITY, DecisionRow, EventRow, Member, MemberState, Store

# The order states are listed in: the member's life, then failed (a state not listed comes last).
STATE_ORDER = ["creating", "booting", "healthy", "standby", "announcing", "in_service", "draining", "withdrawn",
               "deleting", "failed"]
OUTCOME_WORDS = {"scale_out": "scale out", "scale_in": "scale in", "hold": "hold"}
DECISIONS_READ = 300        # newest decisions read for the list (runs of identical ones are folded)
DECISIONS_SHOWN = 40
EVENTS_SHOWN = 60
MAX_CHART_ROWS = 20_000     # a window's evaluations read at most (the newest)


class ConsoleService(Protocol):
    """What the console needs from the running service (a subset of scaler.api.ServiceView)."""

    store: Store
    pools: dict[str, PoolConfig]
    policies: dict[str, PoolPolicy]

    def member_check(self, member_id: str) -> dict[str, Any] | None: ...

    def health_panic(self, pool: str) -> str | None: ...


def clock_text(t: float | None) -> str:
    return "—" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def ago(t: float | None, now: float) -> str:
    if t is None:
        return "—"
    d = now - t
    if abs(d) < 1:
        return "now"
    return f"{format_duration(d)} ago" if d > 0 else f"in {format_duration(-d)}"


@dataclass
class DecisionView:
    id: int | None
    at: float
    outcome: str
    current: int
    desired: int
    reason: str
    dry_run: bool
    operation: str | None
    why: str                    # scaler.explain's text, as `scaler why` prints it
    repeats: int = 1            # identical evaluations folded into this one (the oldest at `first_at`)
    first_at: float | None = None
    first_id: int | None = None     # the oldest one's id: what names the entry across refreshes

    @property
    def key(self) -> str:
        return f"d{self.first_id if self.first_id is not None else self.id}"

    def words(self, now: float) -> str:
        """'scale out 2 → 3 (12s ago): busy: sessions 31 > 20 for 30s' — the decision in one line."""
        what = OUTCOME_WORDS.get(self.outcome, self.outcome)
        if self.dry_run and self.outcome != "hold":
            what += " (dry-run, not done)"
        return f"{what} {self.detail(now)}"

    def detail(self, now: float) -> str:
        """The decision without its outcome: 'at 2 (12s ago): no rule fired', '2 → 3 (…): …'."""
        size = f"{self.current} → {self.desired}" if self.desired != self.current else f"at {self.current}"
        return f"{size} ({ago(self.at, now)}): {self.reason}"


@dataclass
class MemberView:
    instance: str
    state: str
    health: str
    health_reason: str | None
    address: str | None
    age: str
    in_state: str
    error: str | None
    check: str | None
    drain: tuple[float, float] | None      # (seconds draining, drain_timeout)


@dataclass
class PoolSummary:
    name: str
    vip: str
    size: int
    desired: int | None
    min: int | None
    max: int | None
    dry_run: bool
    paused: str | None
    breaker: BreakerState
    breaker_text: str
    panic: str | None
    states: list[tuple[str, int]]
    health: list[tuple[str, int]]
    last: DecisionView | None
    operation: str | None
    members: list[Member] = field(default_factory=list)
    standby: int = 0                        # warm standby members ready
    standby_wanted: int = 0                 # the policy's standby


def decision_mapping(d: DecisionRow) -> dict[str, Any]:
    """The decision as the API's DecisionOut mapping, which scaler.explain formats."""
    return {"id": d.id, "at": iso(d.at), "outcome": d.outcome, "current": d.current, "desired": d.desired,
            "rule": d.rule, "reason": d.reason, "dry_run": d.dry_run, "inputs": json.loads(d.inputs or "{}"),
            "verdicts": json.loads(d.verdicts or "[]"), "operation": d.op_id,
            "context": json.loads(d.context or "{}")}


def decision_view(pool: str, d: DecisionRow, now: float) -> DecisionView:
    return DecisionView(d.id, d.at, d.outcome, d.current, d.desired, d.reason, d.dry_run, d.op_id,
                        explain_one(pool, decision_mapping(d), now))


def latest_decisions(store: Store, pools: Sequence[str]) -> dict[str, DecisionRow]:
    """Each pool's newest decision, in one query (max(id) per pool comes from the pool index)."""
    if not pools:
        return {}
    with store.session() as s:
        newest = (select(func.max(DecisionRow.id)).where(col(DecisionRow.pool).in_(list(pools)))
                  .group_by(col(DecisionRow.pool)))
        return {d.pool: d for d in s.exec(select(DecisionRow).where(col(DecisionRow.id).in_(newest)))}


def in_size(m: Member) -> bool:
    """Counted in the pool's size, as GET /v1/pools counts it (warm standby members are not)."""
    return m.state in CAPACITY and not m.standby


def pool_summaries(svc: ConsoleService, now: float, only: str | None = None) -> list[PoolSummary]:
    names = [only] if only is not None else sorted(svc.pools)
    store = svc.store
    members = store.members()
    by_pool: dict[str, list[Member]] = {}
    for m in members:
        by_pool.setdefault(m.pool, []).append(m)
    breakers = breaker_states(store, names, now)
    rows = {p.name: p for p in store.pools()} if only is None else {only: p} if (p := store.pool(only)) else {}
    last = latest_decisions(store, names)
    running = store.running_operations()
    out = []
    for name in names:
        cfg = svc.pools[name]
        policy = svc.policies.get(name)
        ms = by_pool.get(name, [])
        states: dict[str, int] = {}
        health: dict[str, int] = {}
        for m in ms:
            states[m.state] = states.get(m.state, 0) + 1
            health[m.health] = health.get(m.health, 0) + 1
        d = last.get(name)
        op = running.get(name)
        br = breakers[name]
        row = rows.get(name)
        out.append(PoolSummary(
            name=name, vip=str(cfg.vip), size=sum(1 for m in ms if in_size(m)),
            desired=d.desired if d is not None else None, min=policy.min if policy else None,
            max=policy.max if policy else None, dry_run=policy.dry_run if policy else False,
            paused=row.pause_summary() if row is not None else None, breaker=br, breaker_text=br.summary(now),
            panic=svc.health_panic(name),
            states=sorted(states.items(), key=lambda kv: (STATE_ORDER.index(kv[0]) if kv[0] in STATE_ORDER
                                                          else len(STATE_ORDER), kv[0])),
            health=[(h, health[h]) for h in ("up", "down", "unknown") if h in health],
            last=decision_view(name, d, now) if d is not None else None,
            operation=None if op is None else (f"{op.kind.replace('_', '-')} {op.from_size} → {op.to_size} "
                                               f"({op.id}, started {ago(op.created_at, now)}): {op.reason}"),
            members=ms, standby=sum(1 for m in ms if m.state == "standby"),
            standby_wanted=policy.standby if policy else 0))
    return out


def member_views(svc: ConsoleService, pool: str, members: Sequence[Member], now: float) -> list[MemberView]:
    timeout = svc.pools[pool].drain_timeout
    out = []
    for m in members:
        check = svc.member_check(m.id)
        check_text = None
        if check:
            parts = [str(check.get("result", ""))]
            if check.get("latency_ms") is not None:
                parts.append(f"{float(check['latency_ms']):.1f} ms")
            if check.get("detail"):
                parts.append(str(check["detail"]))
            check_text = " · ".join(p for p in parts if p)
        drain = (max(0.0, now - m.state_since), timeout) if m.state == MemberState.DRAINING else None
        out.append(MemberView(m.instance, m.state, m.health, m.health_reason, m.address,
                              format_duration(max(0.0, now - m.created_at)),
                              format_duration(max(0.0, now - m.state_since)), m.error, check_text, drain))
    return out


def decision_list(store: Store, pool: str, now: float) -> list[DecisionView]:
    """The newest decisions, runs of identical consecutive ones (outcome, sizes, reason) folded."""
    out: list[DecisionView] = []
    for d in store.decisions(pool, DECISIONS_READ):
        prev = out[-1] if out else None
        if (prev is not None and prev.outcome == d.outcome == "hold" and prev.reason == d.reason
                and prev.current == d.current and prev.desired == d.desired):
            prev.repeats += 1
            prev.first_at, prev.first_id = d.at, d.id
            continue
        if len(out) == DECISIONS_SHOWN:
            break
        out.append(decision_view(pool, d, now))
    return out


def recent_events(store: Store, pool: str, limit: int = EVENTS_SHOWN) -> list[EventRow]:
    """The pool's newest events, newest first (the events' pool index, then their ids)."""
    with store.session() as s:
        return list(s.exec(select(EventRow).where(EventRow.pool == pool)
                           .order_by(col(EventRow.id).desc()).limit(limit)))


class ChartRow(NamedTuple):
    id: int
    at: float
    outcome: str
    current: int
    desired: int
    dry_run: bool
    reason: str
    inputs: Mapping[str, float | None]


def chart_rows(store: Store, pool: str, since: float, after_id: int | None = None) -> list[ChartRow]:
    """The pool's evaluations since `since` (and after `after_id`), oldest first, at most
    MAX_CHART_ROWS (the newest), only the columns the chart draws (the reason only of the decisions
    that acted: the marks' tooltips). Core rows, not ORM objects."""
    q = (columns(col(DecisionRow.id), col(DecisionRow.at), col(DecisionRow.outcome), col(DecisionRow.current),
                 col(DecisionRow.desired), col(DecisionRow.dry_run),
                 case((col(DecisionRow.outcome) != "hold", col(DecisionRow.reason)), else_=None),
                 col(DecisionRow.inputs))
         .where(col(DecisionRow.pool) == pool, col(DecisionRow.at) >= since))
    if after_id is not None:
        q = q.where(col(DecisionRow.id) > after_id)
    q = q.order_by(col(DecisionRow.id).desc()).limit(MAX_CHART_ROWS)
    with store.session() as s:
        rows = s.connection().execute(q).all()[::-1]
    inputs = _inputs([r[7] for r in rows])
    return [ChartRow(i, at, outcome, current, desired, bool(dry_run), reason or "", values)
            for (i, at, outcome, current, desired, dry_run, reason, _), values in zip(rows, inputs, strict=True)]


def newest_decision_id(store: Store, pool: str) -> int | None:
    with store.session() as s:
        return s.exec(select(func.max(DecisionRow.id)).where(DecisionRow.pool == pool)).one()


@dataclass
class _Window:
    store: Store
    since: float            # every evaluation of the pool since then is in `rows`
    rows: list[ChartRow]


class ChartCache:
    """The evaluations the chart read last, for the few pools viewed most recently: a page that
    refreshes every few seconds then reads only the decisions newer than the newest it has (the
    decisions' pool index, then their ids) instead of its whole window again. Rows pruned from the
    store meanwhile stay until they leave the window; a store whose ids went back (a new database)
    is read again."""

    def __init__(self, pools: int = 16) -> None:
        self._lock = threading.Lock()
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self._pools = pools

    def rows(self, store: Store, pool: str, since: float) -> list[ChartRow]:
        with self._lock:
            w = self._windows.get(pool)
            if w is not None and (w.store is not store or w.since > since):
                w = None
            if w is not None:
                last = w.rows[-1].id if w.rows else 0
                newer = chart_rows(store, pool, w.since, after_id=last)
                if newer:
                    w.rows.extend(newer)
                elif (newest_decision_id(store, pool) or 0) < last:
                    w = None
            if w is None:
                rows = chart_rows(store, pool, since)
                w = _Window(store, since if len(rows) < MAX_CHART_ROWS else rows[0].at, rows)
            if len(w.rows) > MAX_CHART_ROWS:
                del w.rows[:len(w.rows) - MAX_CHART_ROWS]
                w.since = w.rows[0].at
            self._windows[pool] = w
            self._windows.move_to_end(pool)
            while len(self._windows) > self._pools:
                self._windows.popitem(last=False)
            return w.rows[bisect.bisect_left(w.rows, since, key=lambda r: r.at):]


def _inputs(texts: Sequence[str | None]) -> list[dict[str, Any]]:
    """Each row's inputs JSON, parsed as one array (one call into the C parser, not thousands); a row
    that is not a JSON object reads as no inputs."""
    try:
        parsed = json.loads("[" + ",".join(t or "{}" for t in texts) + "]")
        if len(parsed) == len(texts) and all(type(p) is dict for p in parsed):
            return parsed
    except ValueError:
        pass
    out: list[dict[str, Any]] = []
    for t in texts:
        try:
            value = json.loads(t or "{}")
        except ValueError:
            value = {}
        out.append(value if isinstance(value, dict) else {})
    return out


def thresholds(policy: PoolPolicy | None, name: str) -> list[chart.Threshold]:
    """The lines a rule draws on input `name`'s panel."""
    out: list[chart.Threshold] = []
    for rule in policy.rules if policy else []:
        if isinstance(rule, ThresholdRule) and rule.input == name:
            for key in ("above", "below", "at_least", "at_most"):
                v = getattr(rule, key)
                if v is not None:
                    direction = 0 if rule.adjust.exact else rule.adjust.sign
                    out.append(chart.Threshold(float(v), f"{rule.name}: {rule.comparison()} → {rule.adjust}",
                                               direction))
        elif isinstance(rule, TargetRule) and rule.input == name:
            out.append(chart.Threshold(rule.target, f"{rule.name}: target {rule.target:g} ± {rule.tolerance:.0%}", 0,
                                       (rule.target * (1 - rule.tolerance), rule.target * (1 + rule.tolerance))))
    return out


def pool_chart(svc: ConsoleService, pool: str, now: float, hours: float, cache: ChartCache | None = None) -> str:
    start = now - hours * 3600
    rows = cache.rows(svc.store, pool, start) if cache is not None else chart_rows(svc.store, pool, start)
    policy = svc.policies.get(pool)
    width = chart.WIDTH - chart.LEFT - chart.RIGHT
    size = chart.Panel("size (line) and the size each evaluation asked for (dashed)",
                       chart.changes(chart.Point(r.at, r.current) for r in rows), steps=True, integer=True,
                       extra=[("desired", chart.changes(chart.Point(r.at, r.desired) for r in rows))],
                       bounds=(policy.min, policy.max) if policy else (None, None))
    names = list(policy.inputs) if policy else []
    for r in rows:
        for k in r.inputs:
            if k not in names:
                names.append(k)
    panels = [size]
    for name in names:
        points = [chart.Point(r.at, _number(r.inputs.get(name))) for r in rows]
        panels.append(chart.Panel(f"input {name}", chart.reduce(points, start, now, width),
                                  thresholds(policy, name)))
    marks = [chart.Mark(r.at, r.outcome, f"{clock_text(r.at)} {OUTCOME_WORDS[r.outcome]} {r.current} → "
                        f"{r.desired}{' (dry-run)' if r.dry_run else ''}: {r.reason}", r.dry_run)
             for r in rows if r.outcome in ("scale_out", "scale_in")]
    return chart.render(panels, marks, start, now)


def _number(v: Any) -> float | None:
    t = type(v)         # not isinstance: bool is an int, and this runs for every point
    return v if t is float else float(v) if t is int else None
