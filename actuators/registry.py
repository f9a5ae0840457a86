"""The explicit registries of orchestrator and router drivers, by the name written in scaler.yaml.

Each entry is (config model, factory): the service validates a driver's `options:` with the model
and builds the driver from the validated model. An orchestrator may also name the model of a pool's
`instance:` mapping, so `scaler check` rejects a typo there instead of the first create. Adding a
driver = one package under `actuators/`, one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from actuators.bgp import BgpRouter, BgpRouterConfig
from actuators.fake import FakeOrchestrator, FakeOrchestratorConfig, FakeRouter, FakeRouterConfig
from actuators.kernel.router import KernelRouter, KernelRouterConfig
from actuators.lab.orchestrator import LabInstanceOptions, LabOrchestrator, LabOrchestratorConfig
from actuators.openstack.options import InstanceOptions, OpenStackOrchestratorConfig
from actuators.openstack.orchestrator import OpenStackOrchestrator
from actuators.orchestrator import Orchestrator
from actuators.router import Router

ConfigT = TypeVar("ConfigT", bound=BaseModel)
DriverT = TypeVar("DriverT")


@dataclass(frozen=True, slots=True)
class Registration(Generic[ConfigT, DriverT]):
    """How to build one driver: its options model, a factory taking the validated options, and
    (orchestrators) the model of a pool's `instance:` mapping, validated as the driver validates
    `InstanceSpec.params` (a model without fields: the driver reads none, every key is refused);
    None: not checked (the fake orchestrator ignores it)."""

    config: type[ConfigT]
    factory: Callable[[ConfigT], DriverT]
    instance: type[BaseModel] | None = None
    # Routers: why the options could move a live flow silent for the given seconds (None: safe).
    safety: Callable[[ConfigT, float], str | None] | None = None


ORCHESTRATORS: dict[str, Registration[Any, Orchestrator]] = {
    "lab": Registration(LabOrchestratorConfig, LabOrchestrator, LabInstanceOptions),
    "fake": Registration(FakeOrchestratorConfig, FakeOrchestrator),
    "openstack": Registration(OpenStackOrchestratorConfig, OpenStackOrchestrator, InstanceOptions),
}
ROUTERS: dict[str, Registration[Any, Router]] = {
    "kernel": Registration(KernelRouterConfig, KernelRouter, safety=KernelRouterConfig.unsafe_for),
    "bgp": Registration(BgpRouterConfig, BgpRouter),
    "fake": Registration(FakeRouterConfig, FakeRouter),
}

__all__ = ["ORCHESTRATORS", "ROUTERS", "Registration"]
