"""Conntrack pinning for the kernel router (`mode: conntrack`): new flows follow the current members,
established flows stay on the member they started on, and a leaving member's flows are counted.

On the router, in one nftables table of ours and in policy routing:

    prerouting (mangle):  ip daddr @vips ct mark != 0          → meta mark set ct mark
    forward (mangle):     ip daddr @vips ct state new          → ct mark set rt ip nexthop map @nh2mark
    rule:                 fwmark M lookup table M              (one per member, M = its address as u32)
    table M:              VIP/32 nhid M                        (the member's own nexthop object)

The main table's VIP route points at a plain (hash-threshold) group of the members that take new
flows. A flow's first packet is routed by that group; the forward hook records the chosen member in
the flow's conntrack mark; every later packet gets the mark back before routing and is sent to that
member by its rule, whatever the group has become since. So a new member receives its share of new
flows at once (the group rehashes only flows without a mark), and a leaving member is simply left
out of the group: it gets no new flow, keeps its own, and its live conntrack entries are an exact
drain count. The member's rule, table and map entry go only when it leaves the desired state.

This module renders the nftables table (pure), writes it with `nft -f` (one atomic transaction), and
reads the router's conntrack table (`/proc/thread-self/net/nf_conntrack` from a thread inside the
router's namespace). It decides nothing.

Requirements and limits (docs/design.md, README): the router must see both directions of a flow —
when replies bypass it, conntrack never sees the handshake complete, entries stay UNREPLIED and the
marks cannot be restored (detected: `usage().unreplied_share`); nftables with the `rt` expression
(Linux 4.10+, nft 0.7+); ~300 bytes of conntrack per flow, alive for its duration plus TIME_WAIT.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address

from actuators.errors import RouterError
from actuators.linux import netns

# TCP states in which a pinned flow still carries data: a draining member with any of these is not
# drained. TIME_WAIT and CLOSE only wait for stray retransmits, which another member may reset.
LIVE_TCP_STATES = frozenset({"SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK"})


def mark_of(member: IPv4Address) -> int:
    """A member's conntrack mark, fwmark and routing table: its address as u32 (stable, stateless)."""
    return int(member)


def render(table: str, vips: Iterable[IPv4Address], members: Iterable[IPv4Address]) -> str:
    """The nftables script that (re)defines our table in one transaction. Pure."""
    vip_list = ", ".join(str(v) for v in sorted(set(vips)))
    elements = ", ".join(f"{m} : {mark_of(m):#010x}" for m in sorted(set(members)))
    lines = [
        f"table ip {table} {{}}",
        f"flush table ip {table}",
        f"table ip {table} {{",
        "  set vips {",
        "    type ipv4_addr;",
        *([f"    elements = {{ {vip_list} }};"] if vip_list else []),
        "  }",
        "  map nh2mark {",
        "    type ipv4_addr : mark;",
        *([f"    elements = {{ {elements} }};"] if elements else []),
        "  }",
        "  chain restore {",
        "    type filter hook prerouting priority mangle; policy accept;",
        "    ip daddr @vips ct mark != 0 meta mark set ct mark",
        "  }",
        "  chain pin {",
        "    type filter hook forward priority mangle; policy accept;",
        "    ip daddr @vips ct state new ct mark set rt ip nexthop map @nh2mark",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def write(ns: str | None, script: str, timeout_s: float = 10.0) -> None:
    """Apply an nftables script in the router's namespace; RouterError with nft's message on failure."""
    try:
        done = subprocess.run(netns.ns_command(ns, ["nft", "-f", "-"]), input=script.encode(),
                              capture_output=True, timeout=timeout_s, check=False)
    except FileNotFoundError as exc:
        raise RouterError("kernel router mode conntrack needs nftables (`nft`) on the router: "
                          "apt-get install nftables") from exc
    except subprocess.TimeoutExpired as exc:
        raise RouterError(f"nft -f: no answer after {timeout_s:g}s") from exc
    if done.returncode != 0:
        raise RouterError(f"nft -f (pinning table): {done.stderr.decode(errors='replace').strip()}")



@dataclass(frozen=True, slots=True)
class Usage:
    """The router's conntrack table as the pinning sees it."""

    entries: int                        # all entries of the namespace
    max: int                            # nf_conntrack_max
    live: Mapping[int, int]             # mark → live TCP flows (LIVE_TCP_STATES) towards our VIPs
    unreplied: int                      # entries towards our VIPs that never saw a reply
    towards_vips: int                   # entries towards our VIPs

    @property
    def unreplied_share(self) -> float:
        return self.unreplied / self.towards_vips if self.towards_vips else 0.0


def parse(text: str, vips: frozenset[str]) -> tuple[dict[int, int], int, int]:
    """(live flows per mark, unreplied, total) of the entries towards `vips`, from nf_conntrack text.

    A line: `ipv4 2 tcp 6 431999 ESTABLISHED src=C dst=VIP sport=… dport=80 src=VIP dst=C … [ASSURED]
    mark=3323068674 zone=0 use=2`; the first `dst=` is the original direction's destination."""
    live: dict[int, int] = {}
    unreplied = total = 0
    for line in text.splitlines():
        fields = line.split()
        dst = next((f[4:] for f in fields if f.startswith("dst=")), None)
        if dst not in vips:
            continue
        total += 1
        if "[UNREPLIED]" in fields:
            unreplied += 1
        if len(fields) > 5 and fields[2] == "tcp" and fields[5] in LIVE_TCP_STATES:
            mark = next((int(f[5:]) for f in fields if f.startswith("mark=")), 0)
            if mark:
                live[mark] = live.get(mark, 0) + 1
    return live, unreplied, total


def _read_all() -> tuple[str, int, int]:
    # /proc/thread-self: this thread has entered the router's namespace; /proc/net would be the
    # process's (the main thread's) namespace.
    base = "/proc/thread-self"
    with open(f"{base}/net/nf_conntrack") as f:
        text = f.read()
    count, limit = _read_counts()
    return text, count, limit


def _read_counts() -> tuple[int, int]:
    with open("/proc/sys/net/netfilter/nf_conntrack_count") as f:
        count = int(f.read())
    with open("/proc/sys/net/netfilter/nf_conntrack_max") as f:
        return count, int(f.read())


def counts(ns: str | None) -> tuple[int, int]:
    """(entries, nf_conntrack_max) of the router's namespace: two sysctl reads, cheap at any size."""
    try:
        return netns.call_in(ns, _read_counts) if ns else _read_counts()
    except FileNotFoundError:
        return 0, 0
    except OSError as exc:
        raise RouterError(f"reading the router's conntrack counters: {exc}") from exc


def usage(ns: str | None, vips: Iterable[IPv4Address]) -> Usage:
    """Read the router's conntrack table (O(entries): call it for draining members, not per packet)."""
    try:
        text, count, limit = netns.call_in(ns, _read_all) if ns else _read_all()
    except FileNotFoundError:
        # No entry file: conntrack is not loaded in this namespace yet (no flow tracked at all).
        return Usage(0, 0, {}, 0, 0)
    except OSError as exc:
        raise RouterError(f"reading the router's conntrack table: {exc}") from exc
    live, unreplied, total = parse(text, frozenset(str(v) for v in vips))
    return Usage(count, limit, live, unreplied, total)


__all__ = ["LIVE_TCP_STATES", "Usage", "counts", "mark_of", "parse", "render", "usage", "write"]
