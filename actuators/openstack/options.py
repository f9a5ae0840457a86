"""The `openstack` driver's options (scaler.yaml's `orchestrator.options`, a pool's `instance:`), its
tag scheme and the small pure helpers shared by the Nova/Neutron path and the Heat path. No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from actuators.errors import (
    OrchestratorError,
)
from actuators.openstack.api import ServerInfo
from actuators.openstack.userdata import (
    SHIPPED_TEMPLATE,
    HAProxyOptions,
    RouterOptions,
    SnmpOptions,
    load_template,
)

T = TypeVar("T")
# The Heat templates shipped as package data (pool.yaml uses member.yaml beside it).
SHIPPED_HEAT_TEMPLATE = Path(str(resources.files("actuators.openstack") / "templates" / "heat" / "pool.yaml"))
# Instance names become server names, hostnames and tag values: keep them plain.
INSTANCE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# Nova tags are at most 60 characters: "{prefix}-pool=" + a pool name (≤ 40) must fit.
TAG_PREFIX_PATTERN = r"^[a-z][a-z0-9]{0,11}$"
STATUS_WORDS = {"BUILD": "building", "ACTIVE": "active", "ERROR": "error", "DELETED": "deleted",
                "SOFT_DELETED": "deleted"}


# ---- configuration --------------------------------------------------------------------------------

class ServerGroupOptions(BaseModel):
    """The Nova server group the pool's members boot in, made on first use if missing."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="default: {tag_prefix}-{pool}")
    # anti-affinity: members on different hypervisors, or the boot fails (ERROR "No valid host").
    # soft-anti-affinity: spread when possible, never fail for it.
    policy: Literal["anti-affinity", "soft-anti-affinity"] = "anti-affinity"


class HeatOptions(BaseModel):
    """Heat mode: the pool is one stack whose ResourceGroup holds the members (see openstack_heat)."""

    model_config = ConfigDict(extra="forbid")

    template: Path | None = Field(default=None,
                                  description=f"the pool's HOT template; default: {SHIPPED_HEAT_TEMPLATE}")
    stack_name: str | None = Field(default=None, description="default: {tag_prefix}-{pool}")
    parameters: dict[str, Any] = Field(default_factory=dict, description="extra template parameters")
    timeout_mins: int = Field(default=30, ge=1)

    @property
    def template_path(self) -> Path:
        return self.template or SHIPPED_HEAT_TEMPLATE


class InstanceOptions(BaseModel):
    """A pool's `instance:` options in scaler.yaml, as this driver reads them."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(description="Glance image name or id")
    flavor: str = Field(description="Nova flavor name or id")
    networks: list[str] = Field(min_length=1, description="network names or ids; the first carries the VIP")
    subnet: str | None = Field(default=None, description="subnet of the first network for the fixed IP")
    security_groups: list[str] = Field(default_factory=lambda: ["default"])
    key_name: str | None = None
    availability_zones: list[str] = Field(default_factory=list, description="members spread over these")
    server_group: ServerGroupOptions | None = Field(default_factory=ServerGroupOptions)
    metadata: dict[str, str] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list, description="extra server tags")
    user_data_template: Path | None = Field(default=None, description="overrides the driver's template")
    haproxy: HAProxyOptions
    snmp: SnmpOptions | None = None
    router: RouterOptions = Field(default_factory=RouterOptions)
    # http: the member is healthy when GET health_url answers 200 (HAProxy up with a live backend);
    # active: Nova's ACTIVE is enough (for images without the health frontend).
    probe: Literal["http", "active"] = "http"
    # Extra or replaced endpoints ("{address}" and "{name}" are filled in), e.g. metrics_uds.
    endpoints: dict[str, str] = Field(default_factory=dict)
    heat: HeatOptions | None = None

    @field_validator("tags")
    @classmethod
    def _nova_tags(cls, v: list[str]) -> list[str]:
        for t in v:
            if not 0 < len(t) <= 60 or "/" in t or "," in t:
                raise ValueError(f"tag {t!r}: Nova tags are 1-60 characters without '/' or ','")
        return v


class OpenStackOrchestratorConfig(BaseModel):
    """Options of the `openstack` orchestrator (scaler.yaml `orchestrator.options`)."""

    model_config = ConfigDict(extra="forbid")

    cloud: str | None = Field(default=None, description="clouds.yaml entry; unset: the OS_* environment")
    clouds_yaml: Path | None = Field(default=None, description="read this clouds.yaml, not the usual places")
    region: str | None = None
    tag_prefix: str = Field(default="scaler", pattern=TAG_PREFIX_PATTERN)
    user_data_template: Path | None = Field(default=None, description=f"default: {SHIPPED_TEMPLATE}")
    api_timeout_s: float = Field(default=30.0, gt=0, description="per HTTP request")
    call_timeout_s: float = Field(default=90.0, gt=0, description="per SDK call (may span pages, retries)")
    # Keep it below the pools' boot_timeout, so a server stuck in BUILD fails as BuildTimeout (a
    # launch failure) rather than as "not healthy after boot_timeout".
    build_timeout_s: float = Field(default=240.0, gt=0, description="BUILD longer than this: BuildTimeout")
    delete_timeout_s: float = Field(default=120.0, gt=0, description="wait this long for a deleted server")
    poll_interval_s: float = Field(default=2.0, gt=0)
    probe_timeout_s: float = Field(default=2.0, gt=0)
    lookup_cache_s: float = Field(default=300.0, ge=0, description="how long image/flavor/network ids are kept")
    max_parallel_calls: int = Field(default=8, ge=1, le=64)

    @model_validator(mode="after")
    def _files_exist(self) -> OpenStackOrchestratorConfig:
        if self.clouds_yaml is not None and not self.clouds_yaml.is_file():
            raise ValueError(f"clouds_yaml: {self.clouds_yaml} is not a file")
        try:
            load_template(self.template_path)
        except OrchestratorError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def template_path(self) -> Path:
        return self.user_data_template or SHIPPED_TEMPLATE


def instance_options(params: Mapping[str, object], pool: str) -> InstanceOptions:
    """A pool's instance options, validated; OrchestratorError lists every problem with its key."""
    try:
        return InstanceOptions.model_validate(dict(params))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise OrchestratorError(f"pool {pool}: instance options: {problems}") from None


