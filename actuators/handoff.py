"""Stray-packet handoff between a pool's members (issue 19): no reset when the router rehashes.

A BGP router spreads a VIP's flows over its members with plain ECMP: every membership change
rehashes, so packets of established connections land on a member that has no socket for them, and
its kernel answers with a reset. With handoff, every member runs one nftables table
(`scaler_handoff`) in its prerouting hook, after conntrack:

- traffic not for a VIP, not TCP, or on `lo`: untouched;
- a packet of a connection this member's conntrack knows (`ct state established,related`): accepted;
- a SYN (without ACK): accepted, a new connection is always served where it lands;
- anything else to a VIP arriving from the router is a *stray*: `dup to` every peer on the peer
  device (one copy per peer), then dropped here — before the TCP stack, so never answered with a
  reset (with no peer at all it goes on to the stack: nobody else can own it);
- a packet arriving on the peer device is a copy a peer sent: accepted only if this member owns the
  connection, else dropped silently; it is never copied on (no loops).

The owner's replies go straight to the client through its own default route. Conntrack must run
before the first connection (the `ct` expressions switch it on in the namespace: install the table
when the member is made, before it is routed), `nf_conntrack_tcp_loose` is 0 (a mid-stream packet
never creates an entry, so a stray stays "not mine"), `nf_conntrack_tcp_be_liberal` is 1 (an
out-of-window packet of the member's own connection is not taken for a stray) and closed connections'
entries expire after 2 s (TIME_WAIT, CLOSE): a client reuses its ports, and a stale entry for a
reused 4-tuple made a member take another member's connection for its own (measured: a slow request
and a download stalled until their timeout, the stale member's TIME_WAIT socket eating their ACKs).

The peer device is where peers are on-link: a shared segment (the lab's bridge), or a VXLAN device
whose flood list names the peers' own addresses (`sync_vxlan_peers`), which works over any routed
network and is what a cloud's port security lets through (a copy sent as is carries the client's
source address). Named counters count strays (each copied once per peer), copies accepted from peers
(owned here) and copies dropped (owned elsewhere).

`Peers` is the hook the scaler calls so that every member's peer list is current.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol

from actuators.errors import ActuatorError
from actuators.linux import netns

TABLE = "scaler_handoff"
# After conntrack (-200), so `ct state` is known; before the TCP stack (input) sees the packet.
PRIORITY = -150
COUNTERS = ("strays", "peer_accepted", "peer_dropped")
SYSCTLS: Mapping[str, str] = {
    "net.netfilter.nf_conntrack_tcp_loose": "0",
    "net.netfilter.nf_conntrack_tcp_be_liberal": "1",
    # A closed connection's entry must not outlive it by much: a client reusing its port for a new
    # connection that another member owns would otherwise look "mine" here (the stale entry), and
    # this member's TIME_WAIT socket would eat the packets the owner waits for (a stalled flow).
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait": "2",
    "net.netfilter.nf_conntrack_tcp_timeout_close": "2",
}
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class HandoffError(ActuatorError):
    """The handoff rules could not be rendered, applied or read."""


@dataclass(frozen=True, slots=True)
class HandoffRules:
    """One member's handoff: its VIPs, the device its peers are on-link on, and their addresses there."""

    vips: tuple[IPv4Address, ...]
    peer_device: str
    peers: tuple[IPv4Address, ...] = ()

    def __post_init__(self) -> None:
        if not self.vips:
            raise HandoffError("handoff: no VIP")
        if not IFNAME_RE.match(self.peer_device):
            raise HandoffError(f"handoff: invalid peer device name {self.peer_device!r}")
        if len(set(self.peers)) != len(self.peers):
            raise HandoffError(f"handoff: a peer listed twice in {', '.join(map(str, self.peers))}")


def render(rules: HandoffRules) -> str:
    """The `nft -f` input that makes the table or brings an existing one to `rules`, atomically.

    Chains are flushed and refilled, never deleted: the table (and with it conntrack in the
    namespace) stays, and so do the named counters."""
    t = f"ip {TABLE}"
    vips = ", ".join(str(v) for v in sorted(rules.vips))
    dev = json.dumps(rules.peer_device)   # a quoted nft string
    if rules.peers:
        dups = " ".join(f"dup to {p} device {dev}" for p in sorted(rules.peers))
        to_peers = f"add rule {t} to_peers counter name strays {dups} drop"
    else:
        # Nobody else can own it: let the stack answer (a reset), as without handoff.
        to_peers = f"add rule {t} to_peers counter name strays accept"
    lines = [
        f"add table {t}",
        *(f"add counter {t} {c}" for c in COUNTERS),
        f"add chain {t} prerouting {{ type filter hook prerouting priority {PRIORITY}; policy accept; }}",
        f"add chain {t} from_peer",
        f"add chain {t} to_peers",
        f"flush chain {t} prerouting",
        f"flush chain {t} from_peer",
        f"flush chain {t} to_peers",
        f'add rule {t} prerouting iifname "lo" accept',
        f"add rule {t} prerouting ip daddr != {{ {vips} }} accept",
        f"add rule {t} prerouting ip protocol != tcp accept",
        f"add rule {t} prerouting iifname {dev} jump from_peer",
        f"add rule {t} prerouting ct state established,related accept",
        f"add rule {t} prerouting tcp flags & (syn | ack) == syn accept",
        f"add rule {t} prerouting jump to_peers",
        f"add rule {t} from_peer ct state established,related counter name peer_accepted accept",
        f"add rule {t} from_peer counter name peer_dropped drop",
        to_peers,
    ]
    return "\n".join(lines) + "\n"


