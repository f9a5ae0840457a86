"""The lab orchestrator: LB "VMs" as network namespaces on this machine, each running HAProxy.

An instance is a namespace `{lab}-i-{name}` linked to the lab's router namespace by a veth pair, with
the VIP on its `lo`, a small backend application (`actuators.lab.backend`) on 127.0.0.1 and an
HAProxy answering on VIP:80; with `snmpd: true` also an snmpd (`actuators.lab.snmpd`) on 127.0.0.1 and the
instance address, port `snmp_port`, answering a v2c community and a v3 authPriv user (SHA-256 +
AES-128) whose secrets are files of the lab directory (see `lab_snmp_secrets`). Everything an instance
owns lives in `{dir}/instances/{name}/` (meta.json first, then configuration, pidfiles, sockets), so a
create retried after a crash at any point finishes the job from there and never makes a second instance.

It must not touch the router's VIP route (the router driver owns it), nor any namespace, link or
process it did not create: processes are killed only by our pidfiles after checking their command
line, or when they live in one of our namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from ipaddress import IPv4Address
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from actuators import handoff
from actuators.errors import ActuatorError, OrchestratorError
from actuators.haproxy_runtime import DRAIN_MAP_INITIAL, drain_config_lines, drain_map_path
from actuators.lab.snmpd import Snmpd, SnmpdCommunity, SnmpdConfig, SnmpdUser
from actuators.linux import netns
from actuators.linux.procs import kill_pidfile, process_cmdline, process_matches, read_pidfile, terminate
from actuators.orchestrator import Instance, InstanceSpec

log = logging.getLogger(__name__)

LAB_NAME_PATTERN = r"^[a-z][a-z0-9]{0,5}$"
# Instance names become namespace, directory and socket-path components: keep them plain.
INSTANCE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
FIRST_INDEX, LAST_INDEX = 1, 254          # 198.18.{idx}.0/24; idx 0 is the client link
UNIX_PATH_MAX = 107
DEFAULT_LAB_ROOT = Path("/run/scaler-lab")


# ---- naming: one place that knows how lab objects are called ------------------------------------

HEALTH_PORT = 8405       # HAProxy's monitor-uri frontend, the same port as deploy/cloud-init's members


def router_ns(lab: str) -> str:
    return f"{lab}-router"


def client_ns(lab: str) -> str:
    return f"{lab}-client"


def instance_ns(lab: str, name: str) -> str:
    return f"{lab}-i-{name}"


def router_ifname(lab: str, idx: int) -> str:
    """The router-side veth of instance `idx` (≤ 15 chars: lab ≤ 6, idx ≤ 3)."""
    return f"{lab}-{idx}r"


def instance_ifname(lab: str, idx: int) -> str:
    return f"{lab}-{idx}i"


def peers_ns(lab: str) -> str:
    """The namespace holding the members' shared segment (a bridge), when handoff is on."""
    return f"{lab}-peers"


PEERS_BRIDGE = "br0"
PEER_PREFIXLEN = 24


def peer_ifname(lab: str, idx: int) -> str:
    """The instance's veth on the peer segment (its handoff peer device)."""
    return f"{lab}-{idx}p"


def bridge_port_ifname(lab: str, idx: int) -> str:
    return f"{lab}-{idx}b"


def peer_address(idx: int) -> IPv4Address:
    """The instance's address on the peer segment 198.19.255.0/24 (the VIPs live in 198.19.0.0/24)."""
    return IPv4Address(f"198.19.255.{idx}")


def router_address(idx: int) -> IPv4Address:
    return IPv4Address(f"198.18.{idx}.1")


def instance_address(idx: int) -> IPv4Address:
    """The instance's link address: the next hop the router announces for the VIP."""
    return IPv4Address(f"198.18.{idx}.2")


def allocate_index(used: Iterable[int]) -> int:
    """The lowest free link index. Raises OrchestratorError when all 254 are taken."""
    taken = set(used)
    for idx in range(FIRST_INDEX, LAST_INDEX + 1):
        if idx not in taken:
            return idx
    raise OrchestratorError(f"no free lab link index: all {LAST_INDEX} are in use")


