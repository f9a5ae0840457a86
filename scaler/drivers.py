"""Registries of the drivers the service can use, by the name written in scaler.yaml, and their
construction from validated options. Adding a driver = one line in a registry here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

import collectors
from actuators.bgp import BgpRouter, BgpRouterConfig
from actuators.errors import ActuatorError
from actuators.fake import FakeOrchestrator, FakeOrchestratorConfig, FakeRouter, FakeRouterConfig
from actuators.haproxy_runtime import HAProxyRuntime
from actuators.kernel import KernelRouter, KernelRouterConfig
from actuators.lab import LabOrchestrator, LabOrchestratorConfig
from actuators.openstack import OpenStackOrchestrator, OpenStackOrchestratorConfig
from actuators.orchestrator import Orchestrator
from actuators.router import Router
from collectors import Collector
from scaler.config import Registries, ServiceConfig, driver_options
from scaler.lifecycle import Drainer

ORCHESTRATORS: dict[str, tuple[type[BaseModel], Any]] = {
    "lab": (LabOrchestratorConfig, LabOrchestrator),
    "fake": (FakeOrchestratorConfig, lambda cfg: FakeOrchestrator(cfg)),
    "openstack": (OpenStackOrchestratorConfig, OpenStackOrchestrator),
}
ROUTERS: dict[str, tuple[type[BaseModel], Any]] = {
    "kernel": (KernelRouterConfig, KernelRouter),
    "bgp": (BgpRouterConfig, BgpRouter),
    "fake": (FakeRouterConfig, lambda cfg: FakeRouter(cfg)),
}

REGISTRIES = Registries(
    orchestrators={k: v[0] for k, v in ORCHESTRATORS.items()},
    routers={k: v[0] for k, v in ROUTERS.items()},
    collectors={k: v.config for k, v in collectors.COLLECTORS.items()},
)


class HAProxyDrainer:
    """Drains through each instance's HAProxy runtime API (endpoint `runtime_api`)."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s

    def _api(self, endpoints: Mapping[str, str]) -> HAProxyRuntime | None:
        address = endpoints.get("runtime_api")
        return HAProxyRuntime(address, timeout_s=self.timeout_s) if address else None

    async def drain(self, endpoints: Mapping[str, str]) -> None:
        api = self._api(endpoints)
        if api is not None:
            await api.drain()

    async def connections(self, endpoints: Mapping[str, str]) -> int | None:
        api = self._api(endpoints)
        if api is None:
            return None
        try:
            return await api.current_connections()
        except ActuatorError:
            return None     # HAProxy gone: nothing left to preserve


def build_all(cfg: ServiceConfig) -> tuple[Orchestrator, Router, Drainer, dict[str, Collector]]:
    _, o_factory = ORCHESTRATORS[cfg.orchestrator.driver]
    _, r_factory = ROUTERS[cfg.router.driver]
    base = cfg.source.parent
    orchestrator = o_factory(driver_options(cfg.orchestrator, REGISTRIES.orchestrators, base))
    router = r_factory(driver_options(cfg.router, REGISTRIES.routers, base))
    built = {name: collectors.COLLECTORS[c.driver].factory(driver_options(c, REGISTRIES.collectors, base))
             for name, c in cfg.collectors.items()}
    return orchestrator, router, HAProxyDrainer(), built
