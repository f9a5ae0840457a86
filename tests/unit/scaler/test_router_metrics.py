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


def test_the_cluster_line_an_operator_reads() -> None:
    from scaler.cli import format_cluster

    assert format_cluster({"role": "leader", "me": "h1:42:ab", "epoch": 7, "leader": "h1:42:ab",
                           "lease_left_s": 1.44}) == \
        "this scaler (h1:42:ab): leader, epoch 7, leader h1:42:ab, lease 1.4s left\n"
    assert format_cluster({"role": "follower", "me": "h2:9:cd", "epoch": None, "leader": "h1:42:ab",
                           "lease_left_s": None}) == "this scaler (h2:9:cd): follower, epoch -, leader h1:42:ab\n"


def test_leader_metrics() -> None:
    from scaler.leader import View
    from scaler.metrics import LeaderMetrics

    reg = CollectorRegistry()
    reg.register(LeaderMetrics(lambda: View("leader", "me", 3, "me", 1.5, 0.0)))
    assert reg.get_sample_value("scaler_leader") == 1
    assert reg.get_sample_value("scaler_leader_epoch") == 3
    assert reg.get_sample_value("scaler_leader_lease_seconds") == 1.5
