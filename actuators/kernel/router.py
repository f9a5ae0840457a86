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
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actuators.errors import RouterConflict, RouterError
from actuators.kernel import netlink as nl
from actuators.kernel import pinning
from actuators.router import ApplyResult, DesiredRoutes, DrainMode, HopState, HopStatus, NextHop, Router, RouteStatus

log = logging.getLogger(__name__)

Pair = tuple[IPv4Address, IPv4Address]
A = TypeVar("A")
T = TypeVar("T")


class KernelRouterConfig(BaseModel):
    """How the driver programs the router. Timers are seconds, sent in USER_HZ (1/100 s).

    `mode: conntrack` (the default): a plain group places new flows, conntrack pins established ones
    to their member (`actuators.kernel.pinning`): a new member gets its share of new flows at once and
    a leaving one is drained by an exact count. `mode: resilient`: a resilient group whose buckets
    move only after `idle_timer_s` of silence — no state on the router, but a new member fills slowly
    (about exp(-R·T/B) of the buckets are free to move), and `idle_timer_s` must exceed the longest
    silence HAProxy allows a live flow, or a silent flow can be moved under its client.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    netns: str | None = None                       # namespace of the router; None = this process's
    mode: Literal["conntrack", "resilient"] = "conntrack"
    # conntrack mode: the pinning rules' priority (before the main table's 32766) and our nft table.
    pin_priority: int = Field(default=1000, ge=1, le=32765)
    nft_table: str = Field(default="scaler_pin", pattern=r"^[a-z][a-z0-9_]{0,30}$")
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

    def unsafe_for(self, silence_s: float) -> str | None:
        """Why this config can move a live flow whose client is silent for `silence_s` (the longest
        silence the pools' HAProxy allows), or None. Only resilient mode moves idle flows."""
        if self.mode == "resilient" and self.idle_timer_s <= silence_s:
            return (f"idle_timer_s ({self.idle_timer_s:g}) must be longer than the longest silence a live "
                    f"flow may have ({silence_s:g}s: pools.*.max_client_silence), or a silent client's flow "
                    f"can be moved to another LB, which resets it; use e.g. {silence_s * 1.25:g}, or mode: "
                    f"conntrack")
        return None

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
    """What the router holds: every nexthop object (any protocol), our /32 routes in our table, and
    (conntrack mode) our pinning rules by fwmark and our routes in the members' own tables."""

    nexthops: Mapping[int, nl.Nexthop]
    routes: Mapping[IPv4Address, nl.Route]
    rules: Mapping[int, nl.Rule] = field(default_factory=dict)
    pin_routes: Mapping[tuple[int, IPv4Address], nl.Route] = field(default_factory=dict)

    def pinned(self, vip: IPv4Address) -> set[IPv4Address]:
        """Members whose own table routes `vip` (conntrack mode): in the group or draining."""
        return {IPv4Address(table) for table, v in self.pin_routes if v == vip and table in self.rules}


@dataclass(slots=True)
class Plan:
    """The batch that turns the snapshot into the desired state, and what it changes."""

    requests: list[nl.Request] = field(default_factory=list)
    added: list[Pair] = field(default_factory=list)
    removed: list[Pair] = field(default_factory=list)
    reweighted: list[Pair] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # conntrack mode: what the nftables table must map during the batch (old and new members, so
    # a new member's first flows are marked) and after it.
    pin_vips: set[IPv4Address] = field(default_factory=set)
    pins_during: set[IPv4Address] = field(default_factory=set)
    pins_after: set[IPv4Address] = field(default_factory=set)


# conntrack mode: how often status() reads the whole conntrack table when nothing drains (to spot
# asymmetric routing and a filling table); the share of unreplied flows that means "asymmetric".
USAGE_EVERY_S = 60.0
ASYMMETRY_MIN_FLOWS = 20
ASYMMETRY_SHARE = 0.5
CONNTRACK_WARN = 0.8

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
    conntrack = cfg.mode == "conntrack"
    pin_adds: list[nl.Request] = []
    pin_deletes: list[nl.Request] = []
    pin_routes_after = dict(snap.pin_routes)
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
        elif group is not None and group.is_resilient == conntrack:
            kind = "resilient" if group.is_resilient else "a plain (hash-threshold) group"
            raise RouterError(f"VIP {vip}: group {gid} is {kind} but the driver's mode is {cfg.mode}, and the "
                              f"kernel cannot change a group's type in place: set mode back, or remove the "
                              f"route and the group by hand (ip route del {vip}/32 table {cfg.table}; ip "
                              f"nexthop del id {gid}) for the next apply to recreate them — the flows "
                              f"through it are reset once")
        old = {m.id: m.weight for m in group.group} if group is not None else {}
        pinned_old = snap.pinned(vip) if conntrack else set()

        if conntrack:
            wanted = {h.address for h in hops}
            for member in sorted(pinned_old - wanted):
                key = (pinning.mark_of(member), vip)
                pin_deletes.append(nl.del_route(snap.pin_routes[key])
                                   .named(f"delete pinned route {vip}/32 table {key[0]} ({member})"))
                pin_routes_after.pop(key)
            p.removed += [(vip, m) for m in sorted(pinned_old - wanted) if int(m) not in old]

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
            if conntrack:
                mark = pinning.mark_of(hop.address)
                pin = nl.Route(dst=vip, dst_len=32, table=mark, protocol=ours, nh_id=nid)
                have = snap.pin_routes.get((mark, vip))
                if have is None or have.nh_id != nid:
                    pin_adds.append(nl.add_route(pin, replace_existing=have is not None)
                                    .named(f"pin route {vip}/32 nhid {nid} table {mark} ({hop.address})"))
                pin_routes_after[(mark, vip)] = pin
        if conflicts:
            continue
        if conntrack:
            # New flows go to the active members only (all of them if none is active: a VIP keeps a
            # route); draining ones keep their pinned flows through their own tables.
            active = [m for m, h in zip(members, hops, strict=True) if h.state is HopState.ACTIVE]
            members = [nl.GroupMember(m.id, 1) for m in (active or members)]
        elif len(members) == 1:
            members.append(_shadow_for(hops[0].address, vip, snap, ours, oifs, created, free_shadow_ids,
                                       new_nexthops, cfg.draining_weight))

        want = {m.id: m.weight for m in members}
        if conntrack:
            obj = nl.Nexthop(gid, protocol=ours, group=tuple(members), group_type=nl.NEXTHOP_GRP_TYPE_MPATH)
        else:
            obj = nl.Nexthop(gid, protocol=ours, group=tuple(members), group_type=nl.NEXTHOP_GRP_TYPE_RES,
                             buckets=cfg.buckets, idle_timer=idle, unbalanced_timer=unbalanced)
        if group is None:
            groups.append(nl.add_nexthop(obj).named(f"add group {gid} of VIP {vip}"))
        else:
            if group.buckets is not None and group.buckets != cfg.buckets:
                p.warnings.append(f"VIP {vip}: group {gid} has {group.buckets} buckets, config says "
                                  f"{cfg.buckets}; the count is fixed at creation and is kept")
            timers_ok = conntrack or (_same_timer(group.idle_timer, idle)
                                      and _same_timer(group.unbalanced_timer, unbalanced))
            if want != old or not timers_ok:
                # Replace in place (never delete + add): buckets of unchanged members keep their
                # flows. The bucket count is left out: the kernel refuses any change of it.
                groups.append(nl.add_nexthop(obj, replace_existing=True)
                              .named(f"replace group {gid} of VIP {vip}"))
        if conntrack:
            # A member's state is "in the group" (active) or "pinned only" (draining).
            before = {int(m) for m in pinned_old} | set(old)
            after = {int(h.address) for h in hops}
            p.added += [(vip, IPv4Address(m)) for m in sorted(after - before)]
            p.removed += [(vip, IPv4Address(m)) for m in sorted(set(old) - after)]
            p.reweighted += [(vip, IPv4Address(m)) for m in sorted(after & before) if (m in old) != (m in want)]
        else:
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

    if conntrack:
        rules_after = {table for table, _ in pin_routes_after}
        rule_adds = [nl.add_rule(nl.Rule(cfg.pin_priority, mark, fwmark=mark, protocol=ours))
                     .named(f"add rule fwmark {mark:#x} lookup {mark} ({IPv4Address(mark)})")
                     for mark in sorted(rules_after - set(snap.rules))]
        rule_deletes = [nl.del_rule(rule).named(f"delete rule fwmark {mark:#x} ({IPv4Address(mark)})")
                        for mark, rule in sorted(snap.rules.items()) if mark not in rules_after]
        pin_adds += rule_adds
        pin_deletes += rule_deletes
        p.pin_vips = {v for _, v in pin_routes_after} | {v for v, hops in desired.items() if hops}
        p.pins_after = {IPv4Address(m) for m in rules_after}
        p.pins_during = p.pins_after | {IPv4Address(m) for m in snap.rules}
    used = set().union(*members_after.values()) if members_after else set()
    used |= {table for table, _ in pin_routes_after}      # a draining member's own route uses its nexthop
    nexthop_deletes = [
        nl.del_nexthop(nid).named(f"delete nexthop {nid} ({IPv4Address(nid)})")
        for nid, nh in sorted(snap.nexthops.items())
        if nh.protocol == ours and not nh.is_group and nid not in used and nid not in created
    ]
    p.requests = (new_nexthops + pin_adds + groups + routes + route_deletes + group_deletes + pin_deletes
                  + nexthop_deletes)
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
        # The nftables script last written (conntrack mode), so an unchanged table is not rewritten
        # on every apply; None after start and on replay(), which always rewrites it.
        self._pins_written: str | None = None
        self.last_usage: pinning.Usage | None = None
        self._usage_at = float("-inf")
        self._warned: set[str] = set()

    async def apply(self, desired: DesiredRoutes) -> ApplyResult:
        return await self._run(self._apply_sync, dict(desired))

    async def replay(self, desired: DesiredRoutes) -> ApplyResult:
        # The kernel is read before every apply, so a replay is an apply of everything: whatever a
        # router restart or an `ip route flush` removed is recreated, in one batch.
        self._pins_written = None
        return await self.apply(desired)

    async def status(self, vip: IPv4Address) -> RouteStatus:
        return await self._run(self._status_sync, vip)

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            self._client.close()

    def health(self) -> dict[str, Any]:
        """conntrack mode: the router's conntrack table use (to alert before it is full) and whether
        replies seem to bypass the router (pinning cannot work then). Never raises."""
        if self.config.mode != "conntrack":
            return {"mode": self.config.mode}
        out: dict[str, Any] = {"mode": "conntrack"}
        try:
            out["conntrack_entries"], out["conntrack_max"] = pinning.counts(self.config.netns)
        except RouterError as exc:
            out["error"] = str(exc)
        if self.last_usage is not None:
            out["unreplied_ratio"] = round(self.last_usage.unreplied_share, 3)
            out["flows_to_vips"] = self.last_usage.towards_vips
        return out

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
        if cfg.mode != "conntrack":
            return Snapshot(nexthops, routes)
        # Ours: our protocol, and a fwmark equal to the table it looks up (a member's address).
        rules = {r.fwmark: r for r in self._client.rules()
                 if r.protocol == cfg.protocol and r.fwmark is not None and r.fwmark == r.table}
        pin_routes = {
            (r.table, r.dst): r for r in self._client.routes(table=nl.RT_TABLE_UNSPEC, protocol=cfg.protocol)
            if isinstance(r.dst, IPv4Address) and r.dst_len == 32 and r.table != cfg.table
            and r.nh_id == r.table
        }
        return Snapshot(nexthops, routes, rules, pin_routes)

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
        conntrack = self.config.mode == "conntrack"
        if conntrack:
            # Before the batch: the map knows every member that can receive a new flow during it.
            self._write_pins(p.pin_vips, p.pins_during)
        replies = self._client.batch(p.requests)
        failures = [r for r in replies if not r.ok]
        if failures:
            err = nl.BatchError(failures, len(replies))
            # EEXIST on a create means an object of someone else took the id or the /32 meanwhile
            # (a foreign route to the VIP is invisible to our protocol-filtered dump).
            if any(f.error == errno.EEXIST and f.request.flags & nl.NLM_F_EXCL for f in failures):
                raise RouterConflict(str(err)) from err
            raise err
        if conntrack:
            self._write_pins(p.pin_vips, p.pins_after)
        return ApplyResult(
            added=tuple(p.added), removed=tuple(p.removed), reweighted=tuple(p.reweighted),
            messages=len(p.requests), elapsed_s=time.perf_counter() - start,
        )

    def _warn_if_asymmetric(self, vip: IPv4Address, usage: pinning.Usage) -> None:
        if usage.towards_vips >= ASYMMETRY_MIN_FLOWS and usage.unreplied_share > ASYMMETRY_SHARE:
            key = f"asymmetric {vip}"
            if key not in self._warned:
                self._warned.add(key)
                log.error("VIP %s: %d of %d flows through the router never showed a reply: replies seem to "
                          "bypass this router (direct return, another router), and conntrack pinning cannot "
                          "keep their flows on their member; use mode resilient or route replies through it",
                          vip, usage.unreplied, usage.towards_vips)
        if usage.max and usage.entries > CONNTRACK_WARN * usage.max and "full" not in self._warned:
            self._warned.add("full")
            log.error("the router's conntrack table is %d%% full (%d of %d): raise nf_conntrack_max before "
                      "new flows are dropped", round(100 * usage.entries / usage.max), usage.entries, usage.max)

    def _write_pins(self, vips: set[IPv4Address], members: set[IPv4Address]) -> None:
        script = pinning.render(self.config.nft_table, vips, members)
        if script != self._pins_written:
            pinning.write(self.config.netns, script)
            self._pins_written = script

    def _pinned_status(self, vip: IPv4Address) -> RouteStatus:
        """conntrack mode: members in the group are active; members pinned but out of it are
        draining, with their live flows counted in the router's conntrack table."""
        snap = self.snapshot()
        route = snap.routes.get(vip)
        group = snap.nexthops.get(route.nh_id) if route is not None and route.nh_id is not None else None
        if group is not None and not group.is_group:
            group = None
        pinned = snap.pinned(vip)
        in_group = {IPv4Address(m.id) for m in group.group} if group is not None else set()
        usage = None
        now = time.monotonic()
        if pinned - in_group or now - self._usage_at > USAGE_EVERY_S:
            # Someone drains (count the flows still pinned to it), or time for the periodic check.
            usage = pinning.usage(self.config.netns, [vip])
            self._usage_at, self.last_usage = now, usage
            self._warn_if_asymmetric(vip, usage)
        return RouteStatus(vip, _pinned_hops(in_group, pinned, usage))

    def _status_sync(self, vip: IPv4Address) -> RouteStatus:
        cfg = self.config
        if cfg.mode == "conntrack":
            return self._pinned_status(vip)
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


def _pinned_hops(in_group: set[IPv4Address], pinned: set[IPv4Address], usage: pinning.Usage | None,
                 ) -> tuple[HopStatus, ...]:
    """Members in the group take new flows (active); members only pinned are draining."""
    hops = [HopStatus(a, HopState.ACTIVE) for a in sorted(in_group)]
    for a in sorted(pinned - in_group):
        flows = usage.live.get(pinning.mark_of(a), 0) if usage is not None else None
        hops.append(HopStatus(a, HopState.DRAINING, flows=flows))
    return tuple(hops)
