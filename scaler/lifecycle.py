"""The lifecycle: turns persisted intent (members in states) into safe side effects, one step at a time.

It is level-triggered: every pass reads the store, computes the router's desired state from the
members' states, applies it in one batch, then moves each member one step along

    creating → booting → healthy → announcing → in_service → draining → withdrawn → deleting → deleted
                                  └→ standby ─┘ (taken)      (any early step) → failed → deleting → deleted

A member created for the pool's warm standby (`Member.standby`, PoolPolicy.standby) rests in
`standby` once healthy: not routed, health-checked; a scale-out, a replacement or a rollout moves it
to announcing in the transaction that starts them, so it is in the FIB after one router batch.

Each transition is written to the store before the side effect that follows it, and every side
effect is idempotent, so a pass interrupted anywhere (crash, SIGKILL) is simply resumed by the next
pass of a restarted scaler. The route of a member exists only in states announcing, in_service and
draining, so no state can leave a route to a deleted instance.

Draining follows the router's `DrainMode`. Both start by asking the member's HAProxy to close
keep-alive connections after their current response. WEIGHT (resilient nexthop groups): the
member's weight drops (conntrack pinning: it leaves the group and keeps its pinned flows), and it is
withdrawn once its buckets (pinned flows) and connections reach 0, so no flow
breaks. WITHDRAW (BGP, no weights): the member keeps receiving new flows until its route goes, so
it is withdrawn after the pool's `drain_grace` (or as soon as it has no connection), and flows it
still carries are reset. `drain_timeout` bounds both.

Failures (`actuators.errors`): any error of an early step (creating, booting, healthy) fails the
member, and a failed member is withdrawn (it never had a route) and deleted — server and ports —
so a refused, unanswered or broken launch leaves nothing behind. Two exceptions while booting:
an error *asking* about the instance (API timeout, 5xx) is not an answer about it, so the member
keeps booting and its `boot_timeout` bounds the wait; and launches that will never serve
(`LaunchFailed`: ERROR, BUILD past the driver's build timeout) or that expire their `boot_timeout`
are counted by the pool's launch circuit breaker (`scaler.breaker`), which, once open, makes this
module fail new members of the pool without launching them. Quota, conflict and timeout errors
of a create fail the member but are not counted: nothing was launched.

`scaler.audit` compares the orchestrator's instances of each pool with the store: instances nobody
knows are reported (never adopted, never deleted), instances of members the store says are
deleted are deleted again, and members whose instance vanished are failed (draining ones
withdrawn) so their route goes in the same call.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, TypeVar

from actuators.drainer import Drainer
from actuators.errors import ActuatorError, BuildTimeout, InstanceNotFound, LaunchFailed
from actuators.handoff import Peers, PeerSync
from actuators.orchestrator import Instance, InstanceSpec, Orchestrator
from actuators.router import ApplyResult, DesiredRoutes, DrainMode, HopState, NextHop, Router, RouteStatus
from policies import format_duration
from policies.health import Health, routable
from scaler import rollout
from scaler.breaker import (
    BreakerMetrics,
    LaunchBreakerConfig,
    breaker_state,
    breaker_states,
    note_cool_off,
    record_launch_failure,
    record_launch_success,
)
from scaler.config import PoolConfig
from scaler.metrics import Metrics
from scaler.store import Member, MemberState, OpKind, OpState, Store, dumps

log = logging.getLogger("scaler.lifecycle")
T = TypeVar("T")

ROUTED = {MemberState.ANNOUNCING: HopState.ACTIVE, MemberState.IN_SERVICE: HopState.ACTIVE,
          MemberState.DRAINING: HopState.DRAINING}
# Members every peer list holds (stray handoff): they may receive or own connections.
PEERED = frozenset({MemberState.ANNOUNCING, MemberState.IN_SERVICE, MemberState.DRAINING})
# Steps before service: an error here fails the member (it never served).
EARLY = frozenset({MemberState.CREATING, MemberState.BOOTING, MemberState.HEALTHY})
# The states scaler_members counts (a deleted member is history, not a member).
COUNTED = tuple(str(s) for s in MemberState if s is not MemberState.DELETED)
# Members whose instance must exist in the orchestrator (the audit checks them).
EXISTING = frozenset({MemberState.BOOTING, MemberState.HEALTHY, MemberState.ANNOUNCING, MemberState.IN_SERVICE,
                      MemberState.DRAINING, MemberState.STANDBY})
# States with no step of their own: a pass leaves them alone (the engine, the health checks or an
# operation's transaction move them).
RESTING = frozenset({MemberState.IN_SERVICE, MemberState.STANDBY})


def _after_healthy(m: Member) -> MemberState:
    """Where a member goes once HAProxy answers: standby if it was created for the warm standby."""
    return MemberState.STANDBY if m.standby else MemberState.ANNOUNCING


def instance_of(m: Member) -> Instance:
    return Instance(m.instance, m.pool, IPv4Address(m.address) if m.address else None, "unknown",
                    m.endpoint_map())


def desired_routes(pools: Mapping[str, PoolConfig], members: list[Member], *,
                   withdraw_draining: bool = False) -> dict[IPv4Address, frozenset[NextHop]]:
    """The router's desired state: every configured VIP, with the next hops of its routed members.

    A member whose health checks found it down has no route, unless more than the pool's panic
    threshold is down at once: then every routed member keeps its route (`policies.health`)."""
    out: dict[IPv4Address, set[NextHop]] = {p.vip: set() for p in pools.values()}
    candidates: dict[str, list[tuple[Member, HopState]]] = {}
    for m in members:
        state = ROUTED.get(m.state)     # type: ignore[call-overload]   # a str: MemberState is a StrEnum
        if state is HopState.DRAINING and withdraw_draining:
            continue        # stray handoff: its flows reach it through its peers
        if state is not None and m.address and m.pool in pools:
            candidates.setdefault(m.pool, []).append((m, state))
    for name, routed in candidates.items():
        check = pools[name].health
        keep = (routable({m.id: Health(m.health) for m, _ in routed}, check.panic_threshold) if check.enabled
                else {m.id for m, _ in routed})
        for m, state in routed:
            if m.id in keep:
                out[pools[name].vip].add(_hop(m.address or "", state))
    return {vip: frozenset(hops) for vip, hops in out.items()}


def _count(n: int | None) -> str:
    return "?" if n is None else str(n)


@functools.lru_cache(maxsize=65536)
def _hop(address: str, state: HopState) -> NextHop:
    """One next hop per address and state, parsed once (every pass routes the whole fleet)."""
    return NextHop(IPv4Address(address), state)


@dataclass
class Lifecycle:
    store: Store
    orchestrator: Orchestrator
    router: Router
    drainer: Drainer
    pools: Mapping[str, PoolConfig]
    metrics: Metrics
    clock: Callable[[], float] = time.time
    action_timeout_s: float = 120.0
    on_deleted: Callable[[Member], None] | None = None
    # Each pool's launch circuit breaker settings (PoolConfig.launch_breaker); missing: defaults.
    breakers: Mapping[str, LaunchBreakerConfig] = field(default_factory=dict)
    # Raises (scaler.leader.NotLeader) unless this scaler may take a side effect now: checked right
    # before every router, orchestrator and HAProxy action. None: always allowed (one scaler).
    guard: Callable[[], None] | None = None
    # Stray handoff (actuators.handoff): members' peer lists kept current; a draining member is
    # withdrawn at once and waits for its connections. None: no handoff.
    peers: Peers | None = None

    def __post_init__(self) -> None:
        self._lock = asyncio.Lock()
        # Held from reading the members to the router's answer, so routes computed from an older
        # read never overwrite newer ones (a pass and a health withdrawal may run at once).
        self._routes_lock = asyncio.Lock()
        self._peer_sync = PeerSync(self.peers) if self.peers is not None else None
        # The recycle share last set on each member's HAProxy (none after a start: every member is
        # set once, which also clears what a crashed scaler may have left).
        self._recycle: dict[str, int] = {}
        self.last_apply: ApplyResult | None = None
        # Each pool's member counts by state last set on scaler_members (_export_sizes).
        self._exported: dict[str, dict[str, int]] = {}
        self.breaker_metrics = BreakerMetrics.of(self.metrics.registry)

    async def reconcile(self) -> None:
        """One pass. Passes never overlap: a second caller waits for the running one."""
        async with self._lock:
            await self._pass()

    async def reroute(self) -> None:
        """Apply the routes the store asks for now, without waiting for a pass that may be busy
        with a slow orchestrator call: how a health withdrawal reaches the router in milliseconds."""
        await self._route()

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call (or a helper made of store calls) in the store's thread (`Store.call`):
        the event loop, shared with the health checks and the API, never waits for the database.
        Each call is its own transaction and returns once committed, so a transition is still
        durable before the side effect that follows it."""
        return await self.store.call(fn, *args, **kwargs)

    def check(self) -> None:
        """The leader's lease check before a side effect (see `guard`)."""
        if self.guard is not None:
            self.guard()

    async def _route(self) -> tuple[list[Member], DesiredRoutes, dict[IPv4Address, RouteStatus] | None]:
        async with self._routes_lock:
            members = await self._db(self.store.members)
            desired = desired_routes(self.pools, members, withdraw_draining=self.peers is not None)
            # The router's state is read back only for the VIPs whose members wait on it (announcing,
            # draining, withdrawn, failed): at steady state none, whatever the fleet's size.
            waiting = {self.pools[m.pool].vip for m in members if m.state not in RESTING
                       and m.pool in self.pools}
            self.check()
            if self._peer_sync is not None:
                # Before the routes: a joining member is in every peer list before it is announced.
                peered: dict[str, list[str]] = {name: [] for name in self.pools}
                for m in members:       # one pass over the fleet, not one per pool
                    if m.state in PEERED and m.pool in peered:
                        peered[m.pool].append(m.instance)
                errors = await self._peer_sync.sync(peered)
                if errors:
                    now = self.clock()
                    await self._db(self._add_events, [(pool, "error", f"handoff peers: {exc}", now)
                                                      for pool, exc in errors.items()])
            return members, desired, await self._apply_routes(desired, waiting)

    async def _pass(self) -> None:
        # A step that changes what must be routed (healthy → announcing, in_service → draining,
        # draining → withdrawn) is followed at once by another round, so a healthy member is in the
        # FIB within the same pass instead of one reconcile interval later. Bounded: at most 3 rounds.
        # A running rollout's next step first (scaler.rollout): a member it takes from standby is
        # routed by this pass, one it launches is created by it.
        await self._db(self._advance_rollouts)
        for _ in range(3):
            members, desired, statuses = await self._route()
            # A member in service (or standby) has no step of its own (a scale-in moves it to
            # draining in the store): at steady state a pass advances nobody and the fleet is read once.
            moving = [m for m in members if m.state not in RESTING]
            if not moving:
                break
            await asyncio.gather(*(self._advance(m, statuses) for m in moving))
            members = await self._db(self.store.members)
            if desired_routes(self.pools, members) == desired:
                break
        await self._rebalance(members)
        await self._db(self._finish_operations)
        self._export_sizes(members)
        await self._db(self._export_breakers)

    async def _apply_routes(self, desired: DesiredRoutes, waiting: set[IPv4Address],
                            ) -> dict[IPv4Address, RouteStatus] | None:
        """Apply every route; the router's status of the `waiting` VIPs (None: the router failed)."""
        try:
            t0 = time.perf_counter()
            result = await self.router.apply(desired)
            self.metrics.router_apply.observe(time.perf_counter() - t0)
            self.last_apply = result
            statuses = {vip: await self.router.status(vip) for vip in desired if vip in waiting}
        except ActuatorError as exc:
            self.metrics.router_errors.inc()
            log.error("router: %s", exc)
            now = self.clock()
            await self._db(self._add_events, [(pool, "error", f"router: {exc}", now) for pool in self.pools])
            return None
        vip_pool = {p.vip: name for name, p in self.pools.items()}
        now = self.clock()
        events: list[tuple[str, str, str, float]] = []
        for change, pairs in (("add", result.added), ("remove", result.removed),
                              ("reweight", result.reweighted)):
            for vip, hop in pairs:
                self.metrics.router_changes.labels(change).inc()
                weight = ""
                if change == "reweight":
                    weight = " → " + next((str(h.state) for h in desired[vip] if h.address == hop), "?")
                events.append((vip_pool.get(vip, "?"), "route",
                               f"{vip}: {change} next hop {hop}{weight} "
                               f"(batch of {result.messages} messages, {result.elapsed_s * 1000:.1f} ms)", now))
        if events:
            await self._db(self._add_events, events)
        return statuses

    def _add_events(self, events: list[tuple[str, str, str, float]]) -> None:
        for pool, kind, message, at in events:
            self.store.add_event(pool, kind, message, at)

    async def _advance(self, m: Member, statuses: dict[IPv4Address, RouteStatus] | None) -> None:
        pool = self.pools.get(m.pool)
        if pool is None:
            return      # a pool removed from the config: its members are left for an operator
        state = MemberState(m.state)
        try:
            await asyncio.wait_for(self._step(m, pool, statuses), self.action_timeout_s)
        except LaunchFailed as exc:
            # The instance exists but will never serve (ERROR, BUILD past the build timeout).
            await self._db(self._error, m, str(exc))
            if state in EARLY:
                await self._db(self._launch_failed, m, str(exc),
                               "build_timeout" if isinstance(exc, BuildTimeout) else "error")
        except (ActuatorError, TimeoutError) as exc:
            what = str(exc) or f"no result after {self.action_timeout_s:.0f}s"
            await self._db(self._error, m, what)
            if state is MemberState.BOOTING and not isinstance(exc, InstanceNotFound):
                # Asking failed (API timeout, 5xx): no answer about the instance. Keep booting;
                # boot_timeout bounds the wait.
                await self._db(self._check_boot_timeout, m, pool, self.clock())
            else:
                await self._db(self._maybe_fail, m, what)

    def _error(self, m: Member, what: str) -> None:
        log.warning("%s (%s): %s", m.instance, m.state, what,
                    extra={"pool": m.pool, "member": m.instance, "operation": m.op_id})
        self.metrics.actions.labels(m.pool, str(m.state), "error").inc()
        self.store.add_event(m.pool, "error", f"{m.instance} ({m.state}): {what}", self.clock(), member=m.instance)

    def _maybe_fail(self, m: Member, what: str) -> None:
        if MemberState(m.state) in EARLY:
            self.store.transition(m.id, MemberState.FAILED, self.clock(), error=what)

    def _breaker_config(self, pool: str) -> LaunchBreakerConfig:
        return self.breakers.get(pool) or LaunchBreakerConfig()

    def _launch_failed(self, m: Member, what: str, kind: str) -> None:
        """A launch that will never serve: counted by the pool's breaker, then the member fails.

        Counted first: the breaker counts each member once, so a crash between the two writes makes
        the next pass see the same failure again without counting it twice."""
        now = self.clock()
        state, opened = record_launch_failure(self.store, m.pool, self._breaker_config(m.pool), m.instance,
                                              what, now)
        self.breaker_metrics.failed_launches.labels(m.pool, kind).inc()
        if opened:
            self.breaker_metrics.trips.labels(m.pool).inc()
            log.warning("pool %s: %s", m.pool, state.summary(now), extra={"pool": m.pool, "member": m.instance})
        self.breaker_metrics.export(state)
        self.store.transition(m.id, MemberState.FAILED, now, error=what)

    def _check_boot_timeout(self, m: Member, pool: PoolConfig, now: float) -> None:
        if now - m.state_since > pool.boot_timeout:
            self._launch_failed(m, f"not healthy after {format_duration(pool.boot_timeout)}", "boot_timeout")

    async def _step(self, m: Member, pool: PoolConfig, statuses: dict[IPv4Address, RouteStatus] | None) -> None:
        state = MemberState(m.state)
        now = self.clock()
        hops = statuses.get(pool.vip) if statuses is not None else None
        if state is MemberState.CREATING:
            breaker = await self._db(breaker_state, self.store, m.pool, now)
            if breaker.open:
                # Launches of this pool stop: the member fails without being launched (its delete
                # still removes anything an earlier, crashed attempt made).
                await self._db(self.store.transition, m.id, MemberState.FAILED, now,
                               error=f"not launched: {breaker.summary()}")
                return
            spec = InstanceSpec(m.pool, pool.vip, pool.instance)
            self.check()
            inst = await self.orchestrator.create(spec, m.instance)
            self.metrics.actions.labels(m.pool, "create", "ok").inc()
            # The template it was created with: the `instance:` options of this create call.
            await self._db(self.store.transition, m.id, MemberState.BOOTING, self.clock(),
                           detail=f"address {inst.address}", address=str(inst.address) if inst.address else None,
                           endpoints=dumps(dict(inst.endpoints)), template=pool.instance_template())
        elif state is MemberState.BOOTING:
            if await self.orchestrator.probe(instance_of(m)):
                waited = format_duration(now - m.state_since)
                await self._db(self.store.transition, m.id, MemberState.HEALTHY, now,
                               detail=f"HAProxy answers on the VIP after {waited}")
                await self._db(self.store.transition, m.id, _after_healthy(m), self.clock())
                self.breaker_metrics.export(await self._db(record_launch_success, self.store, m.pool, m.instance, now))
            else:
                await self._db(self._check_boot_timeout, m, pool, now)
        elif state is MemberState.HEALTHY:
            await self._db(self.store.transition, m.id, _after_healthy(m), now)
        elif state is MemberState.ANNOUNCING:
            if hops is not None and m.address and IPv4Address(m.address) in hops.addresses():
                self.metrics.actions.labels(m.pool, "announce", "ok").inc()
                await self._db(self.store.transition, m.id, MemberState.IN_SERVICE, now,
                               detail="next hop in the router's FIB")
        elif state is MemberState.DRAINING:
            await self._drain(m, pool, hops, now)
        elif state is MemberState.WITHDRAWN:
            if hops is not None and (not m.address or IPv4Address(m.address) not in hops.addresses()):
                self.metrics.actions.labels(m.pool, "withdraw", "ok").inc()
                await self._db(self.store.transition, m.id, MemberState.DELETING, now,
                               detail="next hop gone from the FIB")
        elif state is MemberState.FAILED:
            if m.replaced_by and now - m.state_since < pool.health.keep_failed:
                return      # a dead member kept for forensics: never routed, deleted later
            if hops is not None and (not m.address or IPv4Address(m.address) not in hops.addresses()):
                await self._db(self.store.transition, m.id, MemberState.DELETING, now,
                               detail="cleaning up a failed member")
        elif state is MemberState.DELETING:
            self.check()
            await self.orchestrator.delete(m.instance)
            self.metrics.actions.labels(m.pool, "delete", "ok").inc()
            await self._db(self.store.transition, m.id, MemberState.DELETED, self.clock())
            if self.on_deleted is not None:
                self.on_deleted(m)

    async def _drain(self, m: Member, pool: PoolConfig, hops: RouteStatus | None, now: float) -> None:
        endpoints = m.endpoint_map()
        if not await self._db(self.store.has_step, m.op_id, m.id, "drain_haproxy"):
            await self._db(self.store.add_step, m.op_id, m.id, "drain_haproxy", now,
                           "close keep-alive after each response")
            self.check()
            try:
                await self.drainer.drain(endpoints)
                self.metrics.actions.labels(m.pool, "drain", "ok").inc()
            except ActuatorError as exc:
                # WEIGHT: still drained by the router; only keep-alive clients lose their shortcut.
                # WITHDRAW: keep-alive clients still connected at the withdraw are reset.
                self.metrics.actions.labels(m.pool, "drain", "error").inc()
                await self._db(self.store.add_event, m.pool, "error", f"{m.instance}: drain request failed: {exc}",
                               now, member=m.instance)
        if hops is None:
            return      # the router could not be read: we cannot know whether flows still reach it
        if self.peers is not None:
            await self._drain_with_handoff(m, pool, hops, now)
            return
        if self.router.drain_mode is DrainMode.WITHDRAW:
            await self._drain_by_withdraw(m, pool, now)
            return
        hop = next((h for h in hops.hops if m.address and h.address == IPv4Address(m.address)), None)
        if hop is not None and hop.state is not HopState.DRAINING:
            return      # the weight change is not in the router yet
        # What the router still sends it: flows pinned by conntrack (exact), else resilient buckets.
        pinned = hop is not None and hop.flows is not None
        left = (hop.flows if pinned else hop.buckets) if hop is not None else 0
        unit = "pinned flows" if pinned else "buckets"
        conns = await self._connections(m)
        await self._end_drain(m, pool, now, (left or 0) == 0 and (conns or 0) == 0,
                              f"{_count(conns)} connections and {left} {unit}")

    async def _connections(self, m: Member) -> int | None:
        """HAProxy's open connections on the member (None: it could not be asked)."""
        try:
            return await self.drainer.connections(m.endpoint_map())
        except ActuatorError:
            return None

    async def _end_drain(self, m: Member, pool: PoolConfig, now: float, drained: bool, left: str) -> None:
        """Withdrawn once `drained`, or at `drain_timeout` with what was `left` in the detail."""
        elapsed = now - m.state_since
        if not drained and elapsed < pool.drain_timeout:
            return
        self.metrics.drain_seconds.labels(m.pool).observe(elapsed)
        detail = (f"drained in {format_duration(elapsed)}" if drained else
                  f"drain deadline {format_duration(pool.drain_timeout)} reached with {left} left")
        await self._db(self.store.transition, m.id, MemberState.WITHDRAWN, now, detail=detail)

    async def _drain_by_withdraw(self, m: Member, pool: PoolConfig, now: float) -> None:
        """A router without weights: the member keeps getting new flows until its route goes, so
        waiting for its connections to reach 0 may never end. HAProxy was asked to close keep-alive
        connections; after `drain_grace` (or as soon as none is left) the member is withdrawn, and
        whatever it still carries is reset."""
        conns = await self._connections(m)
        elapsed = now - m.state_since
        if conns == 0:
            detail = f"no connections left after {format_duration(elapsed)}: withdrawn"
        elif elapsed >= pool.drain_grace and await self._db(self._asked_before, m, now - pool.drain_grace):
            detail = f"grace {format_duration(pool.drain_grace)} over: {self._cut(conns)}"
        elif elapsed >= pool.drain_timeout:
            detail = f"drain deadline {format_duration(pool.drain_timeout)} reached: {self._cut(conns)}"
        else:
            return
        self.metrics.drain_seconds.labels(m.pool).observe(elapsed)
        await self._db(self.store.transition, m.id, MemberState.WITHDRAWN, now, detail=detail)

    async def _drain_with_handoff(self, m: Member, pool: PoolConfig, hops: RouteStatus, now: float) -> None:
        """Stray handoff: the member was withdrawn at once and its flows reach it through its peers;
        done when its HAProxy and its kernel (data still in flight) hold no connection, or at
        `drain_timeout`."""
        assert self.peers is not None
        if m.address and IPv4Address(m.address) in hops.addresses():
            return      # the withdraw is not in the router yet
        conns = await self._connections(m)
        try:
            flows = await self.peers.open_flows(m.instance)
        except ActuatorError:
            flows = None
        await self._end_drain(m, pool, now, (conns or 0) == 0 and (flows or 0) == 0,
                              f"{_count(conns)} connections and {_count(flows)} open flows")

    def _asked_before(self, m: Member, t: float) -> bool:
        """Whether HAProxy was asked to drain at `t` or earlier. Normally it was asked in the pass
        that found the member draining; after a scaler outage it may have been asked much later,
        and its clients get their grace from then."""
        return any(s.at <= t for s in self.store.steps(m.op_id)
                   if s.member_id == m.id and s.name == "drain_haproxy")

    @staticmethod
    def _cut(conns: int | None) -> str:
        if conns is None:
            return "withdrawn; HAProxy's open connections unknown (any still open are reset by the withdraw)"
        return (f"withdrawn with {conns} connection{'' if conns == 1 else 's'} still open "
                f"(the withdraw resets them)")

    async def _rebalance(self, members: list[Member]) -> None:
        """After a member comes into service, every member in service closes a bounded share of its
        keep-alive connections for `rebalance.window` (PoolConfig.rebalance), then none."""
        now = self.clock()
        # Grouped in one pass over the fleet: a filter per pool read pools x members ORM attributes
        # (4 million per pass at 1,000 pools x 4 members).
        serving_of: dict[str, list[Member]] = {}
        for m in members:
            if m.state == MemberState.IN_SERVICE and m.health != Health.DOWN:
                serving_of.setdefault(m.pool, []).append(m)
        wanted: dict[str, tuple[Member, int]] = {}
        for name, pool in self.pools.items():
            serving = serving_of.get(name)
            if not serving:
                continue
            newest = max(m.state_since for m in serving)
            # Every member recycles, the new one too: each closed keep-alive connection is placed
            # again uniformly by the router, so the connections converge to an even spread. (Only
            # the old members recycling would make the new one absorb every keep-alive client.)
            # Only after a member joined members that already served (not when a pool starts).
            joined = any(m.state_since < newest - 1.0 for m in serving)
            busy = pool.rebalance.recycle_percent > 0 and now < newest + pool.rebalance.window and joined
            for m in serving:
                wanted[m.id] = (m, pool.rebalance.recycle_percent if busy else 0)
        changes = [(m, pct) for m, pct in wanted.values() if self._recycle.get(m.id) != pct]
        if not changes:
            return
        self.check()
        results = await asyncio.gather(*(self.drainer.recycle(m.endpoint_map(), pct) for m, pct in changes),
                                       return_exceptions=True)
        for (m, pct), res in zip(changes, results, strict=True):
            if isinstance(res, BaseException):
                if not isinstance(res, ActuatorError):
                    raise res
                log.warning("%s: setting recycle %d%% failed: %s", m.instance, pct, res,
                            extra={"pool": m.pool, "member": m.instance})
                self._recycle.pop(m.id, None)       # tried again at the next pass
                continue
            before = self._recycle.get(m.id)
            self._recycle[m.id] = pct
            if pct or before:
                what = " (keep-alive clients spread again, over the new member too)" if pct else " no more"
                await self._db(self.store.add_event, m.pool, "rebalance",
                               f"{m.instance}: {pct}% of responses close their connection{what}", now,
                               member=m.instance)

    def _advance_rollouts(self) -> bool:
        """One step of every running rollout (scaler.rollout), in the store's thread."""
        now = self.clock()
        changed = False
        for name, op in self.store.running_operations().items():
            if name in self.pools and op.kind == OpKind.ROLLOUT:
                changed |= rollout.advance(self.store, op, self.pools[name], now)
        return changed

    def _finish_operations(self) -> None:
        now = self.clock()
        for name, op in self.store.running_standby().items():
            if name not in self.pools:
                continue
            # Done once none of its members is still on its way (taken ones have left the operation).
            mine = self.store.members_of(op.id)
            if not any(MemberState(m.state) in EARLY for m in mine):
                errors = [f"{m.instance}: {m.error}" for m in mine if m.error]
                self.store.finish_operation(op.id, OpState.FAILED if errors else OpState.DONE, now,
                                            "; ".join(errors) or None)
        for name, op in self.store.running_operations().items():
            if name not in self.pools or op.kind == OpKind.ROLLOUT:
                continue        # a rollout is finished by scaler.rollout.advance
            mine = self.store.members_of(op.id)
            states = {MemberState(m.state) for m in mine}
            if op.kind == OpKind.SCALE_OUT:
                if states <= {MemberState.IN_SERVICE, MemberState.DELETED, MemberState.DRAINING}:
                    errors = [f"{m.instance}: {m.error}" for m in mine if m.error]
                    if errors:
                        self.store.finish_operation(op.id, OpState.FAILED, now, "; ".join(errors))
                    else:
                        self.store.finish_operation(op.id, OpState.DONE, now)
            elif states <= {MemberState.DELETED}:
                self.store.finish_operation(op.id, OpState.DONE, now)

    def _export_sizes(self, members: list[Member]) -> None:
        by_pool: dict[str, dict[str, int]] = {name: dict.fromkeys(COUNTED, 0) for name in self.pools}
        for m in members:
            if m.pool in by_pool:
                by_pool[m.pool][m.state] += 1
        # Only what changed since the last pass: a label lookup per pool and state on every pass
        # was 9,000 lookups a second at 1,000 pools.
        for name, by_state in by_pool.items():
            if self._exported.get(name) != by_state:
                for state, n in by_state.items():
                    self.metrics.members.labels(name, state).set(n)
                self._exported[name] = by_state


    def _export_breakers(self) -> None:
        now = self.clock()
        for name, state in breaker_states(self.store, list(self.pools), now).items():
            self.breaker_metrics.export(state)
            if state.half_open:
                note_cool_off(self.store, name, now)


__all__ = ["EARLY", "EXISTING", "RESTING", "Lifecycle", "desired_routes", "instance_of"]
