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
from typing import Any, Protocol


class HopState(enum.StrEnum):
    ACTIVE = "active"        # full weight: receives its share of new flows
    # Leaving. WEIGHT routers: lowest weight, keeps its busy flows, (almost) no new ones.
    # WITHDRAW routers have no weights: still a full next hop until it is removed (see DrainMode).
    DRAINING = "draining"


class DrainMode(enum.StrEnum):
    """How a router can stop new flows reaching a leaving next hop, which decides how it is drained.

    WEIGHT: the router can lower a hop's weight so it keeps its established flows and gets (almost)
    no new ones (Linux resilient nexthop groups). Draining waits until the hop holds no flow
    (buckets) and its HAProxy no connection, then the hop is removed without breaking anything.
    WITHDRAW: no weights (plain ECMP over BGP): a draining hop keeps its full share of new flows until
    it is withdrawn, and the withdraw moves every flow it still has — to another LB, which resets
    it. Draining can only shorten that list: HAProxy closes keep-alive connections after their
    current response, and the hop is withdrawn after a short grace.
    """

    WEIGHT = "weight"
    WITHDRAW = "withdraw"


@dataclass(frozen=True, slots=True)
class NextHop:
    address: IPv4Address
    state: HopState = HopState.ACTIVE
    # Computed once: every pass builds and compares the whole fleet's next-hop sets, and an
    # IPv4Address hashes through hex(int(...)) each time it is asked.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.address, self.state)))

    def __hash__(self) -> int:
        return self._hash


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
    flows: int | None = None     # flows the router still pins to it (conntrack pinning), None if unknown


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
      is removed entirely. Changes go out as one batch; on return the router has them (kernel: in
      the FIB; bgp: acknowledged by the speaker, and in `status()` once they can be in the routers' FIB).
    - `status(vip)` reads the router, not a cache. A VIP without a route has no hops.
    - Every failure raises `RouterError` naming the VIP or next hop.

    `drain_mode` says how the driver drains (`DrainMode`); the lifecycle picks its drain from it.
    Both kinds receive hops in state DRAINING in the desired state: a WEIGHT router lowers their
    weight (and reports their remaining `buckets` in `status()`), a WITHDRAW router may treat them
    like ACTIVE (and report them so) until they leave the desired state.

    Drivers subclass this protocol, so the defaults below apply to a driver that does not say
    otherwise: weight drain, and no health of its own to report.
    """

    drain_mode: DrainMode = DrainMode.WEIGHT

    def health(self) -> dict[str, Any]:
        """The driver's own view of its connection to the routers (sessions, speaker), for the API
        and metrics; empty when the driver has nothing beyond `status()` to say. Never raises."""
        return {}

    async def stand_down(self) -> None:
        """This scaler stopped leading: stop whatever speaks for it on its own (a BGP speaker keeps
        announcing otherwise). Routes stay as they are (fail static). The next apply() resumes."""
        return None

    async def apply(self, desired: DesiredRoutes) -> ApplyResult: ...

    async def status(self, vip: IPv4Address) -> RouteStatus: ...

    async def replay(self, desired: DesiredRoutes) -> ApplyResult: ...

    async def close(self) -> None: ...
