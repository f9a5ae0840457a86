"""Real Prometheus → real Alertmanager → the scaler's receiver (uvicorn, real SQLite store): an
alerting rule fires on a metric this test serves, Alertmanager delivers with a bearer token from a
file, re-sends on every repeat_interval, and the pool's alarm becomes firing exactly once; when the
metric drops, the alarm resolves exactly once.

Everything listens on 127.0.0.1 (free ports), files live in tmp_path, every process is stopped by
PID by the launchers in tests/daemons_alerting.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry
from sqlmodel import select

from scaler.alerts import AlertsConfig, alarm_state, alerts_router
from scaler.alerts.store import AlarmSignal
from scaler.store import Store
from tests.support.daemons_alerting import Alertmanager, alertmanager, prometheus_with_rules, serve_app
from tests.support.wait import eventually_sync

pytestmark = pytest.mark.integration

TOKEN = "integration-bearer-token-0123"
HIGH_LOAD = {"alert": "LBHighLoad", "expr": "scaler_test_load > 80", "for": "0s",
             "labels": {"severity": "page"}, "annotations": {"summary": "pool {{ $labels.pool }} load {{ $value }}"}}


@dataclass
class Loop:
    store: Store
    registry: CollectorRegistry
    load: dict[str, float]
    alertmanager: Alertmanager

    def signals(self) -> list[AlarmSignal]:
        with self.store.session() as s:
            return list(s.exec(select(AlarmSignal).where(AlarmSignal.alarm == "LBHighLoad")))

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    (tmp_path / "token").write_text(TOKEN + "\n")
    config = AlertsConfig.model_validate({"alertmanager": {"credentials": [
        {"name": "am-it", "token": {"file": str(tmp_path / "token")}, "pools": ["web"]}]}})
    store = Store(f"sqlite:///{tmp_path}/scaler.db")
    store.migrate()
    registry = CollectorRegistry()
    load = {"web": 95.0}
    app = FastAPI()
    app.include_router(alerts_router(store, config, lambda: {"web"}, registry))

    @app.get("/metrics", response_class=PlainTextResponse)
    def exposition() -> str:            # the metric the alerting rule watches
        return "".join(f'scaler_test_load{{pool="{p}"}} {v}\n' for p, v in load.items())

    try:
        with serve_app(app) as url, \
                alertmanager(tmp_path / "am", webhook_url=f"{url}/v1/alerts/alertmanager",
                             bearer_file=tmp_path / "token", group_wait="1s", group_interval="2s",
                             repeat_interval="3s") as am, \
                prometheus_with_rules(tmp_path / "prom", targets={"load": [url.removeprefix("http://")]},
                                      rules=[HIGH_LOAD], alertmanager=am):
            yield Loop(store, registry, load, am)
    finally:
        store.close()


def test_alarm_fires_once_despite_repeats_and_resolves_once(loop: Loop) -> None:
    def firing() -> Any:
        state = alarm_state(loop.store, "web", "LBHighLoad", time.time())
        return state if state.firing else None

    state = eventually_sync(firing, timeout_s=45, interval_s=0.2, what="alarm LBHighLoad firing for pool web")
    assert state.source == "alertmanager/am-it"

    # Alertmanager keeps re-sending the firing group (repeat_interval 3s): all duplicates.
    eventually_sync(lambda: loop.metric("scaler_alert_duplicates_total", receiver="alertmanager") >= 2,
                    timeout_s=30, interval_s=0.2, what="two repeats of the firing alert")
    assert [(s.status, s.effect) for s in loop.signals()] == [("firing", "fired")]
    again = alarm_state(loop.store, "web", "LBHighLoad", time.time())
    assert (again.firing, again.since, again.instances) == (True, state.since, 1)

    loop.load["web"] = 10.0
    eventually_sync(lambda: alarm_state(loop.store, "web", "LBHighLoad", time.time()).firing is False,
                    timeout_s=45, interval_s=0.2, what="alarm LBHighLoad resolved")
    assert [(s.status, s.effect) for s in loop.signals()] == [("firing", "fired"), ("resolved", "resolved")]
    assert loop.metric("scaler_alert_auth_failures_total", receiver="alertmanager", reason="missing") == 0
    assert loop.metric("scaler_alert_deliveries_total", receiver="alertmanager", result="accepted") == 2
