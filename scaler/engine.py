"""The engine: reads collectors for every in-service member, keeps each input's recent series, and
turns the policies' decisions into operations in the store.

It never performs a side effect itself: a decision to act becomes an operation (with its members
in their first state) written in one transaction; the lifecycle carries it out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from collectors import Collector, CollectorError, Sample, Target
from collectors.batch import collect_all
from policies import (
    Cause,
    Decision,
    Outcome,
    Point,
    PoolPolicy,
    PoolState,
    aggregate,
    evaluate,
    is_warming,
    remember,
    series_name,
    window_needed,
)
from scaler.breaker import breaker_state, breaker_states, hold_for_breaker
from scaler.config import CollectorConfig, PoolConfig
from scaler.leader import NotLeader
from scaler.metrics import Metrics
from scaler.store import CAPACITY, STANDBY_EARLY, DecisionRow, Member, MemberState, Pool, Store, StoreError, dumps

log = logging.getLogger("scaler.engine")


class AlarmView(Protocol):
    """What the engine reads of an alarm's state (scaler.alerts.AlarmState satisfies it)."""

    @property
    def value(self) -> float | None: ...

    @property
    def source(self) -> str: ...


# What one evaluation reads of a pool: its running operation, its row, its launch breaker.
PoolReads = tuple[Any, Any, Any]

# (pool, now) → {alarm name: state}: the alarms received for a pool (webhooks, signed signals).
AlarmSource = Callable[[str, float], Mapping[str, AlarmView]]


def target_for(m: Member, cfg: CollectorConfig) -> Target:
    """The collector target of a member: the template filled with its address and endpoints."""
    # An endpoint the orchestrator does not report fills in as "" (Member.template_values): "not set",
    # and an empty URL makes the collector fail with a clear reason instead of crashing the round.
    values = m.template_values()
    url = cfg.target.url.format_map(values)
    uds = cfg.target.uds.format_map(values) if cfg.target.uds else None
    netns = cfg.target.netns.format_map(values) if cfg.target.netns else None
    return Target(key=m.id, url=url, uds=uds or None, netns=netns or None,
                  labels={"pool": m.pool, "member": m.instance})


def members_by_pool(members: Iterable[Member]) -> dict[str, list[Member]]:
    """The members of each pool, in the order given: one pass over the fleet, not one per pool (a
    filter per pool reads pools x members ORM attributes: 4 million per job at 1,000 x 4)."""
    out: dict[str, list[Member]] = {}
    for m in members:
        out.setdefault(m.pool, []).append(m)
    return out


@dataclass(frozen=True, slots=True)
class Read:
    """What one collector answered for one member: every sample as it came, labels and timestamps
    kept, or `error` (why there are none).

    An input reads the one sample whose metric is its `metric` and whose label set EQUALS its
    `labels` ({} by default: the unlabelled sample, e.g. a total over interfaces). Nothing else
    stands in for it: with one interface's counter reset, the snmp collector leaves out its total,
    and an input on the total has no data from that member rather than another interface's rate.

    Time: `select` returns the sample itself, its `timestamp` (when the source answered) included.
    The pool-level point the engine appends is still stamped with the engine's clock after the
    round's reads, as before: one point aggregates several members' samples, whose clocks differ
    (and a Prometheus query's may repeat an old evaluation time), while windows, `for` runs and
    `stale_after` need one clock that only moves forward.
    """

    source: str
    samples: tuple[Sample, ...] = ()
    error: str | None = None

    def select(self, metric: str, labels: Mapping[str, str]) -> Sample | str:
        """The selected sample, or why there is none (the reason names the series it looked for)."""
        if self.error is not None:
            return self.error
        wanted = dict(labels)
        same_metric = [s for s in self.samples if s.metric == metric]
        found = [s for s in same_metric if dict(s.labels) == wanted]
        if len(found) == 1:
            return found[0]
        series = series_name(metric, wanted)
        if found:
            return f"{len(found)} samples of {series} from {self.source} in one answer (a collector bug): none used"
        label_sets = sorted({tuple(sorted(s.labels.items())) for s in same_metric})    # unlabelled first
        others = [series_name(metric, dict(ls)) for ls in label_sets]
        if not others:
            return f"no {series} from {self.source}"
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        return f"no {series} from {self.source} (it sent {shown})"


