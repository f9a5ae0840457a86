"""An alert scales a running scaler's pool through its policy, exactly once: real Prometheus fires
a rule on a metric this test serves, real Alertmanager delivers it (bearer token from a file) and
re-sends it every repeat_interval to a `scaler run` process (fake orchestrator and router: the
alert path is what is tested). The alarm rule asks +1; the scale-out cooldown turns every later
evaluation — and every Alertmanager repeat — into a hold. `scaler why` names the alarm's source."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from scaler.lab.demo import ServiceProcess, free_port
from tests.support.daemons_alerting import alertmanager, prometheus_with_rules, serve_app
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

TOKEN = "alert-scaling-token-0123456789"
RULE = {"alert": "LBHighLoad", "expr": "scaler_test_load > 80", "for": "0s", "labels": {"pool": "web"}}

POLICY = """\
pools:
  web:
    min: 0
    max: 3
    inputs:
      sessions: {source: haproxy, metric: current_sessions}
      high_load: {source: alarm, alarm: LBHighLoad}
    rules:
      - {name: alarm-out, alarm: high_load, adjust: +1}
    cooldown: {scale_out: 10m, scale_in: 10m}
"""

CONFIG = """\
store: {{url: "sqlite:///scaler.db"}}
api: {{host: 127.0.0.1, port: {port}, anonymous_read: true}}
policy_dir: policies
intervals: {{collect: 0.5s, evaluate: 0.5s, reconcile: 0.3s}}
orchestrator: {{driver: fake, options: {{boot_probes: 0}}}}
router: {{driver: fake}}
collectors:
  haproxy:
    driver: haproxy
    target: {{url: "http://localhost/metrics", uds: "{tmp}/none/{{instance}}.sock"}}
pools:
  web: {{vip: 198.19.0.1, boot_timeout: 10s, drain_timeout: 1s}}
alerts:
  alertmanager:
    credentials:
      - {{name: am-it, token: {{file: token}}, pools: [web]}}
"""


@dataclass
class Setup:
    service: ServiceProcess
    tmp: Path


@pytest.fixture
def metric_server() -> Iterator[str]:
    app = FastAPI()

    @app.get("/metrics", response_class=PlainTextResponse)
    def exposition() -> str:
        return 'scaler_test_load{pool="web"} 95\n'

    with serve_app(app) as url:
        yield url


@pytest.fixture
async def setup(tmp_path: Path, metric_server: str) -> AsyncIterator[Setup]:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "web.yaml").write_text(POLICY)
    (tmp_path / "token").write_text(TOKEN + "\n")
    port = free_port()
    config = tmp_path / "scaler.yaml"
    config.write_text(CONFIG.format(port=port, tmp=tmp_path))
    svc = ServiceProcess(config, port)
    await svc.start()
    try:
        # The pool starts empty (min 0, no alarm yet): the only scale-out can come from the alarm.
        await eventually(lambda: svc.get("/v1/pools/web/decisions?limit=1"), timeout_s=60, interval_s=0.2,
                         what="a first evaluation", detail=lambda: state_of(svc))
        with alertmanager(tmp_path / "am", webhook_url=f"{svc.base}/v1/alerts/alertmanager",
                          bearer_file=tmp_path / "token", group_wait="1s", group_interval="2s",
                          repeat_interval="3s") as am, \
                prometheus_with_rules(tmp_path / "prom", targets={"load": [metric_server.removeprefix("http://")]},
                                      rules=[RULE], alertmanager=am):
            yield Setup(svc, tmp_path)
    finally:
        assert await svc.stop() == 0, svc.tail()


async def _size(svc: ServiceProcess, n: int) -> bool:
    pool = await svc.get("/v1/pools/web")
    return bool(pool["size"] == n and pool["operation"] is None)


async def state_of(svc: ServiceProcess) -> str:
    """What a wait that timed out shows: the pool's alarms, its last decision, the service's log."""
    alarms = await svc.get("/v1/pools/web/alarms")
    last = (await svc.get("/v1/pools/web/decisions?limit=1")) or [None]
    return f"alarms: {alarms}\nlast decision: {last[0]}\n{svc.tail(40)}"


async def duplicates(svc: ServiceProcess) -> float:
    import httpx

    async with httpx.AsyncClient(timeout=5) as c:
        text = (await c.get(svc.base + "/metrics")).text
    for line in text.splitlines():
        if line.startswith('scaler_alert_duplicates_total{receiver="alertmanager"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_an_alert_scales_the_pool_out_once_through_its_policy(setup: Setup) -> None:
    svc = setup.service
    await eventually(lambda: _size(svc, 1), timeout_s=60, interval_s=0.2, what="the alarm's scale-out to 1",
                     detail=lambda: state_of(svc))
    # Alertmanager re-sends the firing group every 3 s: wait for two repeats, then some evaluations.
    await eventually(lambda: _at_least(duplicates(svc), 2), timeout_s=60, interval_s=0.2,
                     what="two repeated deliveries", detail=lambda: state_of(svc))
    await asyncio.sleep(1.5)

    decisions = await svc.get("/v1/pools/web/decisions?limit=1000")
    alarm_outs = [d for d in decisions if d["outcome"] == "scale_out" and d["rule"] == "alarm-out"]
    assert len(alarm_outs) == 1, alarm_outs
    assert alarm_outs[0]["context"]["signals"] == ["high_load: LBHighLoad firing via alertmanager/am-it"]
    assert (await svc.get("/v1/pools/web"))["size"] == 1
    latest = decisions[0]
    assert latest["outcome"] == "hold" and latest["context"]["cause"] == "cooldown", latest
    ops = await svc.get("/v1/pools/web/operations")
    assert [o["kind"] for o in ops] == ["scale_out"]

    why = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "scaler", "why", "web", "-n", "1",
                                                   "--api", svc.base], capture_output=True, text=True, timeout=30)
    assert why.returncode == 0, why.stderr
    assert "signals: high_load: LBHighLoad firing via alertmanager/am-it" in why.stdout, why.stdout


async def _at_least(value: Any, n: float) -> bool:
    return bool(await value >= n)