def check_instance_name(name: str) -> None:
    if not INSTANCE_NAME_RE.match(name):
        raise OrchestratorError(
            f"instance {name!r}: invalid lab instance name (want {INSTANCE_NAME_RE.pattern})")


# ---- processes ---------------------------------------------------------------------------------

def _netns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def pids_in_netns(name: str) -> list[int]:
    """Processes whose network namespace is `name` (what `ip netns pids` reports)."""
    target = _netns_id(netns.netns_path(name))
    if target is None:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and _netns_id(f"/proc/{entry}/ns/net") == target:
            pids.append(int(entry))
    return pids


async def kill_netns_processes(name: str) -> list[tuple[int, str]]:
    """Stop every process living in namespace `name`; each is re-checked just before the signal."""
    target = _netns_id(netns.netns_path(name))
    stopped = []
    for pid in pids_in_netns(name):
        cmd = process_cmdline(pid)
        if target is not None and _netns_id(f"/proc/{pid}/ns/net") == target and await terminate(pid):
            stopped.append((pid, cmd))
    return stopped


# ---- files -------------------------------------------------------------------------------------

def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file, fsync and rename, so a crash leaves the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@contextlib.asynccontextmanager
async def file_lock(path: Path) -> AsyncIterator[None]:
    """An exclusive flock on `path`, so two processes never allocate the same index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # closing the descriptor releases the lock


# ---- configuration ------------------------------------------------------------------------------

class InstanceMeta(BaseModel):
    """What create() persists before it makes anything, so a retry knows what to finish."""

    model_config = ConfigDict(extra="forbid")

    name: str
    pool: str
    idx: int = Field(ge=FIRST_INDEX, le=LAST_INDEX)
    vip: IPv4Address
    lab: str
    created_at: float
    complete: bool = False      # a create() finished once: a missing part later is an error


class LabOrchestratorConfig(BaseModel):
    """Settings of the lab orchestrator. `dir` defaults to /run/scaler-lab/{lab}."""

    model_config = ConfigDict(extra="forbid")

    lab: str = Field(default="scl", pattern=LAB_NAME_PATTERN)
    dir: Path | None = None
    # If set, every spec must ask for this VIP; if None, each instance uses its spec's VIP.
    vip: IPv4Address | None = None
    # HAProxy's idle timeout for client keep-alive connections (`timeout http-keep-alive`). A router
    # that moves idle flows (kernel resilient mode) must wait longer than every HAProxy timeout:
    # pools.*.max_client_silence in scaler.yaml says how long (checked at load).
    keepalive_timeout_s: float = Field(default=2.0, gt=0, le=120)
    backend_delay_ms: int = Field(default=0, ge=0, le=60_000)
    backend_port: int = Field(default=8081, ge=1, le=65535)
    metrics_port: int = Field(default=8404, ge=1, le=65535)
    maxconn: int = Field(default=4096, ge=1)
    haproxy_bin: str = "haproxy"
    python: str = Field(default_factory=lambda: sys.executable)
    # snmpd per instance (off by default: it adds a process to every instance).
    snmpd: bool = False
    snmpd_bin: str = "snmpd"
    snmp_port: int = Field(default=161, ge=1, le=65535)
    snmp_user: str = Field(default="scaler", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
    command_timeout_s: float = Field(default=15.0, gt=0)
    probe_timeout_s: float = Field(default=2.0, gt=0)
    # Stray-packet handoff (actuators.handoff, issue 19): every instance also gets a link to the
    # lab's peer segment and the handoff table; `set_peers` keeps the peer lists current.
    handoff: bool = False
    # How copies reach the peers: `bridge`, a shared segment (a bridge in {lab}-peers, a veth per
    # instance); `vxlan`, an overlay between the instances' own addresses over the routed links (what
    # a cloud's port security lets through), VNI `handoff_vni`, UDP 4789.
    handoff_transport: Literal["bridge", "vxlan"] = "bridge"
    handoff_vni: int = Field(default=4242, ge=1, le=16_777_215)

    @model_validator(mode="after")
    def _default_dir(self) -> LabOrchestratorConfig:
        if self.dir is None:
            self.dir = DEFAULT_LAB_ROOT / self.lab
        return self

    @property
    def lab_dir(self) -> Path:
        assert self.dir is not None
        return self.dir


class LabInstanceOptions(BaseModel):
    """A pool's `instance:` mapping in scaler.yaml (`InstanceSpec.params`), as this driver reads it.
    Every lab instance is the same HAProxy namespace, set up by the orchestrator's options; the one
    key is `version`, a label that changes nothing in the instance but the pool's instance template
    (what a real image or flavor change does to it: `scaler rollout` replaces the members). Any
    other key is refused as unknown."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(default=None, max_length=64)


