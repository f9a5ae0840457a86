"""Prometheus metrics of the alert receivers, registered once per registry.

Labels stay bounded: receiver (alertmanager, grafana, signal), result and reason are fixed sets;
pools and credentials are not labels (a "*" credential could name any pool).
"""

from __future__ import annotations

import threading
import weakref

from prometheus_client import CollectorRegistry, Counter, Histogram

RESULTS = ("accepted", "duplicate", "unknown_pool", "unauthorized", "forbidden", "too_large", "too_many_alerts",
           "invalid", "timeout", "unavailable")


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.deliveries = Counter("scaler_alert_deliveries_total", "Requests to the alert and signal receivers "
                                  "by result", ["receiver", "result"], registry=r)
        self.signals = Counter("scaler_alert_signals_total", "New (non-duplicate) alerts and signals recorded, "
                               "by status", ["receiver", "status"], registry=r)
        self.duplicates = Counter("scaler_alert_duplicates_total", "Alerts and signals already recorded "
                                  "(repeats, retries, re-sends, replays)", ["receiver"], registry=r)
        self.truncated = Counter("scaler_alert_truncated_alerts_total", "Alerts Alertmanager dropped from "
                                 "deliveries (truncatedAlerts), as reported by each delivery", ["receiver"],
                                 registry=r)
        self.auth_failures = Counter("scaler_alert_auth_failures_total", "Refused credentials and signatures "
                                     "by reason", ["receiver", "reason"], registry=r)
        self.store_seconds = Histogram("scaler_alert_store_seconds", "From request received to signals committed",
                                       ["receiver"], registry=r,
                                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, AlertMetrics] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def alert_metrics(registry: CollectorRegistry) -> AlertMetrics:
    """The receivers' metrics in `registry`, created on first use (a second router on the same
    registry, e.g. after a config reload, shares them instead of failing on duplicate names)."""
    with _LOCK:
        found = _BY_REGISTRY.get(registry)
        if found is None:
            found = _BY_REGISTRY[registry] = AlertMetrics(registry)
        return found
