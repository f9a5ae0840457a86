"""The lifecycle: turns persisted intent (members in states) into safe side effects, one step at a time.

It is level-triggered: every pass reads the store, computes the router's desired state from the
members' states, applies it in one batch, then moves each member one step along

    creating → booting → healthy → announcing → in_service → draining → withdrawn → deleting → deleted
                                                           (any early step) → failed → deleting → deleted

Each transition is written to the store before the side effect that follows it, and every side
effect is idempotent, so a pass interrupted anywhere (crash, SIGKILL) is simply resumed by the next
pass of a restarted scaler. The route of a member exists only in states announcing, in_service and
draining, so no state can leave a route to a deleted instance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol

from actuators.errors import ActuatorError
from actuators.orchestrator import Instance, InstanceSpec, Orchestrator
from actuators.router import ApplyResult, DesiredRoutes, HopState, NextHop, Router, RouteStatus
from policies import format_duration
from scaler.config import PoolConfig
from scaler.metrics import Metrics
from scaler.store import Member, MemberState, OpKind, OpState, Store, dumps

log = logging.getLogger("scaler.lifecycle")

ROUTED = {MemberState.ANNOUNCING: HopState.ACTIVE, MemberState.IN_SERVICE: HopState.ACTIVE,
          MemberState.DRAINING: HopState.DRAINING}


class Drainer(Protocol):
    """Asks an instance's HAProxy to let its clients go, and counts who is left."""

    async def drain(self, endpoints: Mapping[str, str]) -> None:
        """Close client keep-alive connections after their current response; keep accepting."""

    async def connections(self, endpoints: Mapping[str, str]) -> int | None:
        """Client connections still open (None: cannot tell, e.g. HAProxy is gone)."""


class NoDrainer:
    """For instances without a reachable runtime API: drain relies on the router alone."""

    async def drain(self, endpoints: Mapping[str, str]) -> None:
        return None

    async def connections(self, endpoints: Mapping[str, str]) -> int | None:
        return None


def instance_of(m: Member) -> Instance:
    return Instance(m.instance, m.pool, IPv4Address(m.address) if m.address else None, "unknown",
                    m.endpoint_map())


