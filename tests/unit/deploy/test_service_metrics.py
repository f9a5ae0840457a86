"""The service's registry (what GET /metrics serves) says which scaler answers and how its process
is doing: scaler_build_info{version, python} and prometheus_client's process and platform metrics."""

from __future__ import annotations

import os
import platform
from importlib.metadata import version

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import scaler
from scaler.metrics import Metrics


def samples(m: Metrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_build_info_names_the_installed_version() -> None:
    got = samples(Metrics())["scaler_build_info"]
    assert got == [({"version": version("scaler"), "python": platform.python_version()}, 1.0)]
    assert scaler.__version__ == version("scaler")


def test_process_metrics_are_in_the_services_own_registry() -> None:
    got = samples(Metrics())
    (_, fds), = got["process_open_fds"]
    assert 0 < fds <= len(os.listdir("/proc/self/fd")) + 5
    (_, cpu), = got["process_cpu_seconds_total"]
    assert cpu > 0
    (_, rss), = got["process_resident_memory_bytes"]
    assert rss > 10 * 2**20
    assert got["python_info"][0][0]["version"] == platform.python_version()


def test_two_services_in_one_process_each_have_theirs() -> None:
    """A registry per service (tests, a reload): the process collectors must not collide."""
    a, b = Metrics(), Metrics()
    assert "process_start_time_seconds" in samples(a) and "process_start_time_seconds" in samples(b)
