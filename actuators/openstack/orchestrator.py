"""The `openstack` orchestrator: LB members as Nova servers booted on Neutron ports that carry the VIP.

For each member it makes, in this order, everything tagged `{prefix}-pool=<pool>` and
`{prefix}-op=<operation>` (ports also `{prefix}-name=<instance>` and `{prefix}-nic=<i>`):

1. one Neutron port per configured network, with the pool's security groups; the first port (the
   VIP network) lists the VIP in `allowed_address_pairs` (port security drops the VIP's traffic
   otherwise) and its fixed IP is the member's address — the next hop routers announce;
2. the server, named after the instance, booted on those ports in the pool's anti-affinity server
   group, in the least used of the pool's availability zones, with user data rendered from the
   cloud-init template (`actuators.openstack.userdata`).

Every call is idempotent: create looks for the pool's server with that name and the ports tagged
with the name before making anything, so a retry after a crash or a lost answer finishes the job
and never boots a second server; delete removes the server, waits until it is gone, then removes
the ports tagged with the name, and a missing object counts as deleted. A create the cloud refuses
(quota, conflict, bad request) removes the ports it made, so it leaves nothing behind.

openstacksdk is synchronous: every call runs in one of the driver's worker threads, bounded by
the HTTP timeout (`api_timeout_s`) and by `call_timeout_s`, and at most `max_parallel_calls` at a
time. This module must not touch servers or ports that do not carry its tags, and must not decide
anything the lifecycle decides (the launch circuit breaker lives there: the errors tell it what
happened — `QuotaExceeded`, `OrchestratorConflict`, `OrchestratorTimeout`, `InstanceErrored`,
`BuildTimeout`). Heat mode (a pool as a Heat stack) is in `actuators.openstack.heat`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import httpx

from actuators.errors import (
    BuildTimeout,
    InstanceErrored,
    InstanceNotFound,
    OrchestratorError,
    OrchestratorTimeout,
)
from actuators.openstack.api import CloudApi, PortInfo, ServerInfo, connect, refused, translate
from actuators.openstack.heat import HeatPools
from actuators.openstack.options import (
    INSTANCE_NAME_RE,
    STATUS_WORDS,
    InstanceOptions,
    OpenStackOrchestratorConfig,
    Refs,
    ServerGroupOptions,
    T,
    Tags,
    check_instance_name,
    endpoints_of,
    instance_options,
    operation_of,
    pick_zone,
)
from actuators.openstack.userdata import (
    UserDataInputs,
    render_user_data,
)
from actuators.orchestrator import Instance, InstanceSpec

log = logging.getLogger(__name__)

class OpenStackOrchestrator:
    """The Orchestrator on OpenStack (Nova + Neutron + Glance; Heat per pool if asked)."""

    def __init__(self, cfg: OpenStackOrchestratorConfig, *, api: CloudApi | None = None,
                 http: httpx.AsyncClient | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.cfg = cfg
        self.api = api or CloudApi(lambda: connect(cfg.cloud, cfg.clouds_yaml, cfg.region, cfg.api_timeout_s))
        self.tags = Tags(cfg.tag_prefix)
        self.clock, self.sleep = clock, sleep
        self._http = http
        self._own_http = http is None
        self._sem = asyncio.Semaphore(cfg.max_parallel_calls)
        self._pool = ThreadPoolExecutor(max_workers=cfg.max_parallel_calls, thread_name_prefix="openstack-sdk")
        self._name_locks: dict[str, asyncio.Lock] = {}
        self._pool_locks: dict[str, asyncio.Lock] = {}
        self._refs: dict[str, tuple[float, Refs]] = {}
        self._specs: dict[str, tuple[InstanceSpec, InstanceOptions]] = {}   # last seen per pool, for list()
        self.heat = HeatPools(self)

    # plumbing

    async def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one blocking SDK call in a worker thread, bounded; SDK failures become our errors.

        The threads are the driver's own (`max_parallel_calls` of them), not the loop's default
        executor: a slow cloud then queues only its own calls. A call that overruns
        `call_timeout_s` is abandoned, not killed; its thread ends with the HTTP timeout."""
        async with self._sem:
            try:
                job = asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
                return await asyncio.wait_for(job, self.cfg.call_timeout_s)
            except TimeoutError as exc:
                raise OrchestratorTimeout(f"{what}: no answer from the cloud within "
                                          f"{self.cfg.call_timeout_s:g}s") from exc
            except OrchestratorError:
                raise
            except Exception as exc:
                err = translate(what, exc)
                if err is None:
                    raise
                raise err from exc

    def name_lock(self, name: str) -> asyncio.Lock:
        return self._name_locks.setdefault(name, asyncio.Lock())

    def pool_lock(self, pool: str) -> asyncio.Lock:
        return self._pool_locks.setdefault(pool, asyncio.Lock())

    def options(self, spec: InstanceSpec) -> InstanceOptions:
        opts = instance_options(spec.params, spec.pool)
        self._specs[spec.pool] = (spec, opts)
        return opts

    def template_of(self, opts: InstanceOptions) -> Path:
        return opts.user_data_template or self.cfg.template_path

    async def user_data(self, spec: InstanceSpec, opts: InstanceOptions, name: str,
                        address: IPv4Address | str) -> str:
        inputs = UserDataInputs(haproxy=opts.haproxy, snmp=opts.snmp, router=opts.router)
        # Reads the template and the secret files: small, but still file I/O, so not on the loop.
        return await asyncio.to_thread(render_user_data, self.template_of(opts), inputs, name=name,
                                       pool=spec.pool, vip=spec.vip, address=address)

    async def resolve(self, pool: str, opts: InstanceOptions) -> Refs:
        """Names → ids, cached for `lookup_cache_s` (an image re-uploaded under its name is picked up)."""
        key = pool + json.dumps(opts.model_dump(mode="json", include={
            "image", "flavor", "networks", "subnet", "security_groups", "server_group"}), sort_keys=True)
        now = time.monotonic()
        hit = self._refs.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        what = f"pool {pool}: look up"
        image_id = await self.call(f"{what} image {opts.image!r}", self.api.image_id, opts.image)
        flavor_id = await self.call(f"{what} flavor {opts.flavor!r}", self.api.flavor_id, opts.flavor)
        nets = tuple([await self.call(f"{what} network {n!r}", self.api.network_id, n) for n in opts.networks])
        subnet_id = None
        if opts.subnet is not None:
            subnet_id = await self.call(f"{what} subnet {opts.subnet!r}", self.api.subnet_id, opts.subnet, nets[0])
        sgs = tuple([await self.call(f"{what} security group {g!r}", self.api.security_group_id, g)
                     for g in opts.security_groups])
        group_id = await self.server_group(pool, opts.server_group) if opts.server_group else None
        refs = Refs(image_id, flavor_id, nets, subnet_id, sgs, group_id)
        self._refs[key] = (now + self.cfg.lookup_cache_s, refs)
        return refs

    async def server_group(self, pool: str, sg: ServerGroupOptions) -> str:
        name = sg.name or f"{self.cfg.tag_prefix}-{pool}"
        async with self.pool_lock(pool):
            found = await self.call(f"pool {pool}: list server groups", self.api.server_groups, name)
            if found:
                gid, policy = sorted(found)[0]
                if policy != sg.policy:
                    raise OrchestratorError(f"pool {pool}: server group {name} ({gid}) has policy {policy}, "
                                            f"the pool asks for {sg.policy}; rename one of them")
                return gid
            gid = await self.call(f"pool {pool}: create server group {name}", self.api.create_server_group,
                                  name, sg.policy)
            log.info("pool %s: created server group %s (%s, %s)", pool, name, gid, sg.policy, extra={"pool": pool})
            return gid

    # create

    async def create(self, spec: InstanceSpec, name: str) -> Instance:
        check_instance_name(name)
        opts = self.options(spec)
        if opts.heat is not None:
            return await self.heat.create(spec, opts, name)
        async with self.name_lock(name):
            what = f"create instance {name}"
            # Nova filters by tag and name (a regular expression) server-side: a cheap lookup.
            mine = [s for s in await self.call(f"{what}: look for its server", self.api.servers,
                                               tags=[self.tags.pool(spec.pool)], name=name) if s.name == name]
            ports = await self.call(f"{what}: list its ports", self.api.ports, tags=[self.tags.name(name)])
            if mine:
                server = await self._keep_one(name, mine, ports)
                return self._instance(spec, opts, name, server, ports)
            refs = await self.resolve(spec.pool, opts)
            booting = False
            try:
                ports = await self._ensure_ports(spec, opts, name, refs, ports)
                address = self._vip_address(name, ports)
                user_data = await self.user_data(spec, opts, name, address)
                zone = None
                if len(opts.availability_zones) > 1:      # spreading needs the pool's zones
                    zone = pick_zone(opts.availability_zones, await self.call(
                        f"{what}: list the pool's servers", self.api.servers, tags=[self.tags.pool(spec.pool)]))
                elif opts.availability_zones:
                    zone = opts.availability_zones[0]
                booting = True
                server_id = await self._boot(spec, opts, name, refs, ports, address, user_data, zone)
            except OrchestratorError as exc:
                if not booting or refused(exc):
                    # No server can exist (we never asked, or the cloud said no): take back the
                    # ports. After a lost answer we keep them: Nova may be booting on them, and the
                    # retry (or the delete of the failed member) finds them by their tags.
                    await self._delete_free_ports(name)
                raise
            log.info("instance %s: server %s booting on %s (pool %s)", name, server_id, address, spec.pool,
                     extra={"pool": spec.pool, "member": name})
            return Instance(name, spec.pool, address, "building", endpoints_of(opts, name, address, server_id))

    async def _boot(self, spec: InstanceSpec, opts: InstanceOptions, name: str, refs: Refs,
                    ports: Sequence[PortInfo], address: IPv4Address, user_data: str, zone: str | None) -> str:
        op = operation_of(spec.pool, name)
        tags = [self.tags.pool(spec.pool), *([self.tags.op(op)] if op else []), *opts.tags]
        metadata = {**opts.metadata, self.tags.meta("pool"): spec.pool, self.tags.meta("name"): name,
                    self.tags.meta("vip"): str(spec.vip), **({self.tags.meta("op"): op} if op else {})}
        return await self.call(
            f"create instance {name}: boot server", self.api.create_server, name=name, image_id=refs.image_id,
            flavor_id=refs.flavor_id, port_ids=[p.id for p in self._ordered(ports)], user_data=user_data,
            key_name=opts.key_name, availability_zone=zone,
            metadata=metadata, tags=tags, group_id=refs.group_id)

    def _ordered(self, ports: Sequence[PortInfo]) -> list[PortInfo]:
        return sorted(ports, key=lambda p: int(self.tags.value(p.tags, "nic") or 0))

    def _vip_address(self, name: str, ports: Sequence[PortInfo]) -> IPv4Address:
        vip_port = next((p for p in ports if self.tags.value(p.tags, "nic") == "0"), None)
        if vip_port is None or not vip_port.addresses:
            raise OrchestratorError(f"instance {name}: its port on the VIP network has no IPv4 address")
        return vip_port.addresses[0]

    async def _ensure_ports(self, spec: InstanceSpec, opts: InstanceOptions, name: str, refs: Refs,
                            existing: Sequence[PortInfo]) -> list[PortInfo]:
        """One port per network, reusing the ones an earlier attempt made (found by their tags)."""
        op = operation_of(spec.pool, name)
        out: list[PortInfo] = []
        for i, net in enumerate(refs.network_ids):
            have = next((p for p in existing if self.tags.value(p.tags, "nic") == str(i)), None)
            if have is not None and have.network_id == net and not have.device_id:
                out.append(have)
                continue
            if have is not None:
                raise OrchestratorError(f"instance {name}: port {have.id} tagged as its NIC {i} is on network "
                                        f"{have.network_id} / bound to {have.device_id or 'nothing'}; "
                                        f"delete the instance and retry")
            tags = [self.tags.pool(spec.pool), self.tags.name(name), self.tags.nic(i),
                    *([self.tags.op(op)] if op else [])]
            port = await self.call(
                f"create instance {name}: create port on network {net}", self.api.create_port,
                name=f"{name}-nic{i}", network_id=net, subnet_id=refs.subnet_id if i == 0 else None,
                security_group_ids=list(refs.security_group_ids),
                allowed_addresses=[str(spec.vip)] if i == 0 else [], tags=tags,
                description=f"scaler pool {spec.pool}, instance {name}" + (" (VIP next hop)" if i == 0 else ""))
            out.append(port)
        return out

    async def _delete_free_ports(self, name: str) -> None:
        try:
            ports = await self.call(f"instance {name}: list its ports", self.api.ports, tags=[self.tags.name(name)])
            for p in ports:
                if not p.device_id:
                    await self.call(f"instance {name}: delete port {p.id}", self.api.delete_port, p.id)
        except OrchestratorError as exc:     # the lifecycle's delete of the failed member retries it
            log.warning("instance %s: ports not cleaned up after a refused create: %s", name, exc,
                        extra={"member": name})

    async def _keep_one(self, name: str, servers: Sequence[ServerInfo], ports: Sequence[PortInfo]) -> ServerInfo:
        """One server per name: keep the one on our ports (else the oldest), delete the others."""
        if len(servers) == 1:
            return servers[0]
        bound = {p.device_id for p in ports if p.device_id}
        keep = sorted(servers, key=lambda s: (s.id not in bound, s.created or 0.0, s.id))[0]
        for s in servers:
            if s.id != keep.id:
                log.warning("instance %s: deleting duplicate server %s (keeping %s)", name, s.id, keep.id,
                            extra={"member": name})
                await self.call(f"instance {name}: delete duplicate server {s.id}", self.api.delete_server, s.id)
        return keep

    def _instance(self, spec: InstanceSpec | None, opts: InstanceOptions | None, name: str, server: ServerInfo,
                  ports: Sequence[PortInfo]) -> Instance:
        vip_port = next((p for p in ports if self.tags.value(p.tags, "nic") == "0" and p.addresses), None)
        address = vip_port.addresses[0] if vip_port else (server.addresses[0] if server.addresses else None)
        pool = self.tags.value(server.tags, "pool") or (spec.pool if spec else "")
        if opts is not None and address is not None:
            endpoints = endpoints_of(opts, name, address, server.id)
        else:
            endpoints = {"server_id": server.id}
        return Instance(name, pool, address, STATUS_WORDS.get(server.status, server.status.lower()), endpoints)

    # probe

    async def probe(self, instance: Instance) -> bool:
        server = await self._server_of(instance)
        name = instance.name
        if server is None or server.status in ("DELETED", "SOFT_DELETED"):
            raise InstanceNotFound(f"instance {name}: its server is gone")
        if server.status == "ERROR":
            raise InstanceErrored(f"instance {name}: server {server.id} is in ERROR: "
                                  f"{server.fault or 'no fault given'}")
        if server.status == "BUILD":
            age = self.clock() - server.created if server.created is not None else 0.0
            if age > self.cfg.build_timeout_s:
                raise BuildTimeout(f"instance {name}: server {server.id} still in BUILD after {age:.0f}s "
                                   f"(build_timeout_s {self.cfg.build_timeout_s:g})")
            return False
        if server.status != "ACTIVE":
            return False
        url = instance.endpoints.get("health_url")
        if not url:
            return True
        return await self._http_ok(url)

    async def _server_of(self, instance: Instance) -> ServerInfo | None:
        sid = instance.endpoints.get("server_id")
        what = f"probe instance {instance.name}"
        if sid:
            return await self.call(what, self.api.server, sid)
        found = [s for s in await self.call(what, self.api.servers, name=instance.name) if s.name == instance.name]
        return found[0] if found else None

    async def _http_ok(self, url: str) -> bool:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.cfg.probe_timeout_s)
        try:
            resp = await self._http.get(url, timeout=self.cfg.probe_timeout_s)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    # delete

    async def delete(self, name: str) -> None:
        if not INSTANCE_NAME_RE.match(name):
            return          # no such name can exist
        async with self.name_lock(name):
            what = f"delete instance {name}"
            servers = [s for s in await self.call(f"{what}: find its server", self.api.servers, name=name)
                       if s.name == name and self.tags.value(s.tags, "pool") is not None]
            stack = next((s.metadata.get(self.tags.meta("stack")) for s in servers
                          if s.metadata.get(self.tags.meta("stack"))), None)
            if stack is not None:
                await self.heat.delete(name, servers)
            else:
                for s in servers:
                    await self.call(f"{what}: delete server {s.id}", self.api.delete_server, s.id)
                await self.wait_gone(name, [s.id for s in servers])
            ports = await self.call(f"{what}: list its ports", self.api.ports, tags=[self.tags.name(name)])
            for p in ports:
                await self.call(f"{what}: delete port {p.id}", self.api.delete_port, p.id)
            if servers or ports:
                log.info("instance %s: deleted %d server(s), %d port(s)", name, len(servers), len(ports),
                         extra={"member": name})
        self._name_locks.pop(name, None)

    async def wait_gone(self, name: str, server_ids: Sequence[str]) -> None:
        deadline = time.monotonic() + self.cfg.delete_timeout_s
        pending = list(server_ids)
        while pending:
            still = []
            for sid in pending:
                s = await self.call(f"delete instance {name}: check server {sid}", self.api.server, sid)
                if s is not None and s.status not in ("DELETED", "SOFT_DELETED"):
                    still.append(sid)
            pending = still
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise OrchestratorTimeout(f"delete instance {name}: server(s) {', '.join(pending)} still there "
                                          f"after {self.cfg.delete_timeout_s:g}s")
            await self.sleep(self.cfg.poll_interval_s)

    # list

    async def list(self, pool: str) -> list[Instance]:
        what = f"list pool {pool}"
        servers = await self.call(what, self.api.servers, tags=[self.tags.pool(pool)])
        ports = await self.call(what, self.api.ports, tags=[self.tags.pool(pool)])
        by_name: dict[str, list[PortInfo]] = {}
        for p in ports:
            n = self.tags.value(p.tags, "name")
            if n is not None:
                by_name.setdefault(n, []).append(p)
        last = self._specs.get(pool)
        spec, opts = last if last is not None else (None, None)
        return [self._instance(spec, opts, s.name, s, by_name.get(s.name, [])) for s in servers]

    async def close(self) -> None:
        if self._http is not None and self._own_http:
            with contextlib.suppress(Exception):
                await self._http.aclose()
        self._http = None
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, self.api.close)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["OpenStackOrchestrator"]
