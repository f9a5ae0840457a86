"""The collector interface and its value types. Collectors only read; they never act.

A collector reads one target (one LB member's HAProxy, one VM's SNMP agent, one PromQL query) and
returns timestamped samples. An empty list means "no data" and is never turned into 0 by anyone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Target:
    """Where to read. `key` identifies the member across calls (rate state is kept per key).

    `url` is the source's address; `uds` an optional unix socket to reach it through (the lab's
    instances live in network namespaces the scaler cannot route to, so they expose unix sockets).
    `netns` names a network namespace (under /run/netns) to open the connection from, for sources
    only reachable from there (the lab's instances, a management network kept in its own namespace).
    """

    key: str
    url: str
    uds: str | None = None
    netns: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading. `timestamp` is seconds since the epoch, taken when the source answered.

    `metric` and `labels` together name the series: a collector returns at most one sample per
    (metric, label set) in one answer. The unlabelled sample is the value for the collector's whole
    configured scope (a total over interfaces, the one frontend it was told to read); labelled ones
    are parts of it (`interface`, `index`). A total that cannot be computed is left out, never
    replaced by a part. Consumers select a series by its exact label set.
    """

    metric: str
    value: float
    timestamp: float
    labels: Mapping[str, str] = field(default_factory=dict)


# What a collector may call a sample it returns (policies refer to it as `metric:`).
OUTPUT_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def check_output_names(names: Mapping[str, object]) -> None:
    """Raise ValueError for the first configured output name that is not letters, digits and '_'."""
    for name in names:
        if not OUTPUT_NAME.match(name):
            raise ValueError(f"output metric name {name!r} must be letters, digits and '_'")


class Collector(Protocol):
    """Reads metrics from one target.

    - `collect(target)` returns the samples it could read; a metric it could not compute yet (a rate
      needs two readings) is simply absent. It raises `CollectorError` (with a `reason`) when the
      source could not be read at all. It must finish within its configured timeout and never
      block the event loop.
    - `forget(key)` drops per-target state (rates) of a member that left the pool.
    """

    name: str

    async def collect(self, target: Target) -> list[Sample]: ...

    def forget(self, key: str) -> None: ...

    async def close(self) -> None: ...
