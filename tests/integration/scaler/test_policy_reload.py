"""Hot reload under a running `scaler run` process (fake orchestrator and router: the reload path is
what is tested, not the cloud): a valid edit takes effect at the next evaluation, a broken one is
reported (log, API, metric) and the previous policy keeps deciding; SIGHUP and POST /v1/reload
reload too."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from scaler.lab.demo import ServiceProcess, free_port
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

POLICY = """\
pools:
  web:
    min: 1
    max: 3
    inputs:
      sessions: {source: haproxy, metric: current_sessions}
    rules:
      - {name: busy, input: sessions, above: 12, for: 2s, adjust: +1}
    cooldown: {scale_out: 0s, scale_in: 0s}
"""

API_TOKEN = "it-ops-token-0123456789"
CONFIG = """\
store: {{url: "sqlite:///scaler.db"}}
api:
  host: 127.0.0.1
  port: {port}
  anonymous_read: true
  credentials: [{{name: it-ops, token: {{file: api-token}}, scopes: [read, operate]}}]
policy_dir: policies
intervals: {{collect: 0.5s, evaluate: 0.5s, reconcile: 0.3s, policy_watch: 0.3s}}
orchestrator: {{driver: fake, options: {{boot_probes: 0}}}}
router: {{driver: fake}}
collectors:
  haproxy:
    driver: haproxy
    # No traffic leaves the machine: the fake instances' endpoints are replaced by a socket that
    # does not exist, so every read fails fast with "connect" (no data, never a number).
    target: {{url: "http://localhost/metrics", uds: "{tmp}/none/{{instance}}.sock"}}
pools:
  web: {{vip: 198.19.0.1, boot_timeout: 10s, drain_timeout: 1s}}
"""


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "web.yaml").write_text(POLICY)
    port = free_port()
    config = tmp_path / "scaler.yaml"
    config.write_text(CONFIG.format(port=port, tmp=tmp_path))
    (tmp_path / "api-token").write_text(API_TOKEN + "\n")
    svc = ServiceProcess(config, port)
    try:
        await svc.start()
        yield svc
    finally:
        assert await svc.stop() == 0, svc.tail()


async def test_valid_edit_applies_broken_edit_is_rejected_and_old_policy_keeps_deciding(
        service: ServiceProcess, tmp_path: Path) -> None:
    policy = tmp_path / "policies" / "web.yaml"

    async def size(n: int) -> bool:
        pool = await service.get("/v1/pools/web")
        return bool(pool["size"] == n and pool["operation"] is None)

    await eventually(lambda: size(1), timeout_s=15, interval_s=0.1,
                     what="size 1", detail=lambda: service.tail(40))

    # A valid edit, picked up by the file watch, takes effect at the next evaluation.
    policy.write_text(POLICY.replace("min: 1", "min: 2"))
    await eventually(lambda: size(2), timeout_s=15, interval_s=0.1,
                     what="size 2 after min: 2", detail=lambda: service.tail(40))
    pols = await service.get("/v1/policies")
    assert pols["valid"] is True and pols["pools"]["web"]["min"] == 2
    assert pols["last_reload"]["trigger"] == "file" and pols["last_reload"]["changed"] == ["web"]

    # A broken edit is rejected with FILE:LINE:COL; the last good policy keeps deciding.
    policy.write_text(POLICY.replace("min: 1", "min: two").replace("max: 3", "max: 2"))

    async def rejected() -> Any:
        p = await service.get("/v1/policies")
        return p if not p["valid"] else None

    pols = await eventually(rejected, timeout_s=15, interval_s=0.1,
                            what="the broken edit to be rejected", detail=lambda: service.tail(40))
    problem = pols["last_reload"]["problems"][0]
    assert problem.startswith(f"{policy}:3:5: pools.web.min: Input should be a valid integer"), problem
    assert pols["pools"]["web"]["min"] == 2 and pols["pools"]["web"]["max"] == 3
    before = len(await service.get("/v1/pools/web/decisions?limit=1000"))
    await asyncio.sleep(1.5)       # three evaluation intervals: evaluations go on with the old policy
    after = await service.get("/v1/pools/web/decisions?limit=1000")
    assert len(after) >= before + 2
    assert (await service.get("/v1/pools/web"))["min"] == 2
    async with httpx.AsyncClient(base_url=service.base, timeout=5) as c:
        r = await c.post("/v1/reload", headers={"Authorization": f"Bearer {API_TOKEN}"})
        assert r.status_code == 422 and r.json()["problems"] == pols["last_reload"]["problems"]
        metrics = (await c.get("/metrics")).text
    assert "scaler_policy_valid 0.0" in metrics
    # Collector health: every read failed with a reason, the input has no value (NaN, never 0).
    assert 'scaler_collector_errors_total{collector="haproxy",reason="connect"}' in metrics
    assert 'scaler_input_members{input="sessions",pool="web",state="missing"} 2.0' in metrics
    assert 'scaler_input_value{input="sessions",pool="web"} NaN' in metrics
    assert 'scaler_policy_reloads_total{result="rejected",trigger="file"}' in metrics
    events = [e["kind"] for e in await service.get("/v1/events?pool=web")]
    assert "policy_rejected" in events
    assert "reload (file) rejected" in service.tail(200)

    # SIGHUP: a same-size edit with the old mtime (the watch cannot see it) is applied by the signal.
    stat = policy.stat()
    fixed = POLICY.replace("min: 1", "min: 1").replace("max: 3", "max: 1")
    policy.write_text(fixed + " " * (stat.st_size - len(fixed)))
    os.utime(policy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert service.proc is not None
    service.proc.send_signal(signal.SIGHUP)
    pols = await eventually(lambda: _reloaded_by(service, "SIGHUP"), timeout_s=15, interval_s=0.1,
                            what="SIGHUP reload", detail=lambda: service.tail(40))
    assert pols["valid"] and pols["pools"]["web"]["max"] == 1
    await eventually(lambda: size(1), timeout_s=15, interval_s=0.1,
                     what="scale-in to the new max", detail=lambda: service.tail(40))
    decisions = await service.get("/v1/pools/web/decisions?limit=1000")
    assert any(d["outcome"] == "scale_in" and "above max: 2 > 1" in d["reason"] for d in decisions)

    # The command line reads the same service: `scaler why` and `scaler reload`.
    why = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "scaler", "why", "web", "-n", "1",
                                                   "-c", str(tmp_path / "scaler.yaml")],
                                  capture_output=True, text=True, timeout=30)
    assert why.returncode == 0, why.stderr
    assert why.stdout.startswith("web  ") and "\n  why:    " in why.stdout
    assert "\n  inputs: sessions=no data" in why.stdout
    reload = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "scaler", "reload", "--api",
                                                      service.base], capture_output=True, text=True, timeout=30,
                                     env={**os.environ, "SCALER_TOKEN_FILE": str(tmp_path / "api-token")})
    assert reload.returncode == 0 and "changed pools: none" in reload.stdout, reload.stderr


async def _reloaded_by(svc: ServiceProcess, trigger: str) -> Any:
    p = await svc.get("/v1/policies")
    return p if p["last_reload"] and p["last_reload"]["trigger"] == trigger else None
