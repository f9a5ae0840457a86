"""The `kernel` router driver: each VIP is a /32 route to a Linux resilient nexthop group.

It programs the router's kernel over rtnetlink (`actuators.kernel.netlink`): one nexthop object per member
(id = the member's IPv4 address as u32), one resilient group per VIP (id = the VIP as u32) and one
route `VIP/32 nhid GROUP`, all marked with our rtnetlink protocol number. Ids derived from addresses
make the driver stateless: after a restart it finds its objects again by reading the kernel.
It never touches an object of another protocol, never recreates an existing group (a recreate
would reshuffle every bucket and break established flows; a replace keeps them), and never
changes anything for a VIP absent from the desired state.

A group with a single member is given a *shadow*: a second nexthop object to the same gateway, at
the lowest weight, with an id in 0.0.0.0/8 (never a unicast address, so never a member's or a VIP's
id). Measured on kernel 6.18: a route whose group has one member takes the single-path shortcut
(`nexthop_num_path() == 1`), so the resilient buckets are never marked busy; when a second member
is added every bucket looks idle, half of them move at once, and the established flows in them are
reset. With the shadow the group always has two members, buckets are marked busy by real traffic,
and only idle buckets move. The shadow forwards to the same LB, so whatever buckets it gets are
harmless; it is removed as soon as the group has two real members, and never shown in `status()`.

Blocking I/O: a netlink exchange is ~1 ms, but a batch of thousands of changes or a large dump
takes tens of milliseconds, so every call runs in a worker thread (`asyncio.to_thread`) behind an
`asyncio.Lock` — one request/ACK stream on the socket at a time, and the event loop stays free.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actuators.errors import RouterConflict, RouterError
from actuators.kernel import netlink as nl
from actuators.router import ApplyResult, DesiredRoutes, DrainMode, HopState, HopStatus, NextHop, Router, RouteStatus

log = logging.getLogger(__name__)

Pair = tuple[IPv4Address, IPv4Address]
A = TypeVar("A")
T = TypeVar("T")


class KernelRouterConfig(BaseModel):
    """How the driver programs the router. Timers are seconds, sent in USER_HZ (1/100 s)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    netns: str | None = None                       # namespace of the router; None = this process's
    buckets: int = Field(default=128, ge=1, le=0xFFFF)     # fixed when the group is created
    # Up to an hour: the kernel silently clamps much larger values, which would never compare equal.
    idle_timer_s: float = Field(default=30, ge=0, le=3600)
    unbalanced_timer_s: float = Field(default=0, ge=0, le=3600)
    # 0..4 are the kernel's own (unspec, redirect, kernel, boot, static): taking one of them would
    # make us the owner of routes an operator added by hand.
    protocol: int = Field(default=99, ge=5, le=255)
    table: int = Field(default=254, ge=1, le=0xFFFFFFFF)
    # Weights above 256 use the 16-bit `weight_high` byte: kernel 6.12 or later (older ones say EINVAL).
    active_weight: int = Field(default=255, ge=1, le=nl.MAX_WEIGHT)
    draining_weight: int = Field(default=1, ge=1, le=nl.MAX_WEIGHT)

    @model_validator(mode="after")
    def _draining_below_active(self) -> KernelRouterConfig:
        if self.draining_weight >= self.active_weight:
            raise ValueError(f"draining_weight ({self.draining_weight}) must be below active_weight "
                             f"({self.active_weight})")
        return self

    def weight(self, state: HopState) -> int:
        return self.active_weight if state is HopState.ACTIVE else self.draining_weight

    def state(self, weight: int) -> HopState:
        return HopState.DRAINING if weight <= self.draining_weight else HopState.ACTIVE


def _hz(seconds: float) -> int:
    return round(seconds * nl.USER_HZ)