def desired_routes(pools: Mapping[str, PoolConfig], members: list[Member]) -> dict[IPv4Address, frozenset[NextHop]]:
    """The router's desired state: every configured VIP, with the next hops of its routed members."""
    out: dict[IPv4Address, set[NextHop]] = {p.vip: set() for p in pools.values()}
    for m in members:
        state = ROUTED.get(MemberState(m.state))
        if state is not None and m.address and m.pool in pools:
            out[pools[m.pool].vip].add(NextHop(IPv4Address(m.address), state))
    return {vip: frozenset(hops) for vip, hops in out.items()}


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

    def __post_init__(self) -> None:
        self._lock = asyncio.Lock()
        self.last_apply: ApplyResult | None = None

    async def reconcile(self) -> None:
        """One pass. Passes never overlap: a second caller waits for the running one."""
        async with self._lock:
            await self._pass()

    async def _pass(self) -> None:
        members = self.store.members()
        # A step that changes what must be routed (healthy → announcing, in_service → draining,
        # draining → withdrawn) is followed at once by another round, so a healthy member is in the
        # FIB within the same pass instead of one reconcile interval later. Bounded: at most 3 rounds.
        desired = desired_routes(self.pools, members)
        for _ in range(3):
            statuses = await self._apply_routes(desired)
            await asyncio.gather(*(self._advance(m, statuses) for m in members))
            members = self.store.members()
            now_desired = desired_routes(self.pools, members)
            if now_desired == desired:
                break
            desired = now_desired
        self._finish_operations()
        self._export_sizes(members)

    async def _apply_routes(self, desired: DesiredRoutes) -> dict[IPv4Address, RouteStatus] | None:
        try:
            t0 = time.perf_counter()
            result = await self.router.apply(desired)
            self.metrics.router_apply.observe(time.perf_counter() - t0)
            self.last_apply = result
            statuses = {vip: await self.router.status(vip) for vip in desired}
        except ActuatorError as exc:
            self.metrics.router_errors.inc()
            log.error("router: %s", exc)
            for pool in self.pools:
                self.store.add_event(pool, "error", f"router: {exc}", self.clock())
            return None
        vip_pool = {p.vip: name for name, p in self.pools.items()}
        now = self.clock()
        for change, pairs in (("add", result.added), ("remove", result.removed),
                              ("reweight", result.reweighted)):
            for vip, hop in pairs:
                self.metrics.router_changes.labels(change).inc()
                weight = ""
                if change == "reweight":
                    weight = " → " + next((str(h.state) for h in desired[vip] if h.address == hop), "?")
                self.store.add_event(vip_pool.get(vip, "?"), "route",
                                     f"{vip}: {change} next hop {hop}{weight} "
                                     f"(batch of {result.messages} messages, {result.elapsed_s * 1000:.1f} ms)",
                                     now)
        return statuses

    async def _advance(self, m: Member, statuses: dict[IPv4Address, RouteStatus] | None) -> None:
        pool = self.pools.get(m.pool)
        if pool is None:
            return      # a pool removed from the config: its members are left for an operator
        try:
            await asyncio.wait_for(self._step(m, pool, statuses), self.action_timeout_s)
        except (ActuatorError, TimeoutError) as exc:
            what = str(exc) or f"no result after {self.action_timeout_s:.0f}s"
            log.warning("%s (%s): %s", m.instance, m.state, what)
            self.metrics.actions.labels(m.pool, str(m.state), "error").inc()
            self.store.add_event(m.pool, "error", f"{m.instance} ({m.state}): {what}", self.clock(),
                                 member=m.instance)
            self._maybe_fail(m, what)

    def _maybe_fail(self, m: Member, what: str) -> None:
        state = MemberState(m.state)
        if state in (MemberState.CREATING, MemberState.BOOTING, MemberState.HEALTHY):
            self.store.transition(m.id, MemberState.FAILED, self.clock(), error=what)

    async def _step(self, m: Member, pool: PoolConfig, statuses: dict[IPv4Address, RouteStatus] | None) -> None:
        state = MemberState(m.state)
        now = self.clock()
        hops = statuses.get(pool.vip) if statuses is not None else None
        if state is MemberState.CREATING:
            spec = InstanceSpec(m.pool, pool.vip, pool.instance)
            inst = await self.orchestrator.create(spec, m.instance)
            self.metrics.actions.labels(m.pool, "create", "ok").inc()
            self.store.transition(m.id, MemberState.BOOTING, self.clock(), detail=f"address {inst.address}",
                                  address=str(inst.address) if inst.address else None,
                                  endpoints=dumps(dict(inst.endpoints)))
        elif state is MemberState.BOOTING:
            if await self.orchestrator.probe(instance_of(m)):
                waited = format_duration(now - m.state_since)
                self.store.transition(m.id, MemberState.HEALTHY, now, detail=f"HAProxy answers on the VIP "
                                      f"after {waited}")
                self.store.transition(m.id, MemberState.ANNOUNCING, self.clock())
            elif now - m.state_since > pool.boot_timeout:
                self.store.transition(m.id, MemberState.FAILED, now,
                                      error=f"not healthy after {format_duration(pool.boot_timeout)}")
        elif state is MemberState.HEALTHY:
            self.store.transition(m.id, MemberState.ANNOUNCING, now)
        elif state is MemberState.ANNOUNCING:
            if hops is not None and m.address and IPv4Address(m.address) in hops.addresses():
                self.metrics.actions.labels(m.pool, "announce", "ok").inc()
                self.store.transition(m.id, MemberState.IN_SERVICE, now, detail="next hop in the router's FIB")
        elif state is MemberState.DRAINING:
            await self._drain(m, pool, hops, now)
        elif state is MemberState.WITHDRAWN:
            if hops is not None and (not m.address or IPv4Address(m.address) not in hops.addresses()):
                self.metrics.actions.labels(m.pool, "withdraw", "ok").inc()
                self.store.transition(m.id, MemberState.DELETING, now, detail="next hop gone from the FIB")
        elif state is MemberState.FAILED:
            if hops is not None and (not m.address or IPv4Address(m.address) not in hops.addresses()):
                self.store.transition(m.id, MemberState.DELETING, now, detail="cleaning up a failed member")
        elif state is MemberState.DELETING:
            await self.orchestrator.delete(m.instance)
            self.metrics.actions.labels(m.pool, "delete", "ok").inc()
            self.store.transition(m.id, MemberState.DELETED, self.clock())
            if self.on_deleted is not None:
                self.on_deleted(m)

    async def _drain(self, m: Member, pool: PoolConfig, hops: RouteStatus | None, now: float) -> None:
        endpoints = m.endpoint_map()
        if not self.store.has_step(m.op_id, m.id, "drain_haproxy"):
            self.store.add_step(m.op_id, m.id, "drain_haproxy", now, "close keep-alive after each response")
            try:
                await self.drainer.drain(endpoints)
                self.metrics.actions.labels(m.pool, "drain", "ok").inc()
            except ActuatorError as exc:
                # Still drained by the router; only keep-alive clients lose their shortcut.
                self.metrics.actions.labels(m.pool, "drain", "error").inc()
                self.store.add_event(m.pool, "error", f"{m.instance}: drain request failed: {exc}", now,
                                     member=m.instance)
        if hops is None:
            return      # the router could not be read: we cannot know whether flows still reach it
        hop = next((h for h in hops.hops if m.address and h.address == IPv4Address(m.address)), None)
        if hop is not None and hop.state is not HopState.DRAINING:
            return      # the weight change is not in the router yet
        buckets = hop.buckets if hop is not None else 0
        try:
            conns = await self.drainer.connections(endpoints)
        except ActuatorError:
            conns = None
        elapsed = now - m.state_since
        drained = (buckets or 0) == 0 and (conns or 0) == 0
        if drained or elapsed >= pool.drain_timeout:
            self.metrics.drain_seconds.labels(m.pool).observe(elapsed)
            detail = (f"drained in {format_duration(elapsed)}" if drained else
                      f"drain deadline {format_duration(pool.drain_timeout)} reached with "
                      f"{conns if conns is not None else '?'} connections and {buckets} buckets left")
            self.store.transition(m.id, MemberState.WITHDRAWN, now, detail=detail)

    def _finish_operations(self) -> None:
        now = self.clock()
        for name in self.pools:
            op = self.store.running_operation(name)
            if op is None:
                continue
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
        by_pool: dict[str, dict[str, int]] = {name: {str(s): 0 for s in MemberState} for name in self.pools}
        for m in members:
            if m.pool in by_pool:
                by_pool[m.pool][m.state] += 1
        for name, by_state in by_pool.items():
            for state, n in by_state.items():
                if state != MemberState.DELETED:
                    self.metrics.members.labels(name, state).set(n)


__all__ = ["Drainer", "Lifecycle", "NoDrainer", "desired_routes", "instance_of"]
