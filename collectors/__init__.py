"""Read-only metric sources and their explicit registry.

`COLLECTORS` maps a registry key to (config model, factory); `build(name, config)` validates a config
mapping and returns a ready collector. Adding a collector = one module named after its key, one
`...Config` with `extra="forbid"`, one line here. This package never imports `scaler`, `policies` or
`actuators`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from collectors.base import Collector, Sample, Target
from collectors.errors import CollectorAuthError, CollectorError, CollectorParseError, CollectorTimeout
from collectors.haproxy import HAProxyCollector, HAProxyCollectorConfig
from collectors.haproxy_stats import HAProxyStatsCollector, HAProxyStatsConfig
from collectors.prometheus_query import PrometheusQueryCollector, PrometheusQueryConfig
from collectors.prometheus_scrape import PrometheusScrapeCollector, PrometheusScrapeConfig
from collectors.snmp.collector import SnmpCollector, SnmpCollectorConfig

__all__ = [
    "COLLECTORS",
    "Collector",
    "CollectorAuthError",
    "CollectorError",
    "CollectorParseError",
    "CollectorTimeout",
    "HAProxyCollector",
    "HAProxyCollectorConfig",
    "Registration",
    "Sample",
    "SnmpCollector",
    "SnmpCollectorConfig",
    "Target",
    "build",
]

ConfigT = TypeVar("ConfigT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Registration(Generic[ConfigT]):
    """How to build one kind of collector: its config model and a factory taking a validated config."""

    config: type[ConfigT]
    factory: Callable[[ConfigT], Collector]


COLLECTORS: dict[str, Registration[Any]] = {
    "haproxy": Registration(HAProxyCollectorConfig, HAProxyCollector),
    "haproxy_stats": Registration(HAProxyStatsConfig, HAProxyStatsCollector),
    "prometheus_query": Registration(PrometheusQueryConfig, PrometheusQueryCollector),
    "prometheus_scrape": Registration(PrometheusScrapeConfig, PrometheusScrapeCollector),
    "snmp": Registration(SnmpCollectorConfig, SnmpCollector),
}


def build(name: str, config: Mapping[str, Any] | None = None) -> Collector:
    """Validate `config` against the `name` collector's model and return the collector.

    Raises `KeyError` for an unknown name (the message lists the known ones) and pydantic's
    `ValidationError` for a bad config, which reports every problem at once.
    """
    try:
        registration = COLLECTORS[name]
    except KeyError:
        known = ", ".join(sorted(COLLECTORS))
        raise KeyError(f"unknown collector {name!r} (known: {known})") from None
    validated = registration.config.model_validate(dict(config or {}))
    return registration.factory(validated)