def _same_timer(actual: int | None, wanted: int) -> bool:
    # The kernel keeps timers in jiffies: with HZ=250 an odd number of 1/100 s reads back one less,
    # and an exact comparison would replace the group on every apply().
    return actual is not None and abs(actual - wanted) <= 1


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the router holds: every nexthop object (any protocol) and our /32 routes in our table."""

    nexthops: Mapping[int, nl.Nexthop]
    routes: Mapping[IPv4Address, nl.Route]


@dataclass(slots=True)
class Plan:
    """The batch that turns the snapshot into the desired state, and what it changes."""

    requests: list[nl.Request] = field(default_factory=list)
    added: list[Pair] = field(default_factory=list)
    removed: list[Pair] = field(default_factory=list)
    reweighted: list[Pair] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


SHADOW_IDS = range(1, 1 << 24)      # 0.0.0.0/8: ids no address can have


def is_shadow(nexthop_id: int) -> bool:
    return nexthop_id in SHADOW_IDS


def _validate(desired: DesiredRoutes) -> None:
    """Reject desired states whose ids would collide, naming every problem at once."""
    problems: list[str] = []
    vip_ids = {int(v) for v in desired}
    for vip, hops in desired.items():
        if is_shadow(int(vip)) or int(vip) == 0:
            problems.append(f"VIP {vip}: addresses in 0.0.0.0/8 are not VIPs")
        seen: set[IPv4Address] = set()
        for hop in hops:
            if hop.address in seen:
                problems.append(f"VIP {vip}: next hop {hop.address} listed twice")
            seen.add(hop.address)
            if int(hop.address) in vip_ids:
                problems.append(f"VIP {vip}: next hop {hop.address} is also a VIP (their ids would collide)")
            if int(hop.address) == 0 or is_shadow(int(hop.address)):
                problems.append(f"VIP {vip}: next hop {hop.address} is in 0.0.0.0/8, not an address")
    if problems:
        raise RouterError("; ".join(problems))


def gateways_to_resolve(desired: DesiredRoutes, snap: Snapshot, protocol: int) -> list[IPv4Address]:
    """Member addresses whose nexthop object must be created (or repaired): their device is unknown."""
    out: set[IPv4Address] = set()
    for hops in desired.values():
        for hop in hops:
            nh = snap.nexthops.get(int(hop.address))
            if nh is None or (nh.protocol == protocol and not nh.is_group and nh.gateway != hop.address):
                out.add(hop.address)
    return sorted(out)


def plan(desired: DesiredRoutes, snap: Snapshot, cfg: KernelRouterConfig,
         oifs: Mapping[IPv4Address, int]) -> Plan:
    """The one batch for `desired`, in dependency order. Pure: reads only its arguments.

    Order: create missing nexthops → create or replace groups → add or repair routes → delete routes
    and groups of emptied VIPs → delete our nexthops that no group (ours or not) uses after the
    batch, including ones a failed earlier batch left behind. (The kernel would also delete a route
    pointing straight at such a nexthop; we never make one.) Raises RouterConflict before anything
    is sent if an id we need belongs to another protocol.
    """
    _validate(desired)
    p = Plan()
    new_nexthops: list[nl.Request] = []
    groups: list[nl.Request] = []
    routes: list[nl.Request] = []
    route_deletes: list[nl.Request] = []
    group_deletes: list[nl.Request] = []
    conflicts: list[str] = []
    # Members of every group after the batch, ours and others': a nexthop still in one stays.
    members_after = {gid: {m.id for m in nh.group} for gid, nh in snap.nexthops.items() if nh.is_group}
    created: set[int] = set()
    ours = cfg.protocol
    taken = set(snap.nexthops)
    free_shadow_ids = (i for i in SHADOW_IDS if i not in taken)
    idle, unbalanced = _hz(cfg.idle_timer_s), _hz(cfg.unbalanced_timer_s)

    for vip in sorted(desired):
        hops = sorted(desired[vip], key=lambda h: h.address)
        gid = int(vip)
        group = snap.nexthops.get(gid)
        route = snap.routes.get(vip)
        if group is not None and group.protocol != ours:
            if hops:
                conflicts.append(f"VIP {vip}: nexthop id {gid} exists with protocol {group.protocol}, "
                                 f"not ours ({ours})")
            group = None   # not ours: never modified, never deleted
        elif group is not None and not group.is_group:
            if hops:
                conflicts.append(f"VIP {vip}: our nexthop {gid} is a single nexthop, not a group")
            group = None
        elif group is not None and not group.is_resilient:
            raise RouterError(f"VIP {vip}: group {gid} is not resilient and the kernel cannot change a "
                              "group's type in place; delete it by hand")
        old = {m.id: m.weight for m in group.group} if group is not None else {}

        if not hops:
            if route is not None:
                route_deletes.append(nl.del_route(route).named(f"delete route {vip}/32 table {cfg.table}"))
            if group is not None:
                group_deletes.append(nl.del_nexthop(gid).named(f"delete group {gid} of VIP {vip}"))
                members_after.pop(gid, None)
                p.removed += [(vip, IPv4Address(m)) for m in sorted(old) if not is_shadow(m)]
            continue

        members: list[nl.GroupMember] = []
        for hop in hops:
            nid = int(hop.address)
            nh = snap.nexthops.get(nid)
            if nh is not None and nh.protocol != ours:
                conflicts.append(f"VIP {vip}: nexthop id {nid} ({hop.address}) exists with protocol "
                                 f"{nh.protocol}, not ours ({ours})")
                continue
            if nh is not None and nh.is_group:
                conflicts.append(f"VIP {vip}: nexthop id {nid} ({hop.address}) is a group, not a next hop")
                continue
            if (nh is None or nh.gateway != hop.address) and nid not in created:
                created.add(nid)
                oif = oifs[hop.address]
                obj = nl.Nexthop(nid, protocol=ours, gateway=hop.address, oif=oif)
                verb = "add" if nh is None else "replace"
                new_nexthops.append(nl.add_nexthop(obj, replace_existing=nh is not None)
                                    .named(f"{verb} nexthop {nid} via {hop.address} dev #{oif}"))
            members.append(nl.GroupMember(nid, cfg.weight(hop.state)))
        if conflicts:
            continue
        if len(members) == 1:
            members.append(_shadow_for(hops[0].address, vip, snap, ours, oifs, created, free_shadow_ids,
                                       new_nexthops, cfg.draining_weight))

        want = {m.id: m.weight for m in members}
        obj = nl.Nexthop(gid, protocol=ours, group=tuple(members), group_type=nl.NEXTHOP_GRP_TYPE_RES,
                         buckets=cfg.buckets, idle_timer=idle, unbalanced_timer=unbalanced)
        if group is None:
            groups.append(nl.add_nexthop(obj).named(f"add group {gid} of VIP {vip}"))
        else:
            if group.buckets is not None and group.buckets != cfg.buckets:
                p.warnings.append(f"VIP {vip}: group {gid} has {group.buckets} buckets, config says "
                                  f"{cfg.buckets}; the count is fixed at creation and is kept")
            timers_ok = _same_timer(group.idle_timer, idle) and _same_timer(group.unbalanced_timer, unbalanced)
            if want != old or not timers_ok:
                # Replace in place (never delete + add): buckets of unchanged members keep their
                # flows. The bucket count is left out: the kernel refuses any change of it.
                groups.append(nl.add_nexthop(obj, replace_existing=True)
                              .named(f"replace group {gid} of VIP {vip}"))
        real_want = {k for k in want if not is_shadow(k)}
        real_old = {k for k in old if not is_shadow(k)}
        p.added += [(vip, IPv4Address(m)) for m in sorted(real_want - real_old)]
        p.removed += [(vip, IPv4Address(m)) for m in sorted(real_old - real_want)]
        p.reweighted += [(vip, IPv4Address(m)) for m in sorted(real_want & real_old) if want[m] != old[m]]
        members_after[gid] = set(want)

        r = nl.Route(dst=vip, dst_len=32, table=cfg.table, protocol=ours, nh_id=gid)
        if route is None:
            # EXCL: a route of another protocol to the same /32 makes this fail (a conflict), never
            # silently replaced.
            routes.append(nl.add_route(r).named(f"add route {vip}/32 nhid {gid} table {cfg.table}"))
        elif route.nh_id != gid:
            routes.append(nl.add_route(r, replace_existing=True)
                          .named(f"replace route {vip}/32 nhid {gid} table {cfg.table}"))

    if conflicts:
        raise RouterConflict("; ".join(conflicts))

    used = set().union(*members_after.values()) if members_after else set()
    nexthop_deletes = [
        nl.del_nexthop(nid).named(f"delete nexthop {nid} ({IPv4Address(nid)})")
        for nid, nh in sorted(snap.nexthops.items())
        if nh.protocol == ours and not nh.is_group and nid not in used and nid not in created
    ]
    p.requests = new_nexthops + groups + routes + route_deletes + group_deletes + nexthop_deletes
    return p


def _shadow_for(gateway: IPv4Address, vip: IPv4Address, snap: Snapshot, ours: int,
                oifs: Mapping[IPv4Address, int], created: set[int], free_ids: Iterator[int],
                new_nexthops: list[nl.Request], weight: int) -> nl.GroupMember:
    """The shadow member of a single-member group (see module doc): reused if one exists."""
    for nid, nh in sorted(snap.nexthops.items()):
        if is_shadow(nid) and nh.protocol == ours and not nh.is_group and nh.gateway == gateway:
            return nl.GroupMember(nid, weight)
    member = snap.nexthops.get(int(gateway))
    oif = oifs.get(gateway) if member is None or member.oif is None else member.oif
    if oif is None:
        raise RouterError(f"VIP {vip}: no output interface known for {gateway}")
    nid = next(free_ids)
    created.add(nid)
    new_nexthops.append(nl.add_nexthop(nl.Nexthop(nid, protocol=ours, gateway=gateway, oif=oif))
                        .named(f"add shadow nexthop {nid} via {gateway} dev #{oif} for VIP {vip}"))
    return nl.GroupMember(nid, weight)


class KernelRouter(Router):
    """Router driver for Linux resilient nexthop groups in one network namespace (see module doc)."""

    # A draining member keeps its busy buckets at `draining_weight` and gets (almost) no new flows.
    drain_mode = DrainMode.WEIGHT

    def __init__(self, config: KernelRouterConfig, *, client: nl.NetlinkClient | None = None) -> None:
        self.config = config
        self._client = client if client is not None else nl.NetlinkClient(config.netns)
        self._lock = asyncio.Lock()
        self._closed = False

    async def apply(self, desired: DesiredRoutes) -> ApplyResult:
        return await self._run(self._apply_sync, dict(desired))

    async def replay(self, desired: DesiredRoutes) -> ApplyResult:
        # The kernel is read before every apply, so a replay is an apply of everything: whatever a
        # router restart or an `ip route flush` removed is recreated, in one batch.
        return await self.apply(desired)

    async def status(self, vip: IPv4Address) -> RouteStatus:
        return await self._run(self._status_sync, vip)

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            self._client.close()

    async def _run(self, fn: Callable[[A], T], arg: A) -> T:
        async with self._lock:
            if self._closed:
                raise RouterError("kernel router is closed")
            return await asyncio.to_thread(fn, arg)

    # -- blocking parts, run in a worker thread --

    def snapshot(self) -> Snapshot:
        cfg = self.config
        nexthops = {nh.id: nh for nh in self._client.nexthops()}
        routes = {
            r.dst: r for r in self._client.routes(table=cfg.table, protocol=cfg.protocol)
            if isinstance(r.dst, IPv4Address) and r.dst_len == 32 and r.table == cfg.table
        }
        return Snapshot(nexthops, routes)

    def resolve_gateways(self, addresses: Sequence[IPv4Address]) -> dict[IPv4Address, int]:
        """The output interface of each member address: it must be on a network connected to the router."""
        out: dict[IPv4Address, int] = {}
        problems: list[str] = []
        for addr, found in zip(addresses, self._client.lookup(addresses), strict=True):
            if isinstance(found, nl.Reply):
                problems.append(f"next hop {addr}: no route: {found.describe()}")
            elif found.type != nl.RTN_UNICAST:
                problems.append(f"next hop {addr} is a local or unroutable address (route type {found.type})")
            elif found.gateway is not None:
                problems.append(f"next hop {addr} is not on a network connected to the router "
                                f"(reached via {found.gateway})")
            elif found.oif is None:
                problems.append(f"next hop {addr}: route lookup gave no output interface")
            else:
                out[addr] = found.oif
        if problems:
            raise RouterError("; ".join(problems))
        return out

    def _apply_sync(self, desired: dict[IPv4Address, frozenset[NextHop]]) -> ApplyResult:
        start = time.perf_counter()
        _validate(desired)
        snap = self.snapshot()
        oifs = self.resolve_gateways(gateways_to_resolve(desired, snap, self.config.protocol))
        p = plan(desired, snap, self.config, oifs)
        for warning in p.warnings:
            log.warning("%s", warning)
        replies = self._client.batch(p.requests)
        failures = [r for r in replies if not r.ok]
        if failures:
            err = nl.BatchError(failures, len(replies))
            # EEXIST on a create means an object of someone else took the id or the /32 meanwhile
            # (a foreign route to the VIP is invisible to our protocol-filtered dump).
            if any(f.error == errno.EEXIST and f.request.flags & nl.NLM_F_EXCL for f in failures):
                raise RouterConflict(str(err)) from err
            raise err
        return ApplyResult(
            added=tuple(p.added), removed=tuple(p.removed), reweighted=tuple(p.reweighted),
            messages=len(p.requests), elapsed_s=time.perf_counter() - start,
        )

    def _status_sync(self, vip: IPv4Address) -> RouteStatus:
        cfg = self.config
        route = next((r for r in self._client.routes(table=cfg.table, protocol=cfg.protocol)
                      if r.dst == vip and r.dst_len == 32), None)
        if route is None or route.nh_id is None:
            return RouteStatus(vip)
        group = self._client.nexthop(route.nh_id)
        if group is None or not group.is_group:
            return RouteStatus(vip)
        counts: dict[int, int] | None = None
        if group.is_resilient:
            counts = {}
            # A shadow's buckets forward to its member's gateway: count them as the member's.
            alias = {m.id: int(nh.gateway) for m in group.group if is_shadow(m.id)
                     and (nh := self._client.nexthop(m.id)) is not None and nh.gateway is not None}
            for b in self._client.buckets(group.id):
                owner = alias.get(b.nh_id, b.nh_id)
                counts[owner] = counts.get(owner, 0) + 1
        return RouteStatus(vip, tuple(
            HopStatus(IPv4Address(m.id), cfg.state(m.weight), None if counts is None else counts.get(m.id, 0))
            for m in group.group if not is_shadow(m.id)
        ))
