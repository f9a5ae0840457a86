"""The drainer interface: ask a leaving instance's HAProxy to let its clients go, and count who is left.

The lifecycle drains a member through the router (weight or withdraw, see `actuators.router.DrainMode`)
and through its HAProxy: `HAProxyDrainer` talks to each instance's runtime API (endpoint
`runtime_api`), `NoDrainer` is for instances without one (the router alone drains them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from actuators.errors import ActuatorError
from actuators.haproxy_runtime import HAProxyRuntime


class Drainer(Protocol):
    """Asks an instance's HAProxy to let its clients go, and counts who is left."""

    async def drain(self, endpoints: Mapping[str, str]) -> None:
        """Close client keep-alive connections after their current response; keep accepting.
        Raises `ActuatorError` when HAProxy could not be asked."""

    async def connections(self, endpoints: Mapping[str, str]) -> int | None:
        """Client connections still open (None: cannot tell, e.g. HAProxy is gone)."""

    async def recycle(self, endpoints: Mapping[str, str], percent: int) -> None:
        """Close `percent` % of client connections after their current response (0: none), so
        keep-alive clients move onto members that joined. Raises `ActuatorError` like `drain`."""


class NoDrainer:
    """For instances without a reachable runtime API: drain relies on the router alone."""

    async def drain(self, endpoints: Mapping[str, str]) -> None:
        return None

    async def connections(self, endpoints: Mapping[str, str]) -> int | None:
        return None

    async def recycle(self, endpoints: Mapping[str, str], percent: int) -> None:
        return None


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

    async def recycle(self, endpoints: Mapping[str, str], percent: int) -> None:
        api = self._api(endpoints)
        if api is not None:
            await api.recycle(percent)


__all__ = ["Drainer", "HAProxyDrainer", "NoDrainer"]
