"""The synchronous side of the `openstack` driver: the few openstacksdk calls it makes, each
returning plain frozen values, and the translation of the SDK's failures into our errors.

openstacksdk blocks, so the async driver runs every method of `CloudApi` in a worker thread
(`asyncio.to_thread`) and never touches an SDK object on the event loop: everything crossing back
is a `ServerInfo`, `PortInfo`, `StackInfo` or a string. Nothing here decides anything; this module
must not import the event loop's code nor hold state beyond the connection.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any

from actuators.errors import (
    OrchestratorConflict,
    OrchestratorError,
    OrchestratorTimeout,
    QuotaExceeded,
)


@dataclass(frozen=True, slots=True)
class ServerInfo:
    id: str
    name: str
    status: str                                # Nova's word: BUILD, ACTIVE, ERROR, DELETED, …
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    created: float | None = None               # unix time, from Nova's `created`
    fault: str = ""
    availability_zone: str = ""
    task_state: str | None = None
    addresses: tuple[IPv4Address, ...] = ()


@dataclass(frozen=True, slots=True)
class PortInfo:
    id: str
    name: str
    network_id: str
    tags: tuple[str, ...] = ()
    addresses: tuple[IPv4Address, ...] = ()
    device_id: str = ""
    allowed_address_pairs: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StackInfo:
    id: str
    name: str
    status: str                                # e.g. UPDATE_IN_PROGRESS, UPDATE_COMPLETE, UPDATE_FAILED
    status_reason: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)


def _ipv4s(values: Iterable[str]) -> tuple[IPv4Address, ...]:
    out = []
    for v in values:
        try:
            addr = ip_address(v)
        except ValueError:
            continue
        if isinstance(addr, IPv4Address):
            out.append(addr)
    return tuple(out)


def _unix(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def server_info(s: Any) -> ServerInfo:
    addrs = [a.get("addr", "") for net in (s.addresses or {}).values() for a in net]
    fault = s.fault or {}
    return ServerInfo(id=s.id, name=s.name or "", status=(s.status or "").upper(), tags=tuple(s.tags or ()),
                      metadata=dict(s.metadata or {}), created=_unix(s.created_at),
                      fault=str(fault.get("message", "")) if isinstance(fault, dict) else str(fault),
                      availability_zone=s.availability_zone or "", task_state=s.task_state,
                      addresses=_ipv4s(addrs))


def port_info(p: Any) -> PortInfo:
    return PortInfo(id=p.id, name=p.name or "", network_id=p.network_id or "", tags=tuple(p.tags or ()),
                    addresses=_ipv4s(ip.get("ip_address", "") for ip in p.fixed_ips or ()),
                    device_id=p.device_id or "",
                    allowed_address_pairs=tuple(a.get("ip_address", "") for a in p.allowed_address_pairs or ()),
                    security_groups=tuple(p.security_group_ids or ()))


# ---- errors --------------------------------------------------------------------------------------

def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind an error we raised from an SDK failure (None: no answer was received)."""
    cause = exc.__cause__ if isinstance(exc, OrchestratorError) else exc
    status = getattr(cause, "status_code", None)
    return status if isinstance(status, int) else None


def refused(exc: BaseException) -> bool:
    """True if the cloud answered with a definite refusal (4xx): the request took no effect."""
    status = http_status(exc)
    return status is not None and 400 <= status < 500 and status not in (408, 429)


def translate(what: str, exc: BaseException) -> OrchestratorError | None:
    """Our error for an SDK/keystoneauth failure, or None if `exc` is not one of theirs."""
    from keystoneauth1 import exceptions as ksa
    from openstack import exceptions as sdk

    if isinstance(exc, sdk.HttpException) and exc.status_code is not None:
        status = exc.status_code
        text = " ".join(str(x) for x in (exc.message, exc.details) if x) or str(exc)
        low = text.lower()
        if (status in (403, 413) and "quota" in low) or (status == 409 and ("overquota" in low or "quota" in low)):
            return QuotaExceeded(f"{what}: quota exceeded (HTTP {status}): {text}")
        if status == 409:
            return OrchestratorConflict(f"{what}: conflict (HTTP 409): {text}")
        if status in (408, 504):
            return OrchestratorTimeout(f"{what}: the cloud timed out (HTTP {status}): {text}")
        return OrchestratorError(f"{what}: HTTP {status}: {text}")
    if isinstance(exc, ksa.ConnectTimeout | ksa.http.RequestTimeout | ksa.http.GatewayTimeout):
        return OrchestratorTimeout(f"{what}: the cloud did not answer in time: {exc}")
    if isinstance(exc, ksa.ConnectFailure):
        return OrchestratorError(f"{what}: connection to the cloud failed (the request may or may not have "
                                 f"taken effect): {exc}")
    if isinstance(exc, ksa.Unauthorized | ksa.MissingRequiredOptions | ksa.auth_plugins.MissingAuthPlugin):
        return OrchestratorError(f"{what}: authentication with the cloud failed: {exc}")
    if isinstance(exc, ksa.ClientException | sdk.SDKException):
        return OrchestratorError(f"{what}: {type(exc).__name__}: {exc}")
    return None