def check_instance_name(name: str) -> None:
    if not INSTANCE_NAME_RE.match(name):
        raise OrchestratorError(f"instance {name!r}: invalid name (want {INSTANCE_NAME_RE.pattern})")


# ---- tags -----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Tags:
    """How the driver marks what it made. Nova and Neutron filter on these server-side."""

    prefix: str

    def pool(self, pool: str) -> str:
        return f"{self.prefix}-pool={pool}"

    def op(self, op: str) -> str:
        return f"{self.prefix}-op={op}"

    def name(self, name: str) -> str:        # ports only: Neutron tags may be 255 long, Nova's 60
        return f"{self.prefix}-name={name}"

    def nic(self, index: int) -> str:
        return f"{self.prefix}-nic={index}"

    def value(self, tags: Sequence[str], key: str) -> str | None:
        head = f"{self.prefix}-{key}="
        return next((t.removeprefix(head) for t in tags if t.startswith(head)), None)

    def meta(self, key: str) -> str:
        return f"{self.prefix}:{key}"


def operation_of(pool: str, name: str) -> str | None:
    """The operation id in an instance name `{pool}-{op}-{n}` (the scaler's naming), as `op-{op}`."""
    if not name.startswith(pool + "-"):
        return None
    head, sep, tail = name[len(pool) + 1:].rpartition("-")
    if not sep or not head or not tail.isdigit():
        return None
    return head if head.startswith("op-") else f"op-{head}"


def pick_zone(zones: Sequence[str], servers: Sequence[ServerInfo]) -> str | None:
    """The least used of `zones` among the pool's servers (ties: the first listed)."""
    if not zones:
        return None
    used = {z: 0 for z in zones}
    for s in servers:
        if s.availability_zone in used:
            used[s.availability_zone] += 1
    return min(zones, key=lambda z: used[z])


def endpoints_of(opts: InstanceOptions, name: str, address: IPv4Address, server_id: str | None) -> dict[str, str]:
    """How the scaler reaches the member's HAProxy (plus the server id, so probes skip a lookup)."""
    h = opts.haproxy
    eps = {"metrics_url": f"http://{address}:{h.exporter_port}/metrics"}
    if opts.probe == "http":
        eps["health_url"] = f"http://{address}:{h.health_port}/healthz"
    if h.runtime_api_port is not None:
        eps["runtime_api"] = f"tcp:{address}:{h.runtime_api_port}"
    eps.update({k: v.format(address=address, name=name) for k, v in opts.endpoints.items()})
    if server_id:
        eps["server_id"] = server_id
    return eps


@dataclass(frozen=True, slots=True)
class Refs:
    """A pool's names resolved to ids."""

    image_id: str
    flavor_id: str
    network_ids: tuple[str, ...]
    subnet_id: str | None
    security_group_ids: tuple[str, ...]
    group_id: str | None


# ---- the driver -----------------------------------------------------------------------------------


__all__ = [
    "INSTANCE_NAME_RE", "SHIPPED_HEAT_TEMPLATE", "STATUS_WORDS", "HeatOptions", "InstanceOptions",
    "OpenStackOrchestratorConfig", "Refs", "ServerGroupOptions", "Tags", "check_instance_name", "endpoints_of",
    "instance_options", "operation_of", "pick_zone",
]
