"""The orchestrator interface: create, probe, delete and list LB instances.

Instances are named by the caller (the scaler names them after the operation that creates them),
so a create retried after a crash finds what the first attempt made instead of making a second one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Protocol


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """What the pool wants an instance to look like. Drivers read the keys they know."""

    pool: str
    vip: IPv4Address
    params: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Instance:
    """An LB instance as the orchestrator knows it.

    `address` is the next hop the router announces for the VIP. `endpoints` tells collectors and the
    lifecycle how to reach the instance's HAProxy: keys `metrics_url` (Prometheus exporter),
    `metrics_uds` (optional unix socket to reach it through), `runtime_api` (HAProxy runtime API:
    a unix socket path or `tcp:HOST:PORT`).
    """

    name: str
    pool: str
    address: IPv4Address | None
    status: str                      # driver's word: "building", "active", "error", "deleted"
    endpoints: Mapping[str, str] = field(default_factory=dict)


class Orchestrator(Protocol):
    """Creates and deletes the LB instances of pools.

    - `create(spec, name)` is idempotent: if an instance called `name` exists it is returned as is
      (finishing any part a crashed earlier call left undone); returns once the instance exists,
      not once it serves.
    - `probe(instance)` answers whether the instance's HAProxy serves the VIP now; never raises for
      "not yet", only for a failure to ask.
    - `delete(name)` is idempotent: deleting a missing instance succeeds.
    - `list(pool)` lists every instance of the pool the orchestrator holds, including ones the
      scaler does not know (for reconciliation).
    - Failures raise `OrchestratorError` naming the instance.
    """

    async def create(self, spec: InstanceSpec, name: str) -> Instance: ...

    async def probe(self, instance: Instance) -> bool: ...

    async def delete(self, name: str) -> None: ...

    async def list(self, pool: str) -> list[Instance]: ...

    async def close(self) -> None: ...
