"""The lab: a data center on one Linux machine, made of network namespaces; and its load controller.

    {lab}-client (198.18.0.2) ── {lab}-router (198.18.0.1, 198.18.N.1) ──┬── {lab}-i-{instance} (198.18.N.2,
                                                                          ┆    VIP/32 on lo, HAProxy, backend)
                                     router="bgp" only: (198.18.255.1) ───┴── {lab}-ctl (198.18.255.2: the
                                     FRR, AS 65000                             scaler's ExaBGP, AS 65001;
                                                                               .3, .4…: more scalers, HA)
`lab_up` makes the router and client namespaces and their link; instances are made by
`actuators.lab.orchestrator.LabOrchestrator`; the router's VIP route belongs to the router driver: the `kernel`
driver programs it over netlink, the `bgp` driver announces it to the FRR that `lab_up` starts in
the router namespace for a `bgp` lab (never for a `kernel` one: zebra adopts and re-creates the
kernel driver's nexthop objects, FRR issue #14471). `lab_down` removes everything the lab started,
even after a crash left it half built. Every file, pidfile and socket lives in the lab directory.
`LoadRun` runs `scaler.lab.loadgen` in the client namespace.

It only ever touches namespaces whose name starts with `{lab}-` and processes it can prove are its
own (a pidfile in the lab directory whose process names the lab directory, or a process living in
a lab namespace). Traffic goes only to addresses the lab assigns (198.18.0.0/15).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actuators.errors import ActuatorError
from actuators.lab.orchestrator import (
    DEFAULT_LAB_ROOT,
    LAB_NAME_PATTERN,
    LabOrchestratorConfig,
    client_ns,
    ensure_lab_snmp_secrets,
    kill_netns_processes,
    kill_pidfile,
    process_cmdline,
    process_matches,
    read_pidfile,
    router_ns,
    write_atomic,
)
from actuators.linux import netns
from scaler.errors import ScalerError
from scaler.lab.frr import Frr, FrrConfig, FrrNeighbor
from scaler.lab.loadgen import (
    DEFAULT_DOWNLOAD_BYTES,
    DEFAULT_DOWNLOAD_RATE_BPS,
    DEFAULT_IDLE_PAUSE_S,
    DEFAULT_SLOW_BYTES,
    DEFAULT_SLOW_DELAY_S,
    KINDS,
)

CLIENT_ADDRESS = IPv4Address("198.18.0.2")
ROUTER_CLIENT_ADDRESS = IPv4Address("198.18.0.1")

# A `bgp` lab: the one eBGP session between the router's FRR and the scaler's speaker in {lab}-ctl,
# on its own link. 198.18.255.0/24 is free: instance links use 198.18.1.0/24 to 198.18.254.0/24.
BGP_ROUTER_ADDRESS = IPv4Address("198.18.255.1")
BGP_SPEAKER_ADDRESS = IPv4Address("198.18.255.2")
BGP_LINK_PREFIXLEN = 24
BGP_ROUTER_ASN = 65000
BGP_SPEAKER_ASN = 65001
BGP_ROUTER_PEER_NAME = "lab-router"
# Several scalers on one PostgreSQL (HA): each speaks from its own address on the ctl link, the way each
# scaler host has its own address and the ToRs list every one as a neighbor. Scaler i: 198.18.255.(2+i).
MAX_SPEAKERS = 8

RouterKind = Literal["kernel", "bgp"]


class LabError(ScalerError):
    """Bringing the lab up or running load in it failed."""


class LabConfig(BaseModel):
    """One lab. `dir` defaults to /run/scaler-lab/{name}."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="scl", pattern=LAB_NAME_PATTERN)
    dir: Path | None = None
    vip: IPv4Address = IPv4Address("198.19.0.1")
    backend_delay_ms: int = Field(default=0, ge=0, le=60_000)
    keepalive_timeout_s: float = Field(default=2.0, gt=0, le=120)
    command_timeout_s: float = Field(default=15.0, gt=0)
    # Which router driver the lab is built for: `bgp` adds FRR in the router and the ctl namespace.
    router: RouterKind = "kernel"
    # bgp: how many scalers may speak to FRR at once (HA): one address each, all FRR neighbors.
    speakers: int = Field(default=1, ge=1, le=MAX_SPEAKERS)

    @model_validator(mode="after")
    def _default_dir(self) -> LabConfig:
        if self.dir is None:
            self.dir = DEFAULT_LAB_ROOT / self.name
        return self

    @property
    def lab_dir(self) -> Path:
        assert self.dir is not None
        return self.dir

    @property
    def router_ns(self) -> str:
        return router_ns(self.name)

    @property
    def client_ns(self) -> str:
        return client_ns(self.name)

    @property
    def ctl_ns(self) -> str:
        """Where the scaler's BGP speaker runs (a `bgp` lab only)."""
        return ctl_ns(self.name)

    @property
    def frr_dir(self) -> Path:
        return self.lab_dir / "frr"

    def speaker_address(self, i: int = 0) -> IPv4Address:
        """Scaler i's address on the ctl link (0: BGP_SPEAKER_ADDRESS)."""
        if not 0 <= i < self.speakers:
            raise LabError(f"lab {self.name}: speaker {i} does not exist (speakers: {self.speakers})")
        return BGP_SPEAKER_ADDRESS + i

    def frr(self) -> Frr:
        """The router namespace's FRR: one eBGP neighbor per scaler speaker."""
        return Frr(FrrConfig(dir=self.frr_dir, asn=BGP_ROUTER_ASN, router_id=BGP_ROUTER_ADDRESS,
                             neighbors=tuple(FrrNeighbor(self.speaker_address(i), BGP_SPEAKER_ASN)
                                             for i in range(self.speakers)),
                             netns=self.router_ns))

    def bgp_router_options(self, speaker: int = 0) -> dict[str, Any]:
        """The `router.options` of a scaler.yaml whose `bgp` driver speaks to this lab's FRR; with
        several speakers (HA), scaler `speaker`'s: its own address and its own directory."""
        address = str(self.speaker_address(speaker))
        return {"netns": self.ctl_ns, "dir": str(self.lab_dir / ("bgp" if speaker == 0 else f"bgp{speaker}")),
                "local_as": BGP_SPEAKER_ASN, "router_id": address, "local_address": address,
                "peers": [{"address": str(BGP_ROUTER_ADDRESS), "asn": BGP_ROUTER_ASN,
                           "name": BGP_ROUTER_PEER_NAME}]}

    def bgp_facts(self) -> dict[str, Any]:
        """The BGP side of the lab, as lab.json records it."""
        return {"router_asn": BGP_ROUTER_ASN, "router_address": str(BGP_ROUTER_ADDRESS),
                "speaker_asn": BGP_SPEAKER_ASN, "speaker_address": str(BGP_SPEAKER_ADDRESS),
                "link": f"{BGP_ROUTER_ADDRESS}/{BGP_LINK_PREFIXLEN} {_router_ctl_if(self.name)} ↔ "
                        f"{BGP_SPEAKER_ADDRESS}/{BGP_LINK_PREFIXLEN} {_ctl_if(self.name)}",
                "ctl_ns": self.ctl_ns, "frr_dir": str(self.frr_dir),
                "speakers": [str(self.speaker_address(i)) for i in range(self.speakers)],
                "router_options": self.bgp_router_options()}

    @property
    def prefix(self) -> str:
        """Every namespace of this lab starts with it (lab names contain no `-`, so it is unique)."""
        return f"{self.name}-"

    def orchestrator_config(self, **overrides: Any) -> LabOrchestratorConfig:
        """The LabOrchestratorConfig that makes instances in this lab."""
        base: dict[str, Any] = {"lab": self.name, "dir": self.lab_dir, "vip": self.vip,
                                "backend_delay_ms": self.backend_delay_ms,
                                "keepalive_timeout_s": self.keepalive_timeout_s}
        return LabOrchestratorConfig(**(base | overrides))


