"""Alarms as policy inputs: webhook receivers (Alertmanager, Grafana), signed scale signals, and
the alarm state the engine reads.

What the service wires:

    from scaler.alerts import AlertsConfig, alerts_router, alarm_states, recent_signals, signal_url_for

    app.include_router(alerts_router(store, cfg.alerts, lambda: set(cfg.pools), metrics.registry))
    states = alarm_states(store, "web", now)            # {"LBHighLoad": AlarmState(firing=True, ...)}

Nothing in this package scales anything: a firing alarm is an input of the pool's policy, and the
engine's cooldowns and bounds decide what it does.
"""

from __future__ import annotations

from scaler.alerts.config import AlertsConfig
from scaler.alerts.receivers import alerts_router
from scaler.alerts.signing import ACTIONS, Action, signal_url, signal_url_for
from scaler.alerts.store import (
    SIGNAL_SCALE_IN,
    SIGNAL_SCALE_OUT,
    AlarmSignal,
    AlarmState,
    alarm_state,
    alarm_states,
    prune,
    recent_signals,
)

__all__ = [
    "ACTIONS",
    "SIGNAL_SCALE_IN",
    "SIGNAL_SCALE_OUT",
    "Action",
    "AlarmSignal",
    "AlarmState",
    "AlertsConfig",
    "alarm_state",
    "alarm_states",
    "alerts_router",
    "prune",
    "recent_signals",
    "signal_url",
    "signal_url_for",
]
