"""Heat mode of the `openstack` orchestrator: a pool is one Heat stack whose ResourceGroup holds the
members (template: `actuators/openstack/templates/heat/pool.yaml` + `member.yaml`, shipped as package
data and used when `heat.template` is unset, or the operator's own with the same parameters).

The driver keeps the group's membership in three stack parameters, so Heat itself is the durable
record: `count`, `member_names` (group index → instance name; the nested template names each server
after it) and `removal_policies` (every index removed so far). Heat names group members by the first
`count` integers it has not removed, so the index of a new member is known before the update, and a
scale-in removes exactly the member the scaler drained. Stack updates of one pool are serialized
(one lock per pool; a 409 "in progress" from Heat's legacy engine is waited out). Servers and ports
carry the same tags as in Nova mode, so probe, list and the port clean-up are shared with
`actuators.openstack.orchestrator`. This module must not delete a stack: a pool's stack outlives its members.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from ipaddress import IPv4Address
from typing import Any, Protocol, TypeVar

from actuators.errors import (
    OrchestratorConflict,
    OrchestratorError,
    OrchestratorTimeout,
    QuotaExceeded,
)
from actuators.openstack.api import CloudApi, PortInfo, ServerInfo, StackInfo
from actuators.openstack.options import STATUS_WORDS, InstanceOptions, OpenStackOrchestratorConfig, Tags, endpoints_of
from actuators.orchestrator import Instance, InstanceSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

# Left in the user data for member.yaml to fill (str_replace) once Heat knows them.
NAME_TOKEN = "__SCALER_NAME__"
ADDRESS_TOKEN = "__SCALER_ADDRESS__"


def _json_param(params: Mapping[str, Any], key: str, default: Any) -> Any:
    """Heat shows parameter values as strings; json ones are serialised."""
    raw = params.get(key)
    if raw is None or raw == "":
        return default
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return default
    return raw


def membership(stack: StackInfo | None) -> tuple[dict[str, str], list[str]]:
    """(group index → instance name, removed indexes) as the stack's parameters hold them."""
    if stack is None:
        return {}, []
    names = {str(k): str(v) for k, v in dict(_json_param(stack.parameters, "member_names", {})).items()}
    removed: list[str] = []
    for policy in _json_param(stack.parameters, "removal_policies", []) or []:
        removed += [str(i) for i in policy.get("resource_list", [])]
    return names, removed


def next_index(names: Mapping[str, str], removed: Sequence[str]) -> str:
    """The index Heat will give the next member: the lowest integer neither used nor removed."""
    i = 0
    while str(i) in names or str(i) in removed:
        i += 1
    return str(i)


def membership_parameters(names: Mapping[str, str], removed: Sequence[str]) -> dict[str, Any]:
    return {"count": len(names), "member_names": dict(names),
            "removal_policies": [{"resource_list": list(removed)}] if removed else []}


class Plumbing(Protocol):
    """What Heat mode borrows from the OpenStack driver (`OpenStackOrchestrator` provides it)."""

    cfg: OpenStackOrchestratorConfig
    api: CloudApi
    tags: Tags
    sleep: Callable[[float], Awaitable[None]]

    async def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    def pool_lock(self, pool: str) -> asyncio.Lock: ...

    async def user_data(self, spec: InstanceSpec, opts: InstanceOptions, name: str,
                        address: IPv4Address | str) -> str: ...

    async def wait_gone(self, name: str, server_ids: Sequence[str]) -> None: ...