def lab_instance_options(params: Mapping[str, object], pool: str) -> LabInstanceOptions:
    """A pool's instance options, validated; OrchestratorError names every unknown key."""
    try:
        return LabInstanceOptions.model_validate(dict(params))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise OrchestratorError(f"pool {pool}: instance options: {problems}") from None


class InstancePaths:
    """Where one instance's files live."""

    def __init__(self, lab_dir: Path, name: str) -> None:
        self.dir = lab_dir / "instances" / name
        self.meta = self.dir / "meta.json"
        self.haproxy_cfg = self.dir / "haproxy.cfg"
        self.haproxy_pid = self.dir / "haproxy.pid"
        self.backend_pid = self.dir / "backend.pid"
        self.backend_log = self.dir / "backend.log"
        self.admin_sock = self.dir / "admin.sock"
        self.metrics_sock = self.dir / "metrics.sock"
        self.drain_map = Path(drain_map_path(str(self.dir)))
        self.snmp_dir = self.dir / "snmp"
        self.snmpd_pid = self.snmp_dir / "snmpd.pid"      # where actuators.lab.snmpd keeps it

    @property
    def marker(self) -> str:
        # Every process of the instance has a path under its directory on its command line.
        return f"{self.dir}/"


def render_haproxy_cfg(meta: InstanceMeta, paths: InstancePaths, cfg: LabOrchestratorConfig) -> str:
    """The instance's haproxy.cfg. Pure: same inputs, same text."""
    ka_ms = round(cfg.keepalive_timeout_s * 1000)
    drain = "\n".join(f"    {line}" for line in drain_config_lines(str(paths.drain_map)))
    return f"""\
# Written by scaler's lab orchestrator for instance {meta.name} (pool {meta.pool}); regenerated on create.
global
    nbthread 1
    maxconn {cfg.maxconn}
    stats socket {paths.admin_sock} mode 600 level admin
    stats timeout 30s

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive {ka_ms}ms

frontend vip
    bind {meta.vip}:80
    http-after-response set-header x-lb {meta.name}
{drain}
    default_backend app

backend app
    server app 127.0.0.1:{cfg.backend_port}

# What the scaler's health checks GET, at the member's address (as deploy/cloud-init's member does).
frontend health
    bind {instance_address(meta.idx)}:{HEALTH_PORT}
    monitor-uri /healthz

frontend metrics
    bind unix@{paths.metrics_sock} mode 666
    bind {instance_address(meta.idx)}:{cfg.metrics_port}
    http-request use-service prometheus-exporter
"""


# ---- SNMP credentials ----------------------------------------------------------------------------

SNMP_SECRET_NAMES = ("community", "auth_key", "priv_key")


def lab_snmp_secrets(lab_dir: Path) -> dict[str, Path]:
    """Where the lab's SNMP secrets live: {"community", "auth_key", "priv_key"} -> file (mode 0600,
    one line). The v3 user is `LabOrchestratorConfig.snmp_user` (SHA-256 auth, AES-128 priv). A
    collector reads them as `{file: PATH}` references."""
    return {name: lab_dir / "snmp" / name for name in SNMP_SECRET_NAMES}


