"""Warm standby and rolling replacement (#18) for real: the scaler process, the lab's HAProxy instances,
the kernel router, load through the VIP (short requests and keep-alive clients, retries off).

- A scale-out served from standby: the standby member's next hop is in the router's FIB within a
  second of the decision, and the standby is booted again.
- A rollout of a 3-member pool to a new instance definition, with the scaler SIGKILLed in the middle
  and restarted: every member ends on the new definition, the old instances are deleted, and not
  one request fails.
- A rollout to a definition whose members never become healthy: it stops (the launch breaker opens
  after 3 failed launches), the failed members are deleted, the old ones keep serving, no request fails.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from actuators.lab.orchestrator import LabOrchestrator
from scaler.lab.demo import ServiceProcess, fib_next_hops, free_port, write_config
from scaler.lab.network import LabConfig, LoadRun, lab_down, lab_namespaces, lab_up
from tests.support.wait import eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

POLICY = """\
pools:
  web:
    min: {min}
    max: 4
    standby: {standby}
    inputs:
      sessions: {{source: haproxy, metric: current_sessions, aggregate: avg}}
    rules:
      - {{name: busy, input: sessions, above: 100000, for: 6s, adjust: +1}}
    cooldown: {{scale_out: 0s, scale_in: 0s}}
    stale_after: 10s