# ---- the connection ------------------------------------------------------------------------------

def connect(cloud: str | None, clouds_yaml: Path | None, region: str | None, api_timeout_s: float) -> Any:
    """An openstacksdk Connection configured the way the OpenStack CLI would be.

    `cloud` names an entry of clouds.yaml (searched where the CLI searches, or `clouds_yaml`);
    without it the usual OS_* environment variables are used. Connection retries are forced to 0:
    a POST retried after a lost answer could boot a second server, and the driver's own
    idempotent retry (look up by tags first) is the safe one.
    """
    try:
        from openstack import config as os_config
        from openstack import connection
    except ModuleNotFoundError as exc:     # an extra (pyproject.toml): the core install goes without it
        raise OrchestratorError(f"the openstack orchestrator needs openstacksdk ({exc}): "
                                "pip install 'scaler[openstack]'") from None

    loader = os_config.OpenStackConfig(config_files=[str(clouds_yaml)] if clouds_yaml else None,
                                       load_envvars=cloud is None, app_name="scaler")
    cloud_region = loader.get_one(cloud=cloud, region_name=region, api_timeout=api_timeout_s,
                                  connect_retries=0)
    return connection.Connection(config=cloud_region)


class CloudApi:
    """The SDK calls the driver makes. Every method blocks: call it from a worker thread."""

    def __init__(self, connection_factory: Callable[[], Any]) -> None:
        self._factory = connection_factory
        self._conn: Any = None
        self._lock = threading.Lock()     # worker threads race for the first connection

    @property
    def conn(self) -> Any:
        with self._lock:
            if self._conn is None:
                self._conn = self._factory()
            return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # lookups (names or ids → ids)

    def image_id(self, name_or_id: str) -> str:
        return str(self.conn.image.find_image(name_or_id, ignore_missing=False).id)

    def flavor_id(self, name_or_id: str) -> str:
        return str(self.conn.compute.find_flavor(name_or_id, ignore_missing=False).id)

    def network_id(self, name_or_id: str) -> str:
        return str(self.conn.network.find_network(name_or_id, ignore_missing=False).id)

    def subnet_id(self, name_or_id: str, network_id: str) -> str:
        return str(self.conn.network.find_subnet(name_or_id, ignore_missing=False, network_id=network_id).id)

    def security_group_id(self, name_or_id: str) -> str:
        return str(self.conn.network.find_security_group(name_or_id, ignore_missing=False).id)

    # server groups

    def server_groups(self, name: str) -> list[tuple[str, str]]:
        """(id, policy) of this project's server groups called `name`."""
        out = []
        for g in self.conn.compute.server_groups():
            if g.name == name:
                policy = g.policy or (g.policies[0] if g.policies else "")
                out.append((str(g.id), str(policy)))
        return out

    def create_server_group(self, name: str, policy: str) -> str:
        return str(self.conn.compute.create_server_group(name=name, policy=policy).id)

    # servers

    def servers(self, *, tags: Iterable[str] = (), name: str | None = None) -> list[ServerInfo]:
        query: dict[str, Any] = {}
        tags = list(tags)
        if tags:
            query["tags"] = ",".join(tags)
        if name is not None:
            query["name"] = f"^{re.escape(name)}$"    # Nova's name filter is a regular expression
        return [server_info(s) for s in self.conn.compute.servers(details=True, **query)]

    def server(self, server_id: str) -> ServerInfo | None:
        from openstack import exceptions as sdk
        try:
            return server_info(self.conn.compute.get_server(server_id))
        except sdk.NotFoundException:
            return None

    def create_server(self, *, name: str, image_id: str, flavor_id: str, port_ids: list[str], user_data: str,
                      key_name: str | None, availability_zone: str | None, metadata: Mapping[str, str],
                      tags: list[str], group_id: str | None) -> str:
        attrs: dict[str, Any] = {
            "name": name, "image_id": image_id, "flavor_id": flavor_id,
            "networks": [{"port": p} for p in port_ids],
            "user_data": base64.b64encode(user_data.encode()).decode(),
            "metadata": dict(metadata), "tags": tags,
        }
        if key_name:
            attrs["key_name"] = key_name
        if availability_zone:
            attrs["availability_zone"] = availability_zone
        if group_id:
            attrs["scheduler_hints"] = {"group": group_id}
        return str(self.conn.compute.create_server(**attrs).id)

    def delete_server(self, server_id: str) -> None:
        self.conn.compute.delete_server(server_id, ignore_missing=True)

    # ports

    def ports(self, *, tags: Iterable[str]) -> list[PortInfo]:
        return [port_info(p) for p in self.conn.network.ports(tags=",".join(tags))]

    def create_port(self, *, name: str, network_id: str, subnet_id: str | None, security_group_ids: list[str],
                    allowed_addresses: list[str], tags: list[str], description: str) -> PortInfo:
        attrs: dict[str, Any] = {
            "name": name, "network_id": network_id, "security_group_ids": security_group_ids,
            "allowed_address_pairs": [{"ip_address": a} for a in allowed_addresses],
            "tags": tags, "description": description,
        }
        if subnet_id:
            attrs["fixed_ips"] = [{"subnet_id": subnet_id}]
        from openstack import exceptions as sdk
        try:
            port = self.conn.network.create_port(**attrs)
        except sdk.BadRequestException as exc:
            # Neutron without tags-on-create refuses the attribute: create, then tag.
            if "tags" not in str(exc):
                raise
            port = self.conn.network.create_port(**{k: v for k, v in attrs.items() if k != "tags"})
        if set(tags) - set(port.tags or ()):
            port = self.conn.network.set_tags(port, list(tags))
        return port_info(port)

    def delete_port(self, port_id: str) -> None:
        self.conn.network.delete_port(port_id, ignore_missing=True)

    # stacks (Heat mode)

    def stack(self, name: str) -> StackInfo | None:
        from openstack import exceptions as sdk
        try:
            found = self.conn.orchestration.find_stack(name, ignore_missing=True)
            if found is None:
                return None
            s = self.conn.orchestration.get_stack(found.id)
        except sdk.NotFoundException:
            return None
        if s is None or str(s.status or "").upper() == "DELETE_COMPLETE":
            return None
        return StackInfo(id=str(s.id), name=str(s.name), status=str(s.status or "").upper(),
                         status_reason=s.status_reason or "", parameters=dict(s.parameters or {}))

    def create_stack(self, name: str, template: Mapping[str, Any], files: Mapping[str, str],
                     parameters: Mapping[str, Any], timeout_mins: int) -> str:
        s = self.conn.orchestration.create_stack(name=name, template=dict(template), files=dict(files),
                                                 parameters=dict(parameters), timeout_mins=timeout_mins)
        return str(s.id)

    def update_stack(self, stack: StackInfo, template: Mapping[str, Any], files: Mapping[str, str],
                     parameters: Mapping[str, Any], timeout_mins: int) -> None:
        """PUT: the whole template (the operator may have edited it) and every parameter."""
        self.conn.orchestration.update_stack(stack.id, name=stack.name, template=dict(template),
                                             files=dict(files), parameters=dict(parameters),
                                             timeout_mins=timeout_mins)

    def patch_stack(self, stack: StackInfo, parameters: Mapping[str, Any]) -> None:
        """PATCH: keep the stack's template and parameters, change only these (Heat's "existing")."""
        from openstack import exceptions as sdk
        resp = self.conn.orchestration.patch(f"/stacks/{stack.name}/{stack.id}",
                                             json={"parameters": dict(parameters)})
        sdk.raise_from_response(resp)

    @staticmethod
    def template_contents(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """A HOT template and the nested templates it names (as `files`), the way the CLI sends them."""
        from openstack.orchestration.util import template_utils
        files, template = template_utils.get_template_contents(template_file=str(path))
        if template is None:
            raise OrchestratorError(f"Heat template {path}: empty")
        return template, files


__all__ = ["CloudApi", "PortInfo", "ServerInfo", "StackInfo", "connect", "http_status", "refused", "translate"]
