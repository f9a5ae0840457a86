"""The router interface: the VIP's next hops, programmed as one desired state per VIP.

A router driver never decides anything: the caller computes the complete desired state of every VIP
it owns and calls `apply()` once per tick; the driver diffs it against what the router holds and
sends the difference as one batch. `replay()` is `apply()` of everything after a router restart.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Protocol


class HopState(enum.StrEnum):
    ACTIVE = "active"        # full weight: receives its share of new flows
    DRAINING = "draining"    # lowest weight: keeps its busy flows, (almost) no new ones


@dataclass(frozen=True, slots=True)
class NextHop:
    address: IPv4Address
    state: HopState = HopState.ACTIVE


# The desired next hops of each VIP. A VIP mapped to an empty set has no route at all.
DesiredRoutes = Mapping[IPv4Address, frozenset[NextHop]]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one `apply()` changed. `messages` counts the router operations sent in the batch."""

    added: tuple[tuple[IPv4Address, IPv4Address], ...] = ()     # (vip, next hop)
    removed: tuple[tuple[IPv4Address, IPv4Address], ...] = ()
    reweighted: tuple[tuple[IPv4Address, IPv4Address], ...] = ()
    messages: int = 0
    elapsed_s: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.reweighted)


@dataclass(frozen=True, slots=True)
class HopStatus:
    """A next hop as the router holds it now."""

    address: IPv4Address
    state: HopState
    buckets: int | None = None   # flow buckets still mapped to it (resilient groups), None if unknown


@dataclass(frozen=True, slots=True)
class RouteStatus:
    vip: IPv4Address
    hops: tuple[HopStatus, ...] = field(default_factory=tuple)

    def addresses(self) -> frozenset[IPv4Address]:
        return frozenset(h.address for h in self.hops)


class Router(Protocol):
    """Programs the next hops of VIPs on one router (or one set of routers).

    Guarantees the caller can rely on:
    - `apply(desired)` is idempotent: applying the same desired state twice changes nothing the
      second time. VIPs not present in `desired` are left untouched; a VIP mapped to an empty set
      is removed entirely. Changes go out as one batch; on return they are in the router's FIB.
    - `status(vip)` reads the router, not a cache. A VIP without a route has no hops.
    - Every failure raises `RouterError` naming the VIP or next hop.
    """

    async def apply(self, desired: DesiredRoutes) -> ApplyResult: ...

    async def status(self, vip: IPv4Address) -> RouteStatus: ...

    async def replay(self, desired: DesiredRoutes) -> ApplyResult: ...

    async def close(self) -> None: ...