"""


@pytest.fixture
async def lab() -> AsyncIterator[LabConfig]:
    cfg = LabConfig(name=f"scsb{secrets.token_hex(1)}", backend_delay_ms=20)
    await lab_down(cfg)
    try:
        await lab_up(cfg)
        yield cfg
    finally:
        await lab_down(cfg)
        assert lab_namespaces(cfg) == [], "the lab left namespaces behind"
        pgrep = await asyncio.to_thread(subprocess.run, ["pgrep", "-f", str(cfg.lab_dir)], capture_output=True,
                                        text=True)
        assert pgrep.stdout.strip() == "", f"processes of the lab are still running: {pgrep.stdout}"


def policy_file(lab: LabConfig, *, min: int, standby: int) -> Path:
    path = lab.lab_dir / "standby-policy.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(POLICY.format(min=min, standby=standby))
    return path


def config(lab: LabConfig, port: int, policy: Path, version: str) -> Path:
    return write_config(lab, port, policy=policy, overrides={
        "intervals.reconcile": "300ms", "intervals.evaluate": "500ms", "intervals.policy_watch": "0s",
        "pools.web.instance": {"version": version}})


async def operate(lab: LabConfig, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """A state change over the API's unix socket (trusted with every scope: the lab's scaler.yaml)."""
    sock = lab.lab_dir / "scaler" / "scaler.sock"
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(sock)), base_url="http://scaler",
                                 timeout=10) as c:
        r = await c.request(method, path, json=body)
        assert r.status_code < 300, r.text
        return r.json()


async def pool_where(svc: ServiceProcess, what: str, cond: Any, timeout_s: float = 90) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        pool: dict[str, Any] = await svc.get("/v1/pools/web")
        return pool if cond(pool) else None

    return await eventually(check, timeout_s=timeout_s, interval_s=0.1, what=what, detail=svc.tail)


def states(pool: dict[str, Any]) -> list[str]:
    return sorted(m["state"] for m in pool["members"])


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def test_a_scale_out_is_served_from_standby_within_a_second_and_the_standby_is_replenished(
        lab: LabConfig) -> None:
    port = free_port()
    policy = policy_file(lab, min=1, standby=1)
    svc = ServiceProcess(config(lab, port, policy, "1"), port)
    await svc.start()
    load = LoadRun(lab, short_rps=50, keepalive_clients=4, max_seconds=120, timeout_s=2.0, retry=False)
    try:
        pool = await pool_where(svc, "one member in service and one standby",
                                lambda p: states(p) == ["in_service", "standby"] and p["standby"] == 1)
        spare = next(m for m in pool["members"] if m["state"] == "standby")
        assert spare["address"] not in await fib_next_hops(lab.router_ns, str(lab.vip))
        await load.start()
        await asyncio.sleep(2)
        (lab.lab_dir / "scaler" / "policies" / "web.yaml").write_text(POLICY.format(min=2, standby=1))
        await operate(lab, "POST", "/v1/reload")
        # The standby member's next hop appears in the FIB: when, to the poll's 5 ms.
        deadline = time.monotonic() + 30
        while spare["address"] not in await fib_next_hops(lab.router_ns, str(lab.vip)):
            assert time.monotonic() < deadline, svc.tail()
            await asyncio.sleep(0.005)
        in_fib = time.time()
        decision = next(d for d in await svc.get("/v1/pools/web/decisions?limit=20") if d["outcome"] == "scale_out")
        took = in_fib - at(decision["at"])
        print(f"decision → standby member in the FIB: {took * 1000:.0f} ms ({decision['reason']})")
        assert "1 of 1 from standby" in decision["reason"] and spare["instance"] in decision["reason"]
        assert took <= 1.0, f"{took:.3f}s from the decision to the FIB"
        pool = await pool_where(svc, "two in service and the standby booted again",
                                lambda p: states(p) == ["in_service", "in_service", "standby"])
        assert next(m for m in pool["members"] if m["instance"] == spare["instance"])["state"] == "in_service"
        ops = await svc.get("/v1/pools/web/operations")
        # The replenishment started in the evaluation that took the standby member (same time).
        assert sorted(o["kind"] for o in ops[:2]) == ["scale_out", "standby"]
        assert {o["state"] for o in ops[:2]} == {"done"} and ops[0]["started"] == ops[1]["started"]
    finally:
        summary = await load.stop() if load.running else load.totals()
        assert await svc.stop() == 0, svc.tail()
    print(f"load: {summary.get('ok')} ok, {summary.get('failed')} failed")
    assert summary.get("ok", 0) > 100 and summary.get("failed") == 0, summary


async def test_a_rollout_under_load_with_a_sigkill_in_the_middle_fails_no_request(lab: LabConfig) -> None:
    port = free_port()
    policy = policy_file(lab, min=3, standby=0)
    svc = ServiceProcess(config(lab, port, policy, "1"), port)
    await svc.start()
    pool = await pool_where(svc, "three members in service", lambda p: states(p) == ["in_service"] * 3)
    old = {m["instance"] for m in pool["members"]}
    v1 = pool["template"]
    assert {m["template"] for m in pool["members"]} == {v1}
    assert await svc.stop() == 0
    # The operator's new definition, then a restart: every member is outdated.
    svc = ServiceProcess(config(lab, port, policy, "2"), port)
    await svc.start()
    load = LoadRun(lab, short_rps=50, keepalive_clients=4, max_seconds=240, timeout_s=2.0, retry=False)
    await load.start()
    try:
        await asyncio.sleep(2)
        pool = await svc.get("/v1/pools/web")
        v2 = pool["template"]
        assert v2 != v1 and pool["outdated"] == 3
        started = await operate(lab, "POST", "/v1/pools/web/rollout", {"surge": 1})
        assert started["state"] == "running" and len(started["outdated"]) == 3
        # Killed while the first old member drains (a new one in service, two outdated left).
        await pool_where(svc, "an old member draining for the rollout",
                         lambda p: any(m["state"] in ("draining", "withdrawn") and m["instance"] in old
                                       for m in p["members"]))
        assert svc.proc is not None
        svc.proc.send_signal(signal.SIGKILL)
        await svc.proc.wait()
        svc = ServiceProcess(svc.config, port)
        await svc.start()

        async def done() -> dict[str, Any] | None:
            r: dict[str, Any] = await svc.get("/v1/pools/web/rollout")
            assert r["state"] != "failed", r
            return r if r["state"] == "done" else None

        rollout = await eventually(done, timeout_s=180, interval_s=0.5, what="the rollout done", detail=svc.tail)
        assert rollout["operation"] == started["operation"] and rollout["replaced"] == 3
        assert rollout["failed_launches"] == 0 and rollout["outdated"] == []
        await asyncio.sleep(2)                       # load on the new members only
    finally:
        summary = await load.stop()
    pool = await svc.get("/v1/pools/web")
    try:
        assert states(pool) == ["in_service"] * 3
        assert {m["template"] for m in pool["members"]} == {v2}
        now = {m["instance"] for m in pool["members"]}
        assert not now & old
        listed = {i.name for i in await LabOrchestrator(lab.orchestrator_config()).list("web")}
        assert listed == now, "the old instances are deleted, the new ones exist"
        assert await fib_next_hops(lab.router_ns, str(lab.vip)) == {m["address"] for m in pool["members"]}
    finally:
        assert await svc.stop() == 0, svc.tail()
    kinds = {k: (v.get("ok"), v.get("failed")) for k, v in (summary.get("kinds") or {}).items() if v.get("ok")}
    print(f"load: {summary.get('ok')} ok, {summary.get('failed')} failed; (ok, failed) by kind {kinds}")
    assert summary.get("ok", 0) > 500 and summary.get("failed") == 0, summary


async def test_a_rollout_whose_new_members_never_become_healthy_stops_and_the_old_ones_keep_serving(
        lab: LabConfig) -> None:
    port = free_port()
    policy = policy_file(lab, min=3, standby=0)
    svc = ServiceProcess(config(lab, port, policy, "1"), port)
    await svc.start()
    pool = await pool_where(svc, "three members in service", lambda p: states(p) == ["in_service"] * 3)
    old = {m["instance"]: m["address"] for m in pool["members"]}
    assert await svc.stop() == 0
    # A broken new definition: its instances' backends answer after 5 s, past the lab's 2 s probe, so
    # HAProxy never answers the probe in time and every new member misses its boot_timeout. (The old
    # instances keep the backends they were started with.)
    svc = ServiceProcess(write_config(lab, port, policy=policy, overrides={
        "intervals.reconcile": "300ms", "intervals.evaluate": "500ms", "intervals.policy_watch": "0s",
        "pools.web.instance": {"version": "2"}, "pools.web.boot_timeout": "3s",
        "orchestrator.options.backend_delay_ms": 5000}), port)
    await svc.start()
    load = LoadRun(lab, short_rps=50, keepalive_clients=4, max_seconds=120, timeout_s=2.0, retry=False)
    await load.start()
    try:
        await asyncio.sleep(1)
        started = await operate(lab, "POST", "/v1/pools/web/rollout", {"surge": 1})

        async def ended() -> dict[str, Any] | None:
            r: dict[str, Any] = await svc.get("/v1/pools/web/rollout")
            return r if r["state"] != "running" else None

        rollout = await eventually(ended, timeout_s=90, interval_s=0.2, what="the rollout ended", detail=svc.tail)
        print(f"rollout {rollout['state']}: {rollout['error']}")
        assert rollout["operation"] == started["operation"] and rollout["state"] == "failed"
        assert rollout["failed_launches"] == 3 and rollout["replaced"] == 0 and rollout["new_in_service"] == 0
        assert "3 outdated members keep serving" in (rollout["error"] or "")
        # The failed members are deleted; the old ones serve as before.
        pool = await pool_where(svc, "the failed members deleted", lambda p: states(p) == ["in_service"] * 3)
        assert {m["instance"]: m["address"] for m in pool["members"]} == old
        listed = {i.name for i in await LabOrchestrator(lab.orchestrator_config()).list("web")}
        assert listed == set(old)
        assert await fib_next_hops(lab.router_ns, str(lab.vip)) == set(old.values())
        await asyncio.sleep(1)
    finally:
        summary = await load.stop()
        assert await svc.stop() == 0, svc.tail()
    print(f"load: {summary.get('ok')} ok, {summary.get('failed')} failed")
    assert summary.get("ok", 0) > 200 and summary.get("failed") == 0, summary