class HeatPools:
    """create/delete of members of Heat-managed pools, on behalf of the OpenStack driver."""

    def __init__(self, driver: Plumbing) -> None:
        self.d = driver

    def stack_name(self, pool: str, opts: InstanceOptions) -> str:
        assert opts.heat is not None
        return opts.heat.stack_name or f"{self.d.cfg.tag_prefix}-{pool}"

    async def parameters(self, spec: InstanceSpec, opts: InstanceOptions, stack: str) -> dict[str, Any]:
        assert opts.heat is not None
        t = self.d.tags
        user_data = await self.d.user_data(spec, opts, NAME_TOKEN, ADDRESS_TOKEN)
        metadata = {**opts.metadata, t.meta("pool"): spec.pool, t.meta("vip"): str(spec.vip), t.meta("stack"): stack}
        return {
            "pool": spec.pool, "tag_prefix": self.d.cfg.tag_prefix, "vip": str(spec.vip), "image": opts.image,
            "flavor": opts.flavor, "key_name": opts.key_name or "", "network": opts.networks[0],
            "security_groups": ",".join(opts.security_groups),
            "server_group_policy": opts.server_group.policy if opts.server_group else "soft-anti-affinity",
            "user_data": user_data, "metadata": metadata, **opts.heat.parameters,
        }

    # create

    async def create(self, spec: InstanceSpec, opts: InstanceOptions, name: str) -> Instance:
        assert opts.heat is not None
        sname, heat = self.stack_name(spec.pool, opts), opts.heat
        what = f"create instance {name} (stack {sname})"
        async with self.d.pool_lock(spec.pool):
            stack = await self.d.call(f"{what}: read the stack", self.d.api.stack, sname)
            names, removed = membership(stack)
            if name not in names.values():
                index = next_index(names, removed)
                names[index] = name
                params = {**await self.parameters(spec, opts, sname), **membership_parameters(names, removed)}
                template, files = await self.d.call(f"{what}: read {heat.template_path}",
                                                    self.d.api.template_contents, heat.template_path)
                if stack is None:
                    await self.d.call(f"{what}: create the stack", self.d.api.create_stack, sname, template, files,
                                      params, heat.timeout_mins)
                else:
                    await self._update(what, sname, lambda s: self.d.api.update_stack(
                        s, template, files, params, heat.timeout_mins))
                log.info("instance %s: stack %s updated to %d members (index %s)", name, sname, len(names), index,
                         extra={"pool": spec.pool, "member": name})
            server, ports = await self._wait_member(what, spec.pool, sname, name)
        address = next((p.addresses[0] for p in ports if p.addresses), None)
        if address is None:
            raise OrchestratorError(f"{what}: its port has no IPv4 address")
        return Instance(name, spec.pool, address, STATUS_WORDS.get(server.status, server.status.lower()),
                        endpoints_of(opts, name, address, server.id))

    async def _wait_member(self, what: str, pool: str, sname: str,
                           name: str) -> tuple[ServerInfo, list[PortInfo]]:
        """Until Heat made the member's server and port; a failed stack without it undoes the add."""
        deadline = time.monotonic() + self.d.cfg.call_timeout_s
        t = self.d.tags
        while True:
            servers = [s for s in await self.d.call(f"{what}: find its server", self.d.api.servers,
                                                    tags=[t.pool(pool)]) if s.name == name]
            ports = await self.d.call(f"{what}: find its port", self.d.api.ports, tags=[t.name(name)])
            if servers and any(p.addresses for p in ports):
                return servers[0], ports
            stack = await self.d.call(f"{what}: read the stack", self.d.api.stack, sname)
            if stack is None:
                raise OrchestratorError(f"{what}: the stack is gone")
            if stack.status.endswith("_FAILED"):
                await self._remove(what, sname, name)
                reason = stack.status_reason or stack.status
                if "quota" in reason.lower():
                    raise QuotaExceeded(f"{what}: stack {stack.status}: {reason}")
                raise OrchestratorError(f"{what}: stack {stack.status}: {reason}")
            if time.monotonic() >= deadline:
                raise OrchestratorTimeout(f"{what}: Heat has not made the server within "
                                          f"{self.d.cfg.call_timeout_s:g}s (stack {stack.status})")
            await self.d.sleep(self.d.cfg.poll_interval_s)

    async def _update(self, what: str, sname: str, send: Any) -> None:
        """One stack update, waiting out a running one (Heat's legacy engine answers 409)."""
        deadline = time.monotonic() + self.d.cfg.call_timeout_s
        while True:
            stack = await self.d.call(f"{what}: read the stack", self.d.api.stack, sname)
            if stack is None:
                raise OrchestratorError(f"{what}: stack {sname} is gone")
            if not stack.status.endswith("_IN_PROGRESS"):
                try:
                    await self.d.call(f"{what}: update the stack", send, stack)
                    return
                except OrchestratorConflict:
                    pass        # another update started in between: wait for it
            if time.monotonic() >= deadline:
                raise OrchestratorTimeout(f"{what}: stack {sname} stayed {stack.status} for "
                                          f"{self.d.cfg.call_timeout_s:g}s")
            await self.d.sleep(self.d.cfg.poll_interval_s)

    async def _remove(self, what: str, sname: str, name: str) -> bool:
        """Take `name` out of the group (its index is never reused). False if it was not in it."""
        stack = await self.d.call(f"{what}: read the stack", self.d.api.stack, sname)
        names, removed = membership(stack)
        index = next((i for i, n in names.items() if n == name), None)
        if stack is None or index is None:
            return False
        del names[index]
        removed.append(index)
        await self._update(what, sname, lambda s: self.d.api.patch_stack(s, membership_parameters(names, removed)))
        log.info("instance %s: removed from stack %s (index %s)", name, sname, index, extra={"member": name})
        return True

    # delete

    async def delete(self, name: str, servers: Sequence[ServerInfo]) -> None:
        """Take the member out of its stack's group; Heat deletes its server and port."""
        t = self.d.tags
        for s in servers:
            sname, pool = s.metadata.get(t.meta("stack")), t.value(s.tags, "pool")
            removed = False
            if sname and pool:
                async with self.d.pool_lock(pool):
                    removed = await self._remove(f"delete instance {name} (stack {sname})", sname, name)
            if not removed:     # the group does not count it (any more): delete the server itself
                await self.d.call(f"delete instance {name}: delete server {s.id}", self.d.api.delete_server, s.id)
        await self.d.wait_gone(name, [s.id for s in servers])


__all__ = ["ADDRESS_TOKEN", "NAME_TOKEN", "HeatPools", "membership", "membership_parameters", "next_index"]