def parse_counters(listing: str) -> dict[str, int]:
    """Packet counts of the table's named counters from `nft -j list counters table ip scaler_handoff`."""
    try:
        doc = json.loads(listing)
    except ValueError as exc:
        raise HandoffError(f"handoff: unreadable nft counters: {exc}") from exc
    out = dict.fromkeys(COUNTERS, 0)
    for item in doc.get("nftables", []) if isinstance(doc, dict) else []:
        counter = item.get("counter") if isinstance(item, dict) else None
        if isinstance(counter, dict) and counter.get("table") == TABLE and counter.get("name") in out:
            out[str(counter["name"])] = int(counter.get("packets", 0))
    return out


async def apply(ns: str | None, rules: HandoffRules, *, timeout_s: float = 15.0) -> None:
    """Set the conntrack sysctls and load `rules` in namespace `ns` (None: this one), in one nft transaction."""
    try:
        await netns.run(["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in SYSCTLS.items())], ns=ns,
                        timeout_s=timeout_s)
        await netns.run(["nft", "-f", "-"], ns=ns, stdin=render(rules).encode(), timeout_s=timeout_s)
    except HandoffError:
        raise
    except ActuatorError as exc:
        raise HandoffError(f"handoff in {ns or 'this namespace'}: {exc}") from exc


async def counters(ns: str | None, *, timeout_s: float = 15.0) -> dict[str, int]:
    """The table's counters in `ns`; all 0 when the table does not exist."""
    rc, out, err = await netns.run(["nft", "-j", "list", "counters", "table", "ip", TABLE], ns=ns,
                                   timeout_s=timeout_s, check=False)
    if rc != 0:
        if "No such file" in err:
            return dict.fromkeys(COUNTERS, 0)
        raise HandoffError(f"handoff in {ns or 'this namespace'}: nft list counters: {err.strip()}")
    return parse_counters(out)


async def remove(ns: str | None, *, timeout_s: float = 15.0) -> None:
    """Delete the table (idempotent): strays reach the stack again and are reset."""
    rc, _, err = await netns.run(["nft", "delete", "table", "ip", TABLE], ns=ns, timeout_s=timeout_s, check=False)
    if rc != 0 and "No such file" not in err:
        raise HandoffError(f"handoff in {ns or 'this namespace'}: nft delete table: {err.strip()}")


# A connection still needs its member while data it sent is not all acknowledged: HAProxy counts it
# no more once it closed it, but the kernel may still hold megabytes of its response (measured: a
# member deleted when HAProxy reported 0 connections cut slow responses and downloads short).
OPEN_STATES = ("established", "syn-recv", "fin-wait-1", "close-wait", "last-ack", "closing")


def open_flows_argv(vips: Iterable[IPv4Address]) -> list[str]:
    """`ss` listing the TCP sockets on the VIPs that still carry data (one line each, no header)."""
    addresses = sorted(vips)
    if not addresses:
        raise HandoffError("handoff: no VIP")
    expr = [w for a in addresses for w in ("or", "src", str(a))][1:]
    return ["ss", "-Htn", *(w for st in OPEN_STATES for w in ("state", st)), "(", *expr, ")"]


async def open_flows(ns: str | None, vips: Iterable[IPv4Address], *, timeout_s: float = 15.0) -> int:
    """How many of the member's TCP connections on its VIPs still carry data (see OPEN_STATES): a
    draining member may go once this and its HAProxy's count are 0."""
    try:
        _, out, _ = await netns.run(open_flows_argv(vips), ns=ns, timeout_s=timeout_s)
    except HandoffError:
        raise
    except ActuatorError as exc:
        raise HandoffError(f"handoff in {ns or 'this namespace'}: {exc}") from exc
    return sum(1 for line in out.splitlines() if line.strip())


# A VXLAN peer device: the copies travel as UDP between the members' own addresses (what a cloud's
# port security lets through, where a copy carrying the client's address would be dropped), over any
# routed network. Its flood list (all-zero MAC entries) names every peer; peers' MACs are learned.
VXLAN_PORT = 4789
FLOOD_MAC = "00:00:00:00:00:00"


def parse_flood(listing: str) -> set[IPv4Address]:
    """The flood list of a VXLAN device from `bridge -j fdb show dev DEV`."""
    try:
        entries = json.loads(listing or "[]")
    except ValueError as exc:
        raise HandoffError(f"handoff: unreadable fdb listing: {exc}") from exc
    return {IPv4Address(e["dst"]) for e in entries if isinstance(e, dict) and e.get("mac") == FLOOD_MAC
            and e.get("dst")}


def flood_batch(device: str, current: Iterable[IPv4Address], wanted: Iterable[IPv4Address]) -> str:
    """`bridge -batch` input that makes `device`'s flood list exactly `wanted` (empty: nothing to do)."""
    have, want = set(current), set(wanted)
    lines = [f"fdb append {FLOOD_MAC} dev {device} dst {a}" for a in sorted(want - have)]
    lines += [f"fdb del {FLOOD_MAC} dev {device} dst {a}" for a in sorted(have - want)]
    return "".join(line + "\n" for line in lines)


async def sync_vxlan_peers(ns: str | None, device: str, underlay: Iterable[IPv4Address], *,
                           timeout_s: float = 15.0) -> None:
    """Point the VXLAN peer device's flood list at exactly the peers' own (underlay) addresses."""
    if not IFNAME_RE.match(device):
        raise HandoffError(f"handoff: invalid peer device name {device!r}")
    try:
        _, out, _ = await netns.run(["bridge", "-j", "fdb", "show", "dev", device], ns=ns, timeout_s=timeout_s)
        batch = flood_batch(device, parse_flood(out), underlay)
        if batch:
            await netns.run(["bridge", "-batch", "-"], ns=ns, stdin=batch.encode(), timeout_s=timeout_s)
    except HandoffError:
        raise
    except ActuatorError as exc:
        raise HandoffError(f"handoff in {ns or 'this namespace'}: {exc}") from exc


def peers_of(member: str, addresses: Mapping[str, IPv4Address]) -> tuple[IPv4Address, ...]:
    """Every other member's peer address: whom `member` copies its strays to."""
    return tuple(a for name, a in sorted(addresses.items()) if name != member)


class Peers(Protocol):
    """Keeps every member's peer list current (implemented by orchestrators that can reach members).

    The scaler calls `set_peers(pool, members)` with every instance of the pool that may hold or
    receive connections — announcing, in service and draining members — whenever that set changes,
    and before it routes a member that joined (so a new member copies its strays from its first
    packet). A member that left the set (withdrawn, failed, deleting) is no longer a peer of anyone;
    it must leave only once its own connections are gone. Idempotent; raises `ActuatorError`
    naming the member it could not update (the others are updated all the same)."""

    async def set_peers(self, pool: str, members: Collection[str]) -> None: ...

    async def open_flows(self, member: str) -> int | None:
        """The member's connections on its VIPs whose data is not all acknowledged yet (None: cannot
        tell). A draining member is done when this and its HAProxy's count are 0: only then may it
        leave the peer lists and be deleted."""


def peers_from(orchestrator: object) -> Peers | None:
    """The orchestrator as the scaler's `Peers` when it offers handoff and has it switched on (its
    `handoff` attribute is true, e.g. the lab's `orchestrator.options.handoff`); else None."""
    if getattr(orchestrator, "handoff", False) is True and callable(getattr(orchestrator, "set_peers", None)) \
            and callable(getattr(orchestrator, "open_flows", None)):
        return orchestrator  # type: ignore[return-value]
    return None


class PeerSync:
    """What the scaler's lifecycle holds: calls `Peers.set_peers` for a pool only when its member set
    changed since the last successful call (a failed pool is tried again on the next `sync`).

    Call `sync` on every pass before the router is programmed, with every pool's announcing,
    in-service and draining members: a joining member is then in every peer list before its route
    exists, and a leaving one stays until it is withdrawn (after its connections ended)."""

    def __init__(self, peers: Peers) -> None:
        self.peers = peers
        self._sent: dict[str, frozenset[str]] = {}

    async def sync(self, pools: Mapping[str, Collection[str]]) -> dict[str, ActuatorError]:
        """Push the pools whose set changed; returns the pools that failed, with their error."""
        errors: dict[str, ActuatorError] = {}
        for pool, members in sorted(pools.items()):
            want = frozenset(members)
            if self._sent.get(pool) == want:
                continue
            try:
                await self.peers.set_peers(pool, sorted(want))
            except ActuatorError as exc:
                self._sent.pop(pool, None)
                errors[pool] = exc
            else:
                self._sent[pool] = want
        return errors


def unknown(members: Iterable[str], known: Collection[str]) -> list[str]:
    """The members a `Peers` implementation was given but does not know, sorted."""
    return sorted(set(members) - set(known))


__all__ = ["COUNTERS", "FLOOD_MAC", "OPEN_STATES", "SYSCTLS", "TABLE", "VXLAN_PORT", "HandoffError", "HandoffRules",
           "PeerSync", "Peers", "apply", "counters", "flood_batch", "open_flows", "open_flows_argv", "parse_counters",
           "parse_flood", "peers_from", "peers_of", "remove", "render", "sync_vxlan_peers",
           "unknown"]