@dataclass
class Engine:
    store: Store
    collectors: Mapping[str, Collector]
    collector_configs: Mapping[str, CollectorConfig]
    pools: Mapping[str, PoolConfig]
    policies: MutableMapping[str, PoolPolicy]
    metrics: Metrics
    clock: Callable[[], float] = time.time
    collect_timeout_s: float = 5.0
    decisions_kept: int = 5000
    on_operation: Callable[[], None] | None = None
    alarms: AlarmSource | None = None
    series: dict[str, dict[str, deque[Point]]] = field(default_factory=dict)
    # Per pool: (t, recommended size) of recent evaluations, for scale-in stabilization windows.
    # In memory on purpose: after a restart the first scale-in is merely less stabilized.
    history: dict[str, tuple[tuple[float, int], ...]] = field(default_factory=dict)
    # Metric children looked up once (a labels() call per read and input was 13,000 a round).
    _latency: dict[str, Any] = field(default_factory=dict, repr=False)
    _input_gauges: dict[tuple[str, str], tuple[Any, Any, Any]] = field(default_factory=dict, repr=False)
    _targets: dict[tuple[str, str], tuple[tuple[str | None, str], Target]] = field(default_factory=dict, repr=False)
    _children: dict[tuple[int, tuple[str, ...]], Any] = field(default_factory=dict, repr=False)

    # --- collection -------------------------------------------------------------------------------

    async def collect(self) -> None:
        # A member its health checks found down serves nobody (its route is gone): its metrics say
        # nothing about the load, and its failed reads must not block scale-in as missing data.
        # The store is read in its own thread (Store.call): the event loop never waits for the database.
        members = [m for m in await self.store.call(self.store.members)
                   if m.state == MemberState.IN_SERVICE and m.health != "down"]
        by_pool = members_by_pool(members)
        await asyncio.gather(*(self._collect_pool(name, by_pool.get(name, [])) for name in self.policies))

    def _target(self, source: str, m: Member) -> Target:
        """target_for, kept while the member's address and endpoints stay the same (the templates
        and the endpoints' JSON cost more than an in-process read)."""
        key = (source, m.id)
        cached = self._targets.get(key)
        if cached is not None and cached[0] == (m.address, m.endpoints):
            return cached[1]
        t = target_for(m, self.collector_configs[source])
        self._targets[key] = ((m.address, m.endpoints), t)
        return t

    async def _read(self, source: str, members: list[Member]) -> list[Read]:
        """One source's answer for each member (collectors.batch: a collector that reads a batch at
        once is asked once, any other once per member, concurrently), each bounded by the timeout."""
        answers = await collect_all(self.collectors[source], [self._target(source, m) for m in members],
                                    self.collect_timeout_s)
        latency = self._latency.get(source)
        if latency is None:
            latency = self._latency[source] = self.metrics.collector_latency.labels(source)
        out = []
        for answer, took in answers:
            latency.observe(took)
            if isinstance(answer, CollectorError):
                self.metrics.collector_errors.labels(source, answer.reason).inc()
                out.append(Read(source, error=f"{answer.reason}: {answer}"))
            else:
                out.append(Read(source, tuple(answer)))
        return out

    async def _collect_pool(self, pool: str, serving: list[Member]) -> None:
        policy = self.policies[pool]
        now = self.clock()
        # Members still warming up are left out of the aggregates: a cold member's metrics would
        # pull an average down right after a scale-out and invite a scale-in.
        members = [m for m in serving if not is_warming(policy, m.state_since, now)]
        warming = len(serving) - len(members)
        sources = sorted({i.source for i in policy.inputs.values() if not i.is_alarm})
        reads = ([await self._read(sources[0], members)] if len(sources) == 1 else
                 await asyncio.gather(*(self._read(src, members) for src in sources)))
        now = self.clock()
        by_source = {src: list(zip(members, got, strict=True)) for src, got in zip(sources, reads, strict=True)}
        keep = window_needed(policy)
        alarms = self._alarm_states(pool, now) if policy.alarm_inputs() else {}
        for name, inp in policy.inputs.items():
            if inp.is_alarm:
                self._append_alarm(pool, name, inp.alarm or name, alarms, now)
                continue
            rows = by_source[inp.source]
            got: list[float] = []
            missing: list[str] = []
            for m, read in rows:
                picked = read.select(inp.metric or "", inp.labels)
                if isinstance(picked, str):
                    missing.append(f"{m.instance}: {picked}")
                else:
                    got.append(picked.value)
            value = aggregate(got, inp.aggregate)
            if not members:
                point = Point(now, None, f"{warming} members warming up" if warming else "no member in service")
            elif value is None:
                point = Point(now, None, "; ".join(missing))
            else:
                why = f"{len(missing)} of {len(rows)} members without data: " + "; ".join(missing) if missing else ""
                point = Point(now, value, why, complete=not missing)
            gauges = self._input_gauges.get((pool, name))
            if gauges is None:
                gauges = self._input_gauges[(pool, name)] = (
                    self.metrics.input_value.labels(pool, name), self.metrics.input_members.labels(pool, name, "ok"),
                    self.metrics.input_members.labels(pool, name, "missing"))
            gauges[0].set(float("nan") if point.value is None else point.value)
            gauges[1].set(len(got))
            gauges[2].set(len(missing))
            self._append(pool, name, point, keep)

    def _append(self, pool: str, name: str, point: Point, keep: float) -> None:
        s = self.series.setdefault(pool, {}).setdefault(name, deque())
        s.append(point)
        # The newest point always stays, whatever its age: an alarm's state holds until it changes.
        while len(s) > 1 and s[0].t < point.t - keep:
            s.popleft()

    def _alarm_states(self, pool: str, now: float) -> Mapping[str, AlarmView]:
        if self.alarms is None:
            return {}
        try:
            return self.alarms(pool, now)
        except Exception as exc:
            # Unknown alarm state is missing data (blocks scale-in), never "not firing".
            log.error("%s: reading alarm states failed: %s", pool, exc, extra={"pool": pool})
            return {"": _UNKNOWN}

    def _append_alarm(self, pool: str, name: str, alarm: str, states: Mapping[str, AlarmView], now: float) -> None:
        state = states.get(alarm)
        if state is None and "" in states:
            state = states[""]
        if state is None:
            return      # never received: an empty series means "not firing", not "missing"
        value = state.value
        why = "alarm state unknown" if value is None else f"{'firing' if value else 'resolved'} via {state.source}"
        self._append(pool, name, Point(now, value, why), window_needed(self.policies[pool]))

    # --- evaluation -------------------------------------------------------------------------------

    def pool_state(self, pool: str, members: list[Member], reads: PoolReads | None = None) -> PoolState:
        current = sum(1 for m in members if MemberState(m.state) in CAPACITY and not m.standby)
        # Standby members (ready or booting) are not capacity and do not count toward max, nor do
        # failed ones that were booting for the standby.
        failed = sum(1 for m in members if m.state == MemberState.FAILED and not m.standby)
        op, row, _ = reads if reads is not None else self._read_pool(pool, self.clock())
        return PoolState(current=current, toward_max=current + failed,
                         busy=f"{op.kind.replace('_', '-')} {op.id}" if op else None,
                         last_scale_out_at=row.last_scale_out_at if row else None,
                         last_scale_in_at=row.last_scale_in_at if row else None,
                         in_service_since=tuple(m.state_since for m in members if m.state == MemberState.IN_SERVICE),
                         recommendations=self.history.get(pool, ()))

    def _read_pool(self, pool: str, now: float) -> PoolReads:
        return self.store.running_operation(pool), self.store.pool(pool), breaker_state(self.store, pool, now)

    def _read_all(self, pools: list[str], now: float) -> tuple[list[Member], dict[str, PoolReads]]:
        """What every pool's evaluation reads, in four queries for the whole fleet (not three per pool)."""
        running = self.store.running_operations()
        rows = {p.name: p for p in self.store.pools()}
        breakers = breaker_states(self.store, pools, now)
        return self.store.members(), {pool: (running.get(pool), rows.get(pool), breakers[pool]) for pool in pools}

    def _decide(self, members: list[Member], reads: Mapping[str, PoolReads], now: float,
                ) -> list[tuple[str, Decision, list[Member]]]:
        """Pure but for the engine's own series and history: every pool's decision from what was read."""
        out = []
        by_pool = members_by_pool(members)
        for pool, policy in list(self.policies.items()):
            if pool not in reads:
                continue
            mine = by_pool.get(pool, [])
            decision = evaluate(policy, self.series.get(pool, {}), self.pool_state(pool, mine, reads[pool]), now)
            row = reads[pool][1]
            decision = hold_for_pause(hold_for_breaker(decision, reads[pool][2]), row)
            self._pool_metric(self.metrics.paused, pool).set(1 if row is not None and row.paused_at else 0)
            self.history[pool] = remember(policy, self.history.get(pool, ()), now, decision)
            out.append((pool, decision, mine))
        return out

    def _record_all(self, decided: list[tuple[str, Decision, list[Member]]], reads: Mapping[str, PoolReads],
                    now: float) -> bool:
        """Store every decision: those that act each in the transaction that starts their operation,
        the others (nearly all of them) together in one."""
        holds: list[dict[str, Any]] = []
        started = [self._record(pool, d, mine, now, holds) for pool, d, mine in decided]
        self.store.add_decisions(holds)
        # Standby after the decisions: a scale-out that took standby members is replenished at once.
        members = self.store.members() if any(started) else [m for _, _, mine in decided for m in mine]
        replenished = self._standby(members, reads, now)
        return any(started) or replenished

    def _standby(self, members: list[Member], reads: Mapping[str, PoolReads], now: float) -> bool:
        """Keep each pool's warm standby at its policy's `standby`: boot the missing members (one
        standby operation per pool at a time, never blocking a decision; not while the launch
        breaker is open, the pool is paused or the policy is a dry run), delete the extra ready
        ones, newest first. True if a standby operation started. A pool's row and breaker are the
        evaluation's `reads` (read before the decisions; neither changes with one)."""
        by_pool = members_by_pool(members)
        wanted = {pool: p.standby for pool, p in self.policies.items()}
        if not any(wanted.values()) and not any(m.state == MemberState.STANDBY for m in members):
            return False        # the usual fleet: no query
        running = self.store.running_standby()
        started = False
        for pool, n in wanted.items():
            if pool not in reads:
                continue        # a pool the policies gained since the reads: the next evaluation
            _, row, breaker = reads[pool]
            if row is None or row.paused_at is not None or self.policies[pool].dry_run:
                continue
            mine = by_pool.get(pool, [])
            ready = [m for m in mine if m.state == MemberState.STANDBY]
            booting = [m for m in mine if m.standby and MemberState(m.state) in STANDBY_EARLY]
            have = len(ready) + len(booting)
            try:
                if have < n and pool not in running and not breaker.open:
                    self.store.start_standby(pool, n - have, len(ready),
                                             f"standby {have} → {n} (policy standby: {n})", now)
                    log.info("%s: booting %d standby members (%d of %d)", pool, n - have, have, n, extra={"pool": pool})
                    started = True
                elif len(ready) > n and have > n:
                    extra = sorted(ready, key=lambda m: (m.created_at, m.id), reverse=True)[:min(len(ready) - n,
                                                                                                have - n)]
                    self.store.drop_standby(extra, f"policy standby lowered to {n}", now)
            except StoreError as exc:
                if isinstance(exc, NotLeader):
                    raise
                log.info("%s: standby waits: %s", pool, exc, extra={"pool": pool})
        return started

    def evaluate(self) -> dict[str, Decision]:
        """One evaluation of every pool, the store read and written on the calling thread."""
        now = self.clock()
        members, reads = self._read_all(list(self.policies), now)
        decided = self._decide(members, reads, now)
        if self._record_all(decided, reads, now) and self.on_operation is not None:
            self.on_operation()
        return {pool: d for pool, d, _ in decided}

    async def evaluate_off_loop(self) -> dict[str, Decision]:
        """The same, with the store's reads and writes in the store's thread (the service's job): the
        event loop only runs the policies, on what was read."""
        now = self.clock()
        members, reads = await self.store.call(self._read_all, list(self.policies), now)
        decided = self._decide(members, reads, now)
        if await self.store.call(self._record_all, decided, reads, now) and self.on_operation is not None:
            self.on_operation()
        return {pool: d for pool, d, _ in decided}

    def _record(self, pool: str, d: Decision, members: list[Member], now: float,
                holds: list[dict[str, Any]] | None = None) -> bool:
        """Store the decision with its operation if it acts; True if an operation started. A decision
        that starts nothing is appended to `holds` (the decision row's columns) for the caller to
        store, or stored now without."""
        label = "dry_run" if d.dry_run and d.outcome is not Outcome.HOLD else str(d.outcome)
        self._pool_metric(self.metrics.evaluations, pool).inc()
        self._pool_metric(self.metrics.decisions, pool, label).inc()
        self._pool_metric(self.metrics.desired, pool).set(d.desired)
        if d.bounds is not None:
            self._pool_metric(self.metrics.bounds, pool, "min").set(d.bounds.min)
            self._pool_metric(self.metrics.bounds, pool, "max").set(d.bounds.max)
        values: dict[str, Any] = dict(
            pool=pool, at=now, outcome=str(d.outcome), current=d.current, desired=d.desired, rule=d.rule,
            reason=d.reason, dry_run=d.dry_run, inputs=dumps(dict(d.inputs)),
            verdicts=dumps([{"rule": v.rule, "verdict": str(v.verdict), "step": v.step, "detail": v.detail}
                            for v in d.verdicts]),
            context=dumps(self._context(pool, d)), op_id=None)
        try:
            if d.acts and d.outcome is Outcome.SCALE_OUT:
                cfg = self.pools.get(pool)
                op = self.store.start_scale_out(pool, d.desired - d.current, d.current, d.reason, now,
                                                DecisionRow(**values), cfg.instance_template() if cfg else None)
            elif d.acts and d.outcome is Outcome.SCALE_IN:
                victims = self.victims(members, d.current - d.desired)
                op = self.store.start_scale_in(pool, victims, d.current, d.reason, now, DecisionRow(**values))
            else:
                self._hold(values, holds)
                return False
        except StoreError as exc:
            if isinstance(exc, NotLeader):
                raise           # not ours to record any more
            # e.g. an operation started meanwhile: record the decision as a hold with the reason.
            values.update(outcome=str(Outcome.HOLD), reason=f"{d.reason}; not started: {exc}", op_id=None)
            self._hold(values, holds)
            return False
        log.info("%s: %s %d → %d: %s", pool, d.outcome, d.current, d.desired, d.reason,
                 extra={"pool": pool, "operation": op.id})
        return True

    def _hold(self, values: dict[str, Any], holds: list[dict[str, Any]] | None) -> None:
        if holds is None:
            self.store.add_decisions([values])
        else:
            holds.append(values)

    def _pool_metric(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once per label set (three per pool and evaluation)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _context(self, pool: str, d: Decision) -> dict[str, object]:
        ctx: dict[str, object] = {"cause": str(d.cause), "recommended": d.recommended}
        if d.bounds is not None:
            ctx["bounds"] = str(d.bounds)
        if d.warming:
            ctx["warming"] = d.warming
        policy = self.policies.get(pool)
        signals = []
        for name, alarm in (policy.alarm_inputs() if policy else {}).items():
            series = self.series.get(pool, {}).get(name)
            if series:
                p = series[-1]
                signals.append(f"{name}: {alarm} {p.why}")
        if signals:
            ctx["signals"] = signals
        return ctx

    @staticmethod
    def victims(members: list[Member], count: int) -> list[Member]:
        """Members found down by their health checks first (they serve nobody), then the newest in
        service: the oldest ones hold the longest-lived connections."""
        serving = [m for m in members if m.state == MemberState.IN_SERVICE]
        return sorted(serving, key=lambda m: (m.health == "down", m.created_at, m.id), reverse=True)[:count]

    def prune(self) -> None:
        for pool in self.policies:
            self.store.prune_decisions(pool, self.decisions_kept)

    def policy_replaced(self, pool: str, old: PoolPolicy | None, new: PoolPolicy | None) -> None:
        """Drop the series of inputs whose definition changed or vanished: points collected for the
        old definition must not count toward the new one's `for` windows."""
        series = self.series.get(pool)
        if series is None:
            return
        for name in list(series):
            if new is None or old is None or old.inputs.get(name) != new.inputs.get(name):
                del series[name]

    def forget(self, m: Member) -> None:
        for source, c in self.collectors.items():
            c.forget(m.id)
            self._targets.pop((source, m.id), None)


def hold_for_pause(decision: Decision, row: Pool | None) -> Decision:
    """A decision that would act turned into a hold while an operator has paused the pool; the
    reason says who paused it and what the rules asked for (`scaler why` shows both)."""
    paused = row.pause_summary() if row is not None else None
    if paused is None or decision.outcome is Outcome.HOLD:
        return decision
    return dataclasses.replace(decision, outcome=Outcome.HOLD, desired=decision.current, cause=Cause.PAUSED,
                               reason=f"{paused}; wanted {decision.current} → {decision.desired}: {decision.reason}")


class _Unknown:
    """The state of every alarm when the alarm store could not be read: unknown (missing data)."""

    @property
    def value(self) -> float | None:
        return None

    @property
    def source(self) -> str:
        return "alarm store"


_UNKNOWN = _Unknown()

__all__ = ["AlarmSource", "AlarmView", "Engine", "Read", "hold_for_pause", "members_by_pool", "target_for"]
