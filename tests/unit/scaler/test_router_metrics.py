"""The router driver's own health as metrics: BGP sessions, and the kernel driver's conntrack table."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from scaler.metrics import RouterHealthMetrics


def registry_of(health: dict[str, Any]) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(RouterHealthMetrics(lambda: health))
    return reg


def test_conntrack_use_and_unreplied_flows_are_exported() -> None:
    reg = registry_of({"driver": "kernel", "mode": "conntrack", "conntrack_entries": 210_000,
                       "conntrack_max": 262_144, "unreplied_ratio": 0.75})
    assert reg.get_sample_value("scaler_router_conntrack_entries") == 210_000
    assert reg.get_sample_value("scaler_router_conntrack_max") == 262_144
    assert reg.get_sample_value("scaler_router_unreplied_ratio") == 0.75


def test_a_router_without_conntrack_exports_none_of_it() -> None:
    reg = registry_of({"driver": "kernel", "mode": "resilient"})
    assert reg.get_sample_value("scaler_router_conntrack_entries") is None
    assert reg.get_sample_value("scaler_router_unreplied_ratio") is None
