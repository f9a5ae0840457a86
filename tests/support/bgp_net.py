"""A small BGP network for the `bgp` driver's tests and benchmarks: real FRR routers, the scaler's
ExaBGP in its own namespace, next-hop subnets on a veth pair inside each router.

    {p}c (ExaBGP, 198.18.25X.2) ──┬── {p}r0 (FRR AS 65000, 198.18.250.1; 198.18.1-4.1/24 on `hops`)
                                  └── {p}r1 (FRR AS 65000, 198.18.251.1; same dummies)   (two ToRs)

Next hops 198.18.K.2 are "connected" for FRR through the `hops` interface, which is all a FIB test
needs: no traffic is sent. Everything is removed by `close()`, daemons by PID, even after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from actuators.bgp import BgpRouter, BgpRouterConfig
from actuators.kernel import netlink as nl
from actuators.linux import netns
from scaler.lab.frr import Frr, FrrConfig, FrrNeighbor

SPEAKER_AS, ROUTER_AS = 65001, 65000
NEXT_HOP_SUBNETS = 4


def hop(k: int) -> IPv4Address:
    """The k-th next hop address (1-based): connected on every router."""
    return IPv4Address(f"198.18.{k}.2")


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


@dataclass
class BgpNet:
    dir: Path
    routers: int = 1
    prefix: str = field(default_factory=lambda: "b" + secrets.token_hex(3))
    frr: list[Frr] = field(default_factory=list)
    drivers: list[BgpRouter] = field(default_factory=list)
    frr_root: Path | None = None

    @property
    def ctl(self) -> str:
        return f"{self.prefix}c"

    def router_ns(self, i: int = 0) -> str:
        return f"{self.prefix}r{i}"

    def router_address(self, i: int) -> IPv4Address:
        return IPv4Address(f"198.18.{250 + i}.1")

    def local_address(self, i: int) -> IPv4Address:
        return IPv4Address(f"198.18.{250 + i}.2")

    def _build(self) -> None:
        # FRR runs as user `frr`, which cannot reach pytest's private tmp dirs: its files go to /tmp.
        self.frr_root = Path(tempfile.mkdtemp(prefix=f"scaler-{self.prefix}-"))
        os.chmod(self.frr_root, 0o755)
        run(["ip", "netns", "add", self.ctl])
        ip(self.ctl, "link", "set", "lo", "up")
        for i in range(self.routers):
            r = self.router_ns(i)
            run(["ip", "netns", "add", r])
            ip(r, "link", "set", "lo", "up")
            ip(r, "link", "add", f"{self.prefix}k{i}", "type", "veth", "peer", "name", f"{self.prefix}x{i}",
               "netns", self.ctl)
            ip(r, "addr", "add", f"{self.router_address(i)}/24", "dev", f"{self.prefix}k{i}")
            ip(r, "link", "set", f"{self.prefix}k{i}", "up")
            ip(self.ctl, "addr", "add", f"{self.local_address(i)}/24", "dev", f"{self.prefix}x{i}")
            ip(self.ctl, "link", "set", f"{self.prefix}x{i}", "up")
            # This kernel has no `dummy` module: a veth pair with both ends in the router does.
            ip(r, "link", "add", "hops", "type", "veth", "peer", "name", "hopsp")
            for k in range(1, NEXT_HOP_SUBNETS + 1):
                ip(r, "addr", "add", f"198.18.{k}.1/24", "dev", "hops")
            ip(r, "link", "set", "hops", "up")
            ip(r, "link", "set", "hopsp", "up")
            run(["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"])

    async def up(self) -> BgpNet:
        await asyncio.to_thread(self._build)
        assert self.frr_root is not None
        for i in range(self.routers):
            frr = Frr(FrrConfig(dir=self.frr_root / f"frr{i}", asn=ROUTER_AS, router_id=self.router_address(i),
                                neighbors=(FrrNeighbor(self.local_address(i), SPEAKER_AS),),
                                netns=self.router_ns(i)))
            self.frr.append(frr)
            await frr.start()
        return self

    def driver_config(self, **overrides: Any) -> BgpRouterConfig:
        peers = [{"address": str(self.router_address(i)), "asn": ROUTER_AS, "name": f"tor{i}",
                  "local_address": str(self.local_address(i))} for i in range(self.routers)]
        base: dict[str, Any] = {"local_as": SPEAKER_AS, "router_id": str(self.local_address(0)),
                                "local_address": str(self.local_address(0)), "peers": peers,
                                "netns": self.ctl, "dir": str(self.dir / "bgp")}
        return BgpRouterConfig.model_validate(base | overrides)

    def driver(self, **overrides: Any) -> BgpRouter:
        d = BgpRouter(self.driver_config(**overrides))
        self.drivers.append(d)
        return d

    async def close(self) -> None:
        for d in self.drivers:
            with contextlib.suppress(Exception):     # cleanup goes on whatever one step says
                await d.close()
        for f in self.frr:
            with contextlib.suppress(Exception):
                await f.stop()
        await asyncio.to_thread(self._remove)

    def _remove(self) -> None:
        if self.frr_root is not None:
            shutil.rmtree(self.frr_root, ignore_errors=True)
        for ns in [self.ctl, *(self.router_ns(i) for i in range(self.routers))]:
            if netns.exists(ns):
                subprocess.run(["ip", "netns", "del", ns], check=False)


def fib(router_ns: str, vip: IPv4Address) -> set[IPv4Address]:
    """The VIP's next hops in the router's kernel FIB (FRR installs BGP multipath as nexthop groups)."""
    out = subprocess.run(["ip", "-n", router_ns, "-j", "route", "show", "exact", f"{vip}/32"],
                         capture_output=True, text=True, check=True).stdout
    hops: set[IPv4Address] = set()
    for r in json.loads(out or "[]"):
        if r.get("gateway"):
            hops.add(IPv4Address(r["gateway"]))
        for nh in r.get("nexthops", []):
            hops.add(IPv4Address(nh["gateway"]))
    return hops


RTA_MULTIPATH = 9
_RTNH = struct.Struct("=HBBi")     # struct rtnexthop: len, flags, hops, ifindex; its attributes follow
_RTMSG_LEN = 12                     # struct rtmsg


def fib_netlink(client: nl.NetlinkClient, vip: IPv4Address) -> set[IPv4Address]:
    """`fib()` from one in-process netlink route dump (well under a millisecond for a small table, where
    `ip` costs tens): for polling every few ms. Routes on nexthop objects (FRR's groups) come with their
    members expanded in RTA_MULTIPATH while net.ipv4.nexthop_compat_mode is 1, the default."""
    hops: set[IPv4Address] = set()
    for msg in client.dump(nl.dump_routes()):
        if msg.type != nl.RTM_NEWROUTE or msg.payload[1] != 32:
            continue
        attrs = nl.parse_nlas(msg.payload[_RTMSG_LEN:])
        if nl.RTA_DST not in attrs or IPv4Address(attrs[nl.RTA_DST]) != vip:
            continue
        if nl.RTA_GATEWAY in attrs:
            hops.add(IPv4Address(attrs[nl.RTA_GATEWAY]))
        mp = attrs.get(RTA_MULTIPATH, b"")
        pos = 0
        while pos + _RTNH.size <= len(mp):
            length = _RTNH.unpack_from(mp, pos)[0]
            if length < _RTNH.size:
                break
            inner = nl.parse_nlas(mp[pos + _RTNH.size:pos + length])
            if nl.RTA_GATEWAY in inner:
                hops.add(IPv4Address(inner[nl.RTA_GATEWAY]))
            pos += (length + 3) & ~3
    return hops


def fib_all(router_ns: str) -> dict[IPv4Address, set[IPv4Address]]:
    """Every BGP route of the router's FIB: VIP → next hops."""
    out = subprocess.run(["ip", "-n", router_ns, "-j", "route", "show", "proto", "bgp"],
                         capture_output=True, text=True, check=True).stdout
    routes: dict[IPv4Address, set[IPv4Address]] = {}
    for r in json.loads(out or "[]"):
        vip = IPv4Address(r["dst"].split("/")[0])
        hops = routes.setdefault(vip, set())
        if r.get("gateway"):
            hops.add(IPv4Address(r["gateway"]))
        for nh in r.get("nexthops", []):
            hops.add(IPv4Address(nh["gateway"]))
    return routes


async def apply_when_up(driver: BgpRouter, desired: Any, timeout_s: float = 20.0) -> Any:
    """apply() raises until ExaBGP has connected its API: retry until then."""
    from actuators.errors import RouterError

    t0 = time.monotonic()
    while True:
        try:
            return await driver.apply(desired)
        except RouterError:
            if time.monotonic() - t0 > timeout_s:
                raise
            await asyncio.sleep(0.05)


class RouteMonitor:
    """`ip monitor route` in a router namespace for the length of a block: every FIB change seen.

    It is known to be listening once it has printed a canary route the block adds first."""

    CANARY = "192.0.2.77/32"

    def __init__(self, router_ns: str) -> None:
        self.router_ns = router_ns
        self.lines: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip():
                self.lines.append(line.rstrip())

    def __enter__(self) -> RouteMonitor:
        self._proc = subprocess.Popen(["ip", "-n", self.router_ns, "monitor", "route"],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 5
        while not any("192.0.2.77" in x for x in self.lines):
            # Delete and add each time: a `replace` of an unchanged route sends no event, so a canary
            # added before `ip monitor` subscribed would never be seen.
            subprocess.run(["ip", "-n", self.router_ns, "route", "del", self.CANARY, "dev", "lo"],
                           check=False, capture_output=True)
            subprocess.run(["ip", "-n", self.router_ns, "route", "add", self.CANARY, "dev", "lo"], check=True)
            if time.monotonic() > deadline:
                raise AssertionError("ip monitor route printed nothing for 5 s")
            time.sleep(0.02)
        subprocess.run(["ip", "-n", self.router_ns, "route", "del", self.CANARY, "dev", "lo"], check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None and self._thread is not None
        self._proc.terminate()
        self._proc.wait(timeout=5)
        self._thread.join(timeout=5)

    def about(self, vip: IPv4Address) -> list[str]:
        """The monitor's lines about this VIP's route (added, replaced or "Deleted")."""
        word = re.compile(rf"(^|\s){re.escape(str(vip))}(/32)?(\s|$)")
        return [x for x in self.lines if word.search(x)]