def _router_client_if(lab: str) -> str:
    return f"{lab}-cr"


def _client_if(lab: str) -> str:
    return f"{lab}-cc"


def ctl_ns(lab: str) -> str:
    return f"{lab}-ctl"


def _router_ctl_if(lab: str) -> str:
    return f"{lab}-rk"


def _ctl_if(lab: str) -> str:
    return f"{lab}-kc"


async def _run(cfg: LabConfig, argv: list[str], *, ns: str | None = None, stdin: bytes | None = None,
               check: bool = True) -> tuple[int, str, str]:
    try:
        return await netns.run(argv, ns=ns, stdin=stdin, timeout_s=cfg.command_timeout_s, check=check)
    except ActuatorError as exc:
        raise LabError(f"lab {cfg.name}: {exc}") from exc


async def _link_exists(cfg: LabConfig, ns: str, ifname: str) -> bool:
    rc, _, _ = await _run(cfg, ["ip", "-n", ns, "link", "show", "dev", ifname], check=False)
    return rc == 0


async def _ensure_veth(cfg: LabConfig, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    """A veth pair between two namespaces, made again if only half of it is left."""
    a_ok, b_ok = await _link_exists(cfg, ns_a, if_a), await _link_exists(cfg, ns_b, if_b)
    if a_ok and b_ok:
        return
    if a_ok:
        await _run(cfg, ["ip", "-n", ns_a, "link", "del", if_a])
    if b_ok:
        await _run(cfg, ["ip", "-n", ns_b, "link", "del", if_b])
    # Made directly in the two namespaces: nothing ever appears in the host's namespace.
    await _run(cfg, ["ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b])


def read_lab_json(cfg: LabConfig) -> dict[str, Any] | None:
    """What the last `lab_up` recorded, None if the lab was never brought up (or is down)."""
    try:
        data = json.loads((cfg.lab_dir / "lab.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def lab_up(cfg: LabConfig) -> dict[str, Any]:
    """Make the router and client namespaces and their link, and for a `bgp` lab the ctl namespace,
    its link to the router and FRR in the router (idempotent); returns lab.json's content."""
    lab_dir = cfg.lab_dir
    rns, cns = cfg.router_ns, cfg.client_ns
    previous = read_lab_json(cfg)
    if previous is not None and netns.exists(rns) and previous.get("router", "kernel") != cfg.router:
        # Switching in place would leave zebra next to the kernel driver's nexthop objects (or a
        # kernel-driven route under FRR): the lab is rebuilt instead.
        raise LabError(f"lab {cfg.name} is up with router {previous.get('router', 'kernel')!r}, not "
                       f"{cfg.router!r}: take it down first (scaler lab down --name {cfg.name})")
    lab_dir.mkdir(parents=True, exist_ok=True)
    (lab_dir / "instances").mkdir(exist_ok=True)
    # The SNMP credentials every instance's snmpd gets: made now so that a scaler.yaml referring to
    # them ({file: …/snmp/auth_key}) validates before the first instance exists.
    ensure_lab_snmp_secrets(lab_dir)
    for ns in (rns, cns):
        if not netns.exists(ns):
            await _run(cfg, ["ip", "netns", "add", ns])
    # Per-namespace sysctls: forwarding and the L4 multipath hash on the router (with policy 0
    # every request from the one client address would go to one LB); rp_filter off everywhere.
    await _run(cfg, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1",
                     "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"], ns=rns)
    # The client opens thousands of short connections: let it reuse TIME_WAIT ports.
    await _run(cfg, ["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0",
                     "net.ipv4.conf.default.rp_filter=0", "net.ipv4.tcp_tw_reuse=1",
                     "net.ipv4.ip_local_port_range=10000 60999"], ns=cns)
    r_if, c_if = _router_client_if(cfg.name), _client_if(cfg.name)
    await _ensure_veth(cfg, rns, r_if, cns, c_if)
    await _run(cfg, ["ip", "-n", rns, "-batch", "-"], stdin=(
        "link set lo up\n"
        f"addr replace {ROUTER_CLIENT_ADDRESS}/24 dev {r_if}\n"
        f"link set {r_if} up\n").encode())
    await _run(cfg, ["ip", "-n", cns, "-batch", "-"], stdin=(
        "link set lo up\n"
        f"addr replace {CLIENT_ADDRESS}/24 dev {c_if}\n"
        f"link set {c_if} up\n"
        f"route replace default via {ROUTER_CLIENT_ADDRESS} dev {c_if}\n").encode())
    if cfg.router == "bgp":
        await _bgp_up(cfg)
    info = {
        "name": cfg.name, "dir": str(lab_dir), "vip": str(cfg.vip),
        "router_ns": rns, "client_ns": cns,
        "client_address": str(CLIENT_ADDRESS), "router_client_address": str(ROUTER_CLIENT_ADDRESS),
        "router_client_if": r_if, "instance_links": "198.18.N.0/24: router .1, instance .2",
        "router": cfg.router, "bgp": cfg.bgp_facts() if cfg.router == "bgp" else None,
        "config": cfg.model_dump(mode="json"), "up_at": time.time(),
    }
    write_atomic(lab_dir / "lab.json", json.dumps(info, indent=2) + "\n")
    return info


async def _bgp_up(cfg: LabConfig) -> None:
    """The ctl namespace, its link to the router, and FRR in the router (a running FRR is kept)."""
    rns, kns = cfg.router_ns, cfg.ctl_ns
    if not netns.exists(kns):
        await _run(cfg, ["ip", "netns", "add", kns])
    await _run(cfg, ["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0",
                     "net.ipv4.conf.default.rp_filter=0"], ns=kns)
    r_if, k_if = _router_ctl_if(cfg.name), _ctl_if(cfg.name)
    await _ensure_veth(cfg, rns, r_if, kns, k_if)
    await _run(cfg, ["ip", "-n", rns, "-batch", "-"], stdin=(
        f"addr replace {BGP_ROUTER_ADDRESS}/{BGP_LINK_PREFIXLEN} dev {r_if}\n"
        f"link set {r_if} up\n").encode())
    await _run(cfg, ["ip", "-n", kns, "-batch", "-"], stdin=(
        "link set lo up\n"
        + "".join(f"addr replace {cfg.speaker_address(i)}/{BGP_LINK_PREFIXLEN} dev {k_if}\n"
                  for i in range(cfg.speakers))
        + f"link set {k_if} up\n").encode())
    # FRR's daemons run as user `frr`: it must be able to reach its directory inside ours.
    mode = cfg.lab_dir.stat().st_mode
    if mode & 0o111 != 0o111:
        cfg.lab_dir.chmod((mode & 0o7777) | 0o111)
    try:
        await cfg.frr().start(timeout_s=cfg.command_timeout_s)
    except ActuatorError as exc:
        raise LabError(f"lab {cfg.name}: FRR in {rns}: {exc}") from exc


def lab_namespaces(cfg: LabConfig) -> list[str]:
    """Every namespace of this lab, by name prefix."""
    try:
        names = os.listdir(netns.NETNS_RUN_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(cfg.prefix))


@dataclass
class LabDownReport:
    processes: list[tuple[int, str]] = field(default_factory=list)   # (pid, command line)
    namespaces: list[str] = field(default_factory=list)
    dir_removed: str | None = None

    def __str__(self) -> str:
        procs = ", ".join(f"{pid} ({cmd.split(' ')[0]})" for pid, cmd in self.processes) or "none"
        return (f"processes: {procs}; namespaces: {', '.join(self.namespaces) or 'none'}; "
                f"directory: {self.dir_removed or 'none'}")


async def lab_down(cfg: LabConfig) -> LabDownReport:
    """Remove everything the lab started; works on any half-built state. Returns what it removed."""
    report = LabDownReport()
    lab_dir = cfg.lab_dir
    marker = f"{lab_dir}/"
    # 0. FRR (a `bgp` lab, whatever `cfg.router` says): bgpd then zebra, the way FRR wants to stop
    #    (zebra removes the routes it installed). Its pidfiles are checked against its directory.
    if cfg.frr_dir.is_dir():
        frr = cfg.frr()
        pids = [(pid, process_cmdline(pid)) for d in ("bgpd", "zebra") if (pid := frr.pid(d)) is not None]
        await frr.stop()
        report.processes.extend(pids)
    # 1. Our processes by pidfile; the command line must name the lab directory, so a pid the
    #    kernel reused for someone else's process is never signalled.
    if lab_dir.is_dir():
        for pidfile in sorted(lab_dir.rglob("*.pid")):
            stopped = await kill_pidfile(pidfile, marker)
            if stopped:
                report.processes.append(stopped)
    # 2. Anything still living in a lab namespace (started by hand, or its pidfile lost).
    namespaces = lab_namespaces(cfg)
    for ns in namespaces:
        report.processes.extend(await kill_netns_processes(ns))
    # 3. The namespaces (their veths go with them), instances first and the router last.
    for ns in sorted(namespaces, key=lambda n: n == cfg.router_ns):
        rc, _, err = await _run(cfg, ["ip", "netns", "del", ns], check=False)
        if rc == 0 or not netns.exists(ns):
            report.namespaces.append(ns)
        else:
            raise LabError(f"lab {cfg.name}: cannot delete namespace {ns}: {err.strip()}")
    # 4. The directory.
    if lab_dir.exists():
        shutil.rmtree(lab_dir)
        report.dir_removed = str(lab_dir)
    return report


@dataclass
class LabStatus:
    name: str
    dir: str
    up: bool                                   # router and client namespaces exist (and ctl for bgp)
    namespaces: list[str]
    instances: dict[str, dict[str, Any]]       # name -> {"netns": bool, "haproxy": bool, "backend": bool}
    processes: dict[str, int | None]           # pidfile (relative to dir) -> live pid or None
    router: str = "kernel"                     # what lab.json says the lab was built for
    # bgp: FRR's neighbors and their state ("Established", …); None when FRR is not running.
    bgp_sessions: dict[str, str] | None = None
    bgp_error: str | None = None               # why the sessions could not be read

    def __str__(self) -> str:
        lines = [f"lab {self.name}: {'up' if self.up else 'down'} (dir {self.dir}, router {self.router})",
                 f"  namespaces: {', '.join(self.namespaces) or 'none'}"]
        if self.router == "bgp":
            if self.bgp_sessions is not None:
                sessions = ", ".join(f"{a} {st}" for a, st in sorted(self.bgp_sessions.items())) or "no neighbor"
                lines.append(f"  FRR sessions: {sessions}")
            else:
                lines.append(f"  FRR: {self.bgp_error or 'not running'}")
        for name, st in sorted(self.instances.items()):
            lines.append(f"  instance {name}: " + ", ".join(f"{k}={v}" for k, v in st.items()))
        for pidfile, pid in sorted(self.processes.items()):
            lines.append(f"  {pidfile}: {pid if pid else 'not running'}")
        return "\n".join(lines)


async def lab_status(cfg: LabConfig) -> LabStatus:
    """What exists now: namespaces, instance directories and whether their processes run."""
    lab_dir = cfg.lab_dir
    marker = f"{lab_dir}/"
    namespaces = lab_namespaces(cfg)
    processes: dict[str, int | None] = {}
    if lab_dir.is_dir():
        for pidfile in sorted(lab_dir.rglob("*.pid")):
            pid = read_pidfile(pidfile)
            processes[str(pidfile.relative_to(lab_dir))] = (
                pid if pid is not None and process_matches(pid, marker) else None)
    instances: dict[str, dict[str, Any]] = {}
    inst_root = lab_dir / "instances"
    if inst_root.is_dir():
        for d in sorted(p for p in inst_root.iterdir() if p.is_dir()):
            rel = d.relative_to(lab_dir)
            instances[d.name] = {
                "netns": f"{cfg.prefix}i-{d.name}" in namespaces,
                "haproxy": processes.get(str(rel / "haproxy.pid")) is not None,
                "backend": processes.get(str(rel / "backend.pid")) is not None,
            }
    info = read_lab_json(cfg)
    router = str(info.get("router", "kernel")) if info is not None else cfg.router
    up = cfg.router_ns in namespaces and cfg.client_ns in namespaces
    sessions: dict[str, str] | None = None
    error: str | None = None
    if router == "bgp":
        up = up and cfg.ctl_ns in namespaces
        frr = cfg.frr()
        if frr.running():
            try:
                sessions = await frr.neighbor_states()
            except ActuatorError as exc:
                error = f"sessions unreadable: {exc}"
        else:
            error = "not running"
    return LabStatus(name=cfg.name, dir=str(lab_dir), up=up, namespaces=namespaces, instances=instances,
                     processes=processes, router=router, bgp_sessions=sessions, bgp_error=error)


def _delay_range(value: tuple[float, float]) -> str:
    lo, hi = value
    return f"{float(lo)}:{float(hi)}"


def _sum_counts(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The counts of several stats lines (or of one kind in each), summed."""
    out: dict[str, Any] = dict.fromkeys(("ok", "failed", "retried", "connects", "skipped", "bytes",
                                         "idle_closed"), 0)
    by_key: dict[str, Counter[str]] = {k: Counter() for k in ("by_lb", "failures", "retries")}
    for line in lines:
        for k in out:
            out[k] += line.get(k, 0)
        for k, counter in by_key.items():
            counter.update(line.get(k, {}))
    return out | {k: dict(v) for k, v in by_key.items()}


class LoadRun:
    """`scaler.lab.loadgen` running in the lab's client namespace, controlled through its stdin.

    `start()` launches it; `set(...)` changes the load while it runs; `ticks` holds every per-second
    stats line so far and `stats()` yields them as they come; `stop()` ends it (it also ends by
    itself at `max_seconds` / `max_requests`) and returns the final summary.

    The flow kinds (`scaler/lab/loadgen.py`): short requests (`short_rps`), keep-alive clients,
    slow requests (`slow_clients`, each answered after `slow_delay_s` = (A, B) seconds with a
    `slow_bytes` body), large downloads (`downloads` of `download_bytes`, each read at most
    `download_rate_bps` bytes/s) and idle keep-alive connections (`idle_clients`, silent
    `idle_pause_s` between requests: the lab's `keepalive_timeout_s` must be longer). Every tick and
    the summary count ok and failures (by cause) per kind under `kinds`.
    """

    def __init__(self, cfg: LabConfig, *, short_rps: float = 0.0, keepalive_clients: int = 0,
                 keepalive_pause_ms: float = 0.0, max_seconds: float = 30.0,
                 max_requests: int = 1_000_000, timeout_s: float = 5.0, short_concurrency: int = 256,
                 interval_s: float = 1.0, retry: bool = True, target: IPv4Address | None = None,
                 port: int = 80, slow_clients: int = 0,
                 slow_delay_s: tuple[float, float] = DEFAULT_SLOW_DELAY_S, slow_bytes: int = DEFAULT_SLOW_BYTES,
                 downloads: int = 0, download_bytes: int = DEFAULT_DOWNLOAD_BYTES,
                 download_rate_bps: float = DEFAULT_DOWNLOAD_RATE_BPS, idle_clients: int = 0,
                 idle_pause_s: float = DEFAULT_IDLE_PAUSE_S) -> None:
        self.cfg = cfg
        self.argv_options = [
            "--host", str(target or cfg.vip), "--port", str(port),
            "--short-rps", str(short_rps), "--short-concurrency", str(short_concurrency),
            "--keepalive-clients", str(keepalive_clients), "--keepalive-pause-ms", str(keepalive_pause_ms),
            "--slow-clients", str(slow_clients), "--slow-delay-s", _delay_range(slow_delay_s),
            "--slow-bytes", str(slow_bytes), "--downloads", str(downloads),
            "--download-bytes", str(download_bytes), "--download-rate-bps", str(download_rate_bps),
            "--idle-clients", str(idle_clients), "--idle-pause-s", str(idle_pause_s),
            "--max-seconds", str(max_seconds), "--max-requests", str(max_requests),
            "--timeout-s", str(timeout_s), "--interval-s", str(interval_s),
            *([] if retry else ["--no-retry"]),
        ]
        self.max_seconds = max_seconds
        self.ticks: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []       # control acknowledgements and errors
        self.summary: dict[str, Any] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._cond = asyncio.Condition()
        self._done = False
        token = uuid.uuid4().hex[:8]
        self.pidfile = cfg.lab_dir / f"loadgen-{token}.pid"
        self.logfile = cfg.lab_dir / f"loadgen-{token}.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> LoadRun:
        if self._proc is not None:
            raise LabError("this LoadRun was already started")
        if not netns.exists(self.cfg.client_ns):
            raise LabError(f"lab {self.cfg.name} is not up (no namespace {self.cfg.client_ns})")
        argv = ["ip", "netns", "exec", self.cfg.client_ns, sys.executable, "-m", "scaler.lab.loadgen",
                *self.argv_options, "--control", "--pidfile", str(self.pidfile)]
        err = os.open(self.logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err)
        finally:
            os.close(err)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            while line := await self._proc.stdout.readline():
                try:
                    msg = json.loads(line)
                except ValueError:
                    msg = {"type": "error", "error": f"unparsable output {line[:200]!r}"}
                async with self._cond:
                    if msg.get("type") == "tick":
                        self.ticks.append(msg)
                    elif msg.get("type") == "summary":
                        self.summary = msg
                    else:
                        self.messages.append(msg)
                    self._cond.notify_all()
        finally:
            async with self._cond:
                self._done = True
                self._cond.notify_all()

    async def set(self, *, short_rps: float | None = None, keepalive_clients: int | None = None,
                  keepalive_pause_ms: float | None = None, slow_clients: int | None = None,
                  slow_delay_s: tuple[float, float] | None = None, slow_bytes: int | None = None,
                  downloads: int | None = None, download_bytes: int | None = None,
                  download_rate_bps: float | None = None, idle_clients: int | None = None,
                  idle_pause_s: float | None = None) -> None:
        """Change the load now; options left None keep their value. Sizes, delays and rates apply to
        the flows started afterwards; fewer clients first finish the flow they are in."""
        command: dict[str, Any] = {k: v for k, v in (
            ("short_rps", short_rps), ("keepalive_clients", keepalive_clients),
            ("keepalive_pause_ms", keepalive_pause_ms), ("slow_clients", slow_clients),
            ("slow_delay_s", _delay_range(slow_delay_s) if slow_delay_s is not None else None),
            ("slow_bytes", slow_bytes), ("downloads", downloads), ("download_bytes", download_bytes),
            ("download_rate_bps", download_rate_bps), ("idle_clients", idle_clients),
            ("idle_pause_s", idle_pause_s)) if v is not None}
        await self._send(command)

    async def _send(self, command: dict[str, Any]) -> None:
        if not self.running or self._proc is None or self._proc.stdin is None:
            raise LabError("the load generator is not running")
        self._proc.stdin.write(json.dumps(command).encode() + b"\n")
        try:
            await self._proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise LabError("the load generator is not running") from exc

    async def next_tick(self, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """The next stats line, or None if the run ended first."""
        seen = len(self.ticks)
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(lambda: len(self.ticks) > seen or self._done),
                                   timeout_s)
        return self.ticks[seen] if len(self.ticks) > seen else None

    async def stats(self) -> AsyncIterator[dict[str, Any]]:
        """Every stats line, from the first, as it arrives; ends when the run ends."""
        i = 0
        while True:
            async with self._cond:
                await self._cond.wait_for(lambda i=i: len(self.ticks) > i or self._done)  # type: ignore[misc]
                batch = self.ticks[i:]
                done = self._done
            for tick in batch:
                yield tick
            i += len(batch)
            if done and i >= len(self.ticks):
                return

    def totals(self) -> dict[str, Any]:
        """The sums of the stats lines so far (or the summary once there is one), overall and per
        kind (`kinds`)."""
        if self.summary is not None:
            return self.summary
        out = _sum_counts(self.ticks)
        out["kinds"] = {kind: _sum_counts([t.get("kinds", {}).get(kind, {}) for t in self.ticks])
                        for kind in KINDS}
        return out

    async def wait(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Wait until it stops by itself; returns the summary."""
        if self._proc is None:
            raise LabError("the load generator was never started")
        await asyncio.wait_for(self._finish(), timeout_s if timeout_s is not None else self.max_seconds + 10)
        return self.summary or {"type": "summary", "reason": "no summary (crashed?)"}

    async def _finish(self) -> None:
        assert self._proc is not None
        await self._proc.wait()
        if self._reader is not None:
            await self._reader

    async def stop(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """Ask it to stop (it finishes the requests in flight), kill it if it does not; the summary."""
        if self._proc is None:
            raise LabError("the load generator was never started")
        if self.running:
            with contextlib.suppress(LabError):
                await self._send({"stop": True})
        try:
            await asyncio.wait_for(self._finish(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._finish()
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pidfile)
        return self.summary or {"type": "summary", "reason": "killed", "ok": 0, "failed": 0}

    async def __aenter__(self) -> LoadRun:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None:
            await self.stop()