def ensure_lab_snmp_secrets(lab_dir: Path) -> dict[str, str]:
    """Read the lab's SNMP secrets, making any that is missing (random, 0600). Call under the lab lock."""
    out: dict[str, str] = {}
    for name, path in lab_snmp_secrets(lab_dir).items():
        try:
            value = path.read_text().strip()
        except FileNotFoundError:
            value = ""
        if not value:
            value = secrets.token_hex(16)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_name(f".{name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(value + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        out[name] = value
    return out


# ---- the orchestrator ---------------------------------------------------------------------------

class LabOrchestrator:
    """The Orchestrator of the lab. The lab (router namespace) must be up: see `scaler.lab.network.lab_up`."""

    def __init__(self, cfg: LabOrchestratorConfig) -> None:
        self.cfg = cfg
        self._locks: dict[str, asyncio.Lock] = {}

    # paths and names

    @property
    def instances_dir(self) -> Path:
        return self.cfg.lab_dir / "instances"

    def paths(self, name: str) -> InstancePaths:
        return InstancePaths(self.cfg.lab_dir, name)

    def netns_of(self, name: str) -> str:
        return instance_ns(self.cfg.lab, name)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def read_meta(self, name: str) -> InstanceMeta | None:
        try:
            return InstanceMeta.model_validate_json(self.paths(name).meta.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            raise OrchestratorError(f"instance {name}: unreadable {self.paths(name).meta}: {exc}") from exc

    def _all_metas(self) -> list[InstanceMeta]:
        metas = []
        if self.instances_dir.is_dir():
            for d in sorted(self.instances_dir.iterdir()):
                if d.is_dir():
                    try:
                        meta = self.read_meta(d.name)
                    except OrchestratorError as exc:
                        log.warning("%s", exc)
                        continue
                    if meta is not None:
                        metas.append(meta)
        return metas

    def _instance(self, meta: InstanceMeta, status: str) -> Instance:
        p = self.paths(meta.name)
        endpoints = {"metrics_url": "http://localhost/metrics", "metrics_uds": str(p.metrics_sock),
                     "runtime_api": str(p.admin_sock),
                     # Health checks go to the member's address from the router's namespace: they
                     # see what the router sees (a dead link, a frozen or dropped instance).
                     "health_url": f"http://{instance_address(meta.idx)}:{HEALTH_PORT}/healthz",
                     "health_netns": router_ns(self.cfg.lab)}
        if self.cfg.snmpd:
            # The snmp collector opens its socket inside the instance's namespace (Target.netns).
            endpoints["netns"] = self.netns_of(meta.name)
            endpoints["snmp_url"] = f"udp://127.0.0.1:{self.cfg.snmp_port}"
        return Instance(name=meta.name, pool=meta.pool, address=instance_address(meta.idx), status=status,
                        endpoints=endpoints)

    def snmpd_of(self, meta: InstanceMeta, creds: dict[str, str]) -> Snmpd:
        """The instance's snmpd, with the lab's SNMP credentials (`ensure_lab_snmp_secrets`)."""
        p = self.paths(meta.name)
        lab_prefix = "198.18.0.0/15"
        return Snmpd(SnmpdConfig(
            directory=p.snmp_dir,
            listen=(f"127.0.0.1:{self.cfg.snmp_port}", f"{instance_address(meta.idx)}:{self.cfg.snmp_port}"),
            communities=(SnmpdCommunity(creds["community"], "127.0.0.1"),
                         SnmpdCommunity(creds["community"], lab_prefix)),
            users=(SnmpdUser(self.cfg.snmp_user, creds["auth_key"], creds["priv_key"], "SHA-256", "AES"),),
            netns=self.netns_of(meta.name), snmpd_bin=self.cfg.snmpd_bin, sys_name=meta.name))

    async def _ip(self, argv: list[str], *, ns: str, stdin: bytes | None = None,
                  check: bool = True) -> tuple[int, str, str]:
        """`ip -n NS ARGV...`: iproute2 switches namespace itself, no `ip netns exec` needed."""
        return await netns.run(["ip", "-n", ns, *argv], stdin=stdin,
                               timeout_s=self.cfg.command_timeout_s, check=check)

    async def _link_exists(self, ns: str, ifname: str) -> bool:
        rc, _, _ = await self._ip(["link", "show", "dev", ifname], ns=ns, check=False)
        return rc == 0

    # create

    async def create(self, spec: InstanceSpec, name: str) -> Instance:
        check_instance_name(name)
        lab_instance_options(spec.params, spec.pool)
        if self.cfg.vip is not None and spec.vip != self.cfg.vip:
            raise OrchestratorError(f"instance {name}: this lab serves VIP {self.cfg.vip}, not {spec.vip}")
        paths = self.paths(name)
        if len(str(paths.admin_sock)) > UNIX_PATH_MAX or len(str(paths.metrics_sock)) > UNIX_PATH_MAX:
            raise OrchestratorError(f"instance {name}: socket paths under {paths.dir} are too long")
        if not netns.exists(router_ns(self.cfg.lab)):
            raise OrchestratorError(
                f"instance {name}: lab {self.cfg.lab!r} is not up (no namespace {router_ns(self.cfg.lab)})")
        async with self._lock(name):
            try:
                meta = await self._ensure_meta(spec, name)
                await self._ensure_netns(meta)
                await self._ensure_link(meta)
                if self.cfg.handoff:
                    # Before HAProxy serves: conntrack must see every connection from its SYN.
                    await self._ensure_peer_link(meta)
                    await self._ensure_handoff(meta)
                await self._ensure_backend(meta)
                await self._ensure_haproxy(meta)
                await self._ensure_snmpd(meta)
                if not meta.complete:
                    meta = meta.model_copy(update={"complete": True})
                    write_atomic(paths.meta, meta.model_dump_json(indent=2) + "\n")
            except OrchestratorError:
                raise
            except (ActuatorError, OSError) as exc:
                raise OrchestratorError(f"create instance {name}: {exc}") from exc
        return self._instance(meta, "active")

    async def _ensure_meta(self, spec: InstanceSpec, name: str) -> InstanceMeta:
        paths = self.paths(name)
        async with file_lock(self.cfg.lab_dir / "instances.lock"):
            meta = self.read_meta(name)
            if meta is not None:
                if meta.pool != spec.pool or meta.vip != spec.vip:
                    raise OrchestratorError(
                        f"instance {name}: exists in pool {meta.pool} with VIP {meta.vip}; "
                        f"asked for pool {spec.pool} with VIP {spec.vip}")
                return meta
            idx = allocate_index(m.idx for m in self._all_metas())
            meta = InstanceMeta(name=name, pool=spec.pool, idx=idx, vip=spec.vip, lab=self.cfg.lab,
                                created_at=time.time())
            write_atomic(paths.meta, meta.model_dump_json(indent=2) + "\n")
            log.info("instance %s: allocated link index %d", name, idx)
            return meta

    async def _ensure_netns(self, meta: InstanceMeta) -> None:
        ns = self.netns_of(meta.name)
        if not netns.exists(ns):
            await netns.run(["ip", "netns", "add", ns], timeout_s=self.cfg.command_timeout_s)
        await netns.run(["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0",
                         "net.ipv4.conf.default.rp_filter=0"], ns=ns, timeout_s=self.cfg.command_timeout_s)

    async def _ensure_link(self, meta: InstanceMeta) -> None:
        lab, idx, ns, rns = self.cfg.lab, meta.idx, self.netns_of(meta.name), router_ns(self.cfg.lab)
        r_if, i_if = router_ifname(lab, idx), instance_ifname(lab, idx)
        r_ok, i_ok = await self._link_exists(rns, r_if), await self._link_exists(ns, i_if)
        if not (r_ok and i_ok):
            # Half a pair (its peer's namespace was deleted, or a leftover of an earlier instance
            # with this index): remove it and make the pair again, directly in both namespaces.
            if r_ok:
                await self._ip(["link", "del", r_if], ns=rns)
            if i_ok:
                await self._ip(["link", "del", i_if], ns=ns)
            await self._ip(["link", "add", r_if, "type", "veth", "peer", "name", i_if, "netns", ns], ns=rns)
        # `replace` makes every step idempotent; one `ip -batch` per namespace.
        await self._ip(["-batch", "-"], ns=rns, stdin=(
            f"addr replace {router_address(idx)}/24 dev {r_if}\n"
            f"link set {r_if} up\n").encode())
        await self._ip(["-batch", "-"], ns=ns, stdin=(
            "link set lo up\n"
            f"addr replace {meta.vip}/32 dev lo\n"
            f"addr replace {instance_address(idx)}/24 dev {i_if}\n"
            f"link set {i_if} up\n"
            f"route replace default via {router_address(idx)} dev {i_if}\n").encode())

    async def _ensure_peer_segment(self) -> None:
        """The peers namespace and its bridge (idempotent, under the lab's lock)."""
        pns = peers_ns(self.cfg.lab)
        async with file_lock(self.cfg.lab_dir / "instances.lock"):
            if not netns.exists(pns):
                await netns.run(["ip", "netns", "add", pns], timeout_s=self.cfg.command_timeout_s)
            if not await self._link_exists(pns, PEERS_BRIDGE):
                await self._ip(["link", "add", PEERS_BRIDGE, "type", "bridge"], ns=pns)
            await self._ip(["link", "set", PEERS_BRIDGE, "up"], ns=pns)

    async def _ensure_peer_link(self, meta: InstanceMeta) -> None:
        """The instance's peer device with its peer address: a veth to the peer segment's bridge, or a
        VXLAN device over its own link."""
        if self.cfg.handoff_transport == "vxlan":
            await self._ensure_vxlan(meta)
            return
        await self._ensure_peer_segment()
        lab, idx, ns, pns = self.cfg.lab, meta.idx, self.netns_of(meta.name), peers_ns(self.cfg.lab)
        b_if, p_if = bridge_port_ifname(lab, idx), peer_ifname(lab, idx)
        b_ok, p_ok = await self._link_exists(pns, b_if), await self._link_exists(ns, p_if)
        if not (b_ok and p_ok):
            if b_ok:
                await self._ip(["link", "del", b_if], ns=pns)
            if p_ok:
                await self._ip(["link", "del", p_if], ns=ns)
            await self._ip(["link", "add", b_if, "type", "veth", "peer", "name", p_if, "netns", ns], ns=pns)
        await self._ip(["-batch", "-"], ns=pns, stdin=(
            f"link set {b_if} master {PEERS_BRIDGE}\n"
            f"link set {b_if} up\n").encode())
        await self._ip(["-batch", "-"], ns=ns, stdin=(
            f"addr replace {peer_address(idx)}/{PEER_PREFIXLEN} dev {p_if}\n"
            f"link set {p_if} up\n").encode())

    async def _ensure_vxlan(self, meta: InstanceMeta) -> None:
        ns, p_if = self.netns_of(meta.name), peer_ifname(self.cfg.lab, meta.idx)
        if not await self._link_exists(ns, p_if):
            # No `dev`: its MTU stays 1500 like the client's packets it carries; the outer UDP packet
            # is fragmented on the 1500-byte link (a smaller device MTU would make the kernel drop a
            # full-size copy and send the client a "fragmentation needed").
            await self._ip(["link", "add", p_if, "type", "vxlan", "id", str(self.cfg.handoff_vni),
                            "local", str(instance_address(meta.idx)), "dstport", str(handoff.VXLAN_PORT)], ns=ns)
        await self._ip(["-batch", "-"], ns=ns, stdin=(
            f"addr replace {peer_address(meta.idx)}/{PEER_PREFIXLEN} dev {p_if}\n"
            f"link set {p_if} up\n").encode())

    async def _apply_handoff(self, meta: InstanceMeta, peers: list[InstanceMeta]) -> None:
        others = [p for p in peers if p.name != meta.name]
        ns = self.netns_of(meta.name)
        if self.cfg.handoff_transport == "vxlan":
            await handoff.sync_vxlan_peers(ns, peer_ifname(self.cfg.lab, meta.idx),
                                           [instance_address(p.idx) for p in others],
                                           timeout_s=self.cfg.command_timeout_s)
        await handoff.apply(ns, self._handoff_rules(meta, others), timeout_s=self.cfg.command_timeout_s)

    def _handoff_rules(self, meta: InstanceMeta, peers: list[InstanceMeta]) -> handoff.HandoffRules:
        return handoff.HandoffRules(vips=(meta.vip,), peer_device=peer_ifname(self.cfg.lab, meta.idx),
                                    peers=tuple(peer_address(p.idx) for p in peers if p.name != meta.name))

    async def _ensure_handoff(self, meta: InstanceMeta) -> None:
        """The handoff table, copying strays to the pool's other instances that exist now (the
        scaler's `set_peers` makes the list exact)."""
        peers = [m for m in self._all_metas() if m.pool == meta.pool and m.name != meta.name
                 and netns.exists(self.netns_of(m.name))]
        await self._apply_handoff(meta, peers)

    @property
    def handoff(self) -> bool:
        """Whether this lab's instances hand strays to their peers (`actuators.handoff.peers_from`)."""
        return self.cfg.handoff

    async def set_peers(self, pool: str, members: Collection[str]) -> None:
        """`actuators.handoff.Peers`: every listed instance copies its strays to the others."""
        if not self.cfg.handoff:
            raise OrchestratorError(f"pool {pool}: handoff is off in lab {self.cfg.lab}")
        metas = {m.name: m for m in self._all_metas() if m.pool == pool}
        wanted = [metas[n] for n in sorted(set(members)) if n in metas]
        results = await asyncio.gather(*(self._apply_handoff(m, wanted) for m in wanted), return_exceptions=True)
        problems = [f"{m.name}: {r}" for m, r in zip(wanted, results, strict=True) if isinstance(r, BaseException)]
        problems += [f"{n}: no such instance in pool {pool}" for n in handoff.unknown(members, metas)]
        if problems:
            raise OrchestratorError(f"pool {pool}: set_peers: {'; '.join(problems)}")

    async def handoff_counters(self, name: str) -> dict[str, int]:
        """The instance's handoff counters (`actuators.handoff.COUNTERS`, packets)."""
        try:
            return await handoff.counters(self.netns_of(name), timeout_s=self.cfg.command_timeout_s)
        except ActuatorError as exc:
            raise OrchestratorError(f"instance {name}: {exc}") from exc

    async def open_flows(self, name: str) -> int:
        """`actuators.handoff.Peers`: the instance's TCP connections on its VIP that still carry data."""
        meta = self.read_meta(name)
        if meta is None:
            raise OrchestratorError(f"instance {name}: no such instance")
        try:
            return await handoff.open_flows(self.netns_of(name), (meta.vip,), timeout_s=self.cfg.command_timeout_s)
        except ActuatorError as exc:
            raise OrchestratorError(f"instance {name}: {exc}") from exc

    async def _ensure_backend(self, meta: InstanceMeta) -> None:
        p = self.paths(meta.name)
        argv = [self.cfg.python, "-m", "actuators.lab.backend", "--port", str(self.cfg.backend_port),
                "--delay-ms", str(self.cfg.backend_delay_ms), "--pidfile", str(p.backend_pid),
                "--log", str(p.backend_log), "--daemon"]
        pid = read_pidfile(p.backend_pid)
        if pid is not None and process_matches(pid, p.marker):
            if process_matches(pid, " ".join(argv[1:])):
                return
            await kill_pidfile(p.backend_pid, p.marker)     # started with other settings: replace it
        await netns.run(argv, ns=self.netns_of(meta.name), timeout_s=self.cfg.command_timeout_s)

    async def _ensure_haproxy(self, meta: InstanceMeta) -> None:
        p = self.paths(meta.name)
        if not p.drain_map.exists():
            write_atomic(p.drain_map, DRAIN_MAP_INITIAL)
        text = render_haproxy_cfg(meta, p, self.cfg)
        try:
            current = p.haproxy_cfg.read_text()
        except FileNotFoundError:
            current = None
        if current != text:
            write_atomic(p.haproxy_cfg, text)
        pid = read_pidfile(p.haproxy_pid)
        running = pid is not None and process_matches(pid, p.marker)
        if running and current == text:
            return
        argv = [self.cfg.haproxy_bin, "-D", "-f", str(p.haproxy_cfg), "-p", str(p.haproxy_pid)]
        if running:
            # The configuration changed under a running HAProxy: seamless reload; the old process
            # finishes its connections and exits (delete() and lab_down() stop it if it lingers).
            argv += ["-sf", str(pid)]
        await netns.run(argv, ns=self.netns_of(meta.name), timeout_s=self.cfg.command_timeout_s)

    async def _ensure_snmpd(self, meta: InstanceMeta) -> None:
        if not self.cfg.snmpd:
            return
        async with file_lock(self.cfg.lab_dir / "instances.lock"):
            credentials = ensure_lab_snmp_secrets(self.cfg.lab_dir)
        snmpd = self.snmpd_of(meta, credentials)
        changed = snmpd.write_config()
        if snmpd.running():
            if not changed:
                return
            await snmpd.stop()
        try:
            await snmpd.start(timeout_s=self.cfg.command_timeout_s)
        except ActuatorError as exc:
            raise OrchestratorError(f"instance {meta.name}: {exc}") from exc

    # probe

    async def probe(self, instance: Instance) -> bool:
        """True iff GET / to VIP:80 from inside the instance's namespace answers 200."""
        try:
            meta = self.read_meta(instance.name)
        except OrchestratorError:
            return False
        if meta is None:
            return False
        ns = self.netns_of(meta.name)
        try:
            return await asyncio.wait_for(self._get_status(ns, meta.vip), self.cfg.probe_timeout_s) == 200
        except (OSError, ActuatorError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            return False

    async def _get_status(self, ns: str, vip: IPv4Address) -> int:
        sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (str(vip), 80))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(f"GET / HTTP/1.1\r\nHost: {vip}\r\nUser-Agent: scaler-probe\r\n"
                         "Connection: close\r\n\r\n".encode())
            await writer.drain()
            status_line = await reader.readuntil(b"\r\n")
            return int(status_line.split(b" ", 2)[1])
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    # delete

    async def delete(self, name: str) -> None:
        if not INSTANCE_NAME_RE.match(name):
            return   # no such name can exist
        async with self._lock(name):
            try:
                await self._delete(name)
            except (ActuatorError, OSError) as exc:
                raise OrchestratorError(f"delete instance {name}: {exc}") from exc

    async def _delete(self, name: str) -> None:
        p = self.paths(name)
        try:
            meta = self.read_meta(name)
        except OrchestratorError:
            meta = None     # a torn meta.json must not block deleting the rest
        for pidfile in (p.haproxy_pid, p.backend_pid, p.snmpd_pid):
            stopped = await kill_pidfile(pidfile, p.marker)
            if stopped:
                log.info("instance %s: stopped pid %d (%s)", name, *stopped)
        ns = self.netns_of(name)
        if netns.exists(ns):
            for pid, cmd in await kill_netns_processes(ns):
                log.info("instance %s: stopped pid %d left in its namespace (%s)", name, pid, cmd)
        rns = router_ns(self.cfg.lab)
        if meta is not None and netns.exists(rns) and await self._link_exists(rns, router_ifname(
                self.cfg.lab, meta.idx)):
            # Deleting the veth now (not when the kernel gets round to destroying the namespace)
            # frees the index for the next instance at once.
            await self._ip(["link", "del", router_ifname(self.cfg.lab, meta.idx)], ns=rns, check=False)
        if netns.exists(ns):
            await netns.run(["ip", "netns", "del", ns], timeout_s=self.cfg.command_timeout_s)
        # The directory (with meta.json, which holds the index) goes last.
        shutil.rmtree(p.dir, ignore_errors=True)

    # list

    async def list(self, pool: str) -> list[Instance]:
        out = []
        for meta in self._all_metas():
            if meta.pool == pool:
                out.append(self._instance(meta, self._status(meta)))
        return out

    def _status(self, meta: InstanceMeta) -> str:
        p = self.paths(meta.name)
        if not netns.exists(self.netns_of(meta.name)):
            return "error"   # a directory without its namespace: a crashed create or a lost instance
        pidfiles = (p.haproxy_pid, p.backend_pid, p.snmpd_pid) if self.cfg.snmpd else (p.haproxy_pid, p.backend_pid)
        running = all(
            (pid := read_pidfile(f)) is not None and process_matches(pid, p.marker)
            for f in pidfiles)
        if running:
            return "active"
        return "error" if meta.complete else "building"

    async def close(self) -> None:
        return None


__all__ = [
    "SNMP_SECRET_NAMES", "InstanceMeta", "LabInstanceOptions", "LabOrchestrator", "LabOrchestratorConfig",
    "allocate_index", "bridge_port_ifname", "client_ns", "ensure_lab_snmp_secrets", "instance_address",
    "instance_ifname", "instance_ns",
    "kill_netns_processes", "kill_pidfile", "lab_instance_options", "lab_snmp_secrets", "peer_address",
    "peer_ifname", "peers_ns", "pids_in_netns",
    "render_haproxy_cfg", "router_address", "router_ifname", "router_ns",
]
