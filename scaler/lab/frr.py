"""Runs a real FRR 8.4 router (zebra + bgpd) as plain processes whose every file lives in one directory:
the lab's router, integration tests and benchmarks use it to receive the `bgp` driver's routes.

    DIR/zebra.conf, DIR/bgpd.conf   our configuration only (no file under /etc/frr is read)
    DIR/zebra.pid, DIR/bgpd.pid      pidfiles the daemons write
    DIR/zserv.api                   zebra's API socket, shared by bgpd (`-z`)
    DIR/*.vty                        vty sockets for `vtysh --vty_socket DIR`
    DIR/zebra.log, DIR/bgpd.log      their logs

Facts this relies on (measured, docs/lab.md): the daemons run as user `frr`, so DIR must be
writable by it (`-u root` fails on the vty group); `no bgp ebgp-requires-policy` or no route is
accepted; `bgp bestpath as-path multipath-relax` and `maximum-paths` for ECMP; FRR 8.4 advertises
ADD-PATH receive by default and keeps a restarting peer's paths as stale (graceful-restart helper,
on by default). Zebra must not share a namespace with the `kernel` driver's nexthop objects (it
adopts and re-creates them).

It stops only processes its pidfiles name, and only if their command line names this directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from actuators.errors import ActuatorError
from actuators.linux import netns
from actuators.linux.procs import process_cmdline, wait_gone

__all__ = ["FRR_BIN", "Frr", "FrrConfig", "FrrError", "FrrNeighbor"]

FRR_BIN = Path("/usr/lib/frr")
DAEMONS = ("zebra", "bgpd")


class FrrError(ActuatorError):
    """FRR could not be configured, started, queried or stopped."""


@dataclass(frozen=True, slots=True)
class FrrNeighbor:
    address: IPv4Address
    asn: int
    # Seconds. Small values make a dead speaker visible quickly in tests; FRR's default is 180.
    hold_time_s: int = 9
    keepalive_s: int = 3


@dataclass(frozen=True, slots=True)
class FrrConfig:
    dir: Path
    asn: int
    router_id: IPv4Address
    neighbors: tuple[FrrNeighbor, ...] = ()
    netns: str | None = None
    maximum_paths: int = 16
    # A restarting peer's paths are kept this long (stale) unless it sends End-of-RIB first.
    stalepath_time_s: int = 360
    extra_bgp_lines: tuple[str, ...] = field(default_factory=tuple)


class Frr:
    """zebra + bgpd for one router namespace."""

    def __init__(self, config: FrrConfig) -> None:
        self.config = config
        self.dir = config.dir

    def __repr__(self) -> str:
        return f"Frr(dir={str(self.dir)!r}, netns={self.config.netns!r})"

    # ---- files ---------------------------------------------------------------------------------

    def render_bgpd(self) -> str:
        c = self.config
        lines = [
            "hostname scaler-lab-router",
            f"log file {self.dir / 'bgpd.log'}",
            f"router bgp {c.asn}",
            f" bgp router-id {c.router_id}",
            " no bgp ebgp-requires-policy",
            " no bgp network import-check",
            " bgp bestpath as-path multipath-relax",
            f" bgp graceful-restart stalepath-time {c.stalepath_time_s}",
        ]
        for n in c.neighbors:
            lines += [f" neighbor {n.address} remote-as {n.asn}",
                      f" neighbor {n.address} timers {n.keepalive_s} {n.hold_time_s}",
                      # Reconnect quickly after the speaker restarts (default 120 s).
                      f" neighbor {n.address} timers connect 1"]
        lines += [f" {x}" for x in c.extra_bgp_lines]
        lines += [" address-family ipv4 unicast", f"  maximum-paths {c.maximum_paths}",
                  " exit-address-family", ""]
        return "\n".join(lines)

    def render_zebra(self) -> str:
        return f"hostname scaler-lab-router\nlog file {self.dir / 'zebra.log'}\n"

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        uid, gid = _frr_ids()
        os.chown(self.dir, uid, gid)
        for name, text in (("zebra.conf", self.render_zebra()), ("bgpd.conf", self.render_bgpd())):
            path = self.dir / name
            path.write_text(text)
            os.chown(path, uid, gid)

    def argv(self, daemon: str) -> list[str]:
        d = self.dir
        return [str(FRR_BIN / daemon), "-d", "-P", "0", "-f", str(d / f"{daemon}.conf"),
                "-i", str(d / f"{daemon}.pid"), "-z", str(d / "zserv.api"), "--vty_socket", str(d)]

    # ---- processes -----------------------------------------------------------------------------

    def pid(self, daemon: str) -> int | None:
        path = self.dir / f"{daemon}.pid"
        try:
            pid = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if process_cmdline(pid).find(str(self.dir)) >= 0 else None

    def running(self) -> bool:
        return all(self.pid(d) is not None for d in DAEMONS)

    async def start(self, *, timeout_s: float = 15.0) -> None:
        """Write the configuration and start zebra then bgpd (idempotent: running daemons are kept)."""
        if not (FRR_BIN / "bgpd").exists():
            raise FrrError(f"FRR is not installed ({FRR_BIN / 'bgpd'} missing): apt-get install frr")
        self.write_config()
        for daemon in DAEMONS:
            if self.pid(daemon) is not None:
                continue
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f"{daemon}.pid").unlink()
            rc, _, err = await netns.run(self.argv(daemon), ns=self.config.netns, timeout_s=timeout_s, check=False)
            if rc != 0:
                hint = (f" (user frr must be able to reach {self.dir}: every parent directory needs o+x)"
                        if "Permission denied" in err else "")
                raise FrrError(f"{daemon} in {self.config.netns or 'this namespace'} exited {rc}: "
                               f"{err.strip()}{hint}")
            await self._wait(lambda d=daemon: self.pid(d) is not None and (self.dir / f"{d}.vty").exists(),
                             timeout_s, f"{daemon} did not start (see {self.dir}/{daemon}.log)")

    async def stop(self, *, timeout_s: float = 5.0) -> bool:
        """Stop bgpd then zebra; True if something was running."""
        stopped = False
        for daemon in reversed(DAEMONS):
            pid = self.pid(daemon)
            if pid is None:
                continue
            stopped = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not await wait_gone(pid, timeout_s):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                await wait_gone(pid, 5.0)
        return stopped

    async def kill_bgpd(self) -> None:
        """SIGKILL bgpd only (a router crash): its sessions drop; zebra withdraws its routes."""
        pid = self.pid("bgpd")
        if pid is None:
            raise FrrError("bgpd is not running")
        os.kill(pid, signal.SIGKILL)
        await wait_gone(pid, 5.0)

    # ---- queries -------------------------------------------------------------------------------

    async def vtysh(self, *commands: str, timeout_s: float = 10.0) -> str:
        argv = ["vtysh", "--vty_socket", str(self.dir)]
        for c in commands:
            argv += ["-c", c]
        rc, out, err = await netns.run(argv, timeout_s=timeout_s, check=False)
        if rc != 0:
            raise FrrError(f"vtysh {' / '.join(commands)} exited {rc}: {(err or out).strip()}")
        return out

    async def vtysh_json(self, command: str) -> Any:
        out = await self.vtysh(command)
        try:
            return json.loads(out)
        except ValueError as exc:
            raise FrrError(f"vtysh {command}: not JSON: {out[:200]!r}") from exc

    async def neighbor_states(self) -> dict[str, str]:
        """Each neighbor's BGP state as FRR sees it ("Established", "Active", …)."""
        data = await self.vtysh_json("show bgp ipv4 unicast summary json")
        return {addr: str(p.get("state", "?")) for addr, p in (data.get("peers") or {}).items()}

    async def wait_established(self, address: IPv4Address | str, timeout_s: float = 30.0) -> None:
        async def up() -> bool:
            return (await self.neighbor_states()).get(str(address)) == "Established"
        deadline = time.monotonic() + timeout_s
        while not await up():
            if time.monotonic() > deadline:
                raise FrrError(f"neighbor {address} not Established after {timeout_s:.0f}s: "
                               f"{await self.neighbor_states()}")
            await asyncio.sleep(0.05)

    async def _wait(self, cond: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            if time.monotonic() > deadline:
                raise FrrError(what)
            await asyncio.sleep(0.02)


def _frr_ids() -> tuple[int, int]:
    try:
        return pwd.getpwnam("frr").pw_uid, grp.getgrnam("frr").gr_gid
    except KeyError as exc:
        raise FrrError("user or group `frr` missing: apt-get install frr") from exc


def frr_available() -> bool:
    return (FRR_BIN / "bgpd").exists() and shutil.which("vtysh") is not None
