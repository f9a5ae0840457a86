"""The whole loop for real: the scaler process, the lab's HAProxy instances, kernel routing in the
router namespace, load through the VIP. Also: SIGKILL in the middle of a scale-out and of a scale-in,
then a restart that finishes the work with nothing orphaned; a broken config stops `scaler run`.

Each test gets its own lab (random name) and always tears it down, then checks nothing is left.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actuators.lab.orchestrator import LabOrchestrator
from scaler.lab.demo import EXAMPLES, ServiceProcess, fib_next_hops, free_port, run_scenario, write_config
from scaler.lab.network import LabConfig, lab_down, lab_namespaces, lab_up
from scaler.store import MemberState, Store
from tests.support.examples import example_config_text
from tests.support.wait import eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

IN_PROGRESS = {"creating", "booting", "healthy", "announcing", "draining", "withdrawn", "deleting"}


@pytest.fixture
async def lab() -> AsyncIterator[LabConfig]:
    cfg = LabConfig(name=f"sclc{secrets.token_hex(1)}", backend_delay_ms=20)
    await lab_down(cfg)
    try:
        await lab_up(cfg)
        yield cfg
    finally:
        await lab_down(cfg)
        assert lab_namespaces(cfg) == [], "the lab left namespaces behind"
        pgrep = await asyncio.to_thread(subprocess.run, ["pgrep", "-f", str(cfg.lab_dir)], capture_output=True,
                                        text=True)
        leftovers = pgrep.stdout
        assert leftovers.strip() == "", f"processes of the lab are still running: {leftovers}"


async def test_scales_out_under_load_and_in_without_a_failed_request(lab: LabConfig) -> None:
    result = await run_scenario(lab, out=lambda line: print(line, flush=True))
    assert result.scaled_out_to >= 2, "\n".join(result.timeline)
    assert result.final_size == 1, "\n".join(result.timeline)
    assert len(result.checks) >= 20
    assert result.fib_problems == []
    # The router held exactly the in-service members at every check where membership was settled.
    assert any(len(c.fib) == 2 for c in result.checks) and result.checks[-1].fib == result.checks[-1].serving
    assert result.high["failed"] == 0, result.high
    assert result.low["ok"] > 500, result.low          # the scale-in happened under continuous load...
    assert result.low["failed"] == 0, result.low       # ...and broke nothing (the load ran with retry off)
    assert result.high.get("retried", 0) == 0 and result.low.get("retried", 0) == 0


def write_policy(lab: LabConfig, lo: int, hi: int) -> Path:
    text = (EXAMPLES / "policies" / "web.yaml").read_text()
    text = text.replace("min: 1 ", f"min: {lo} ").replace("max: 3", f"max: {hi}")
    path = lab.lab_dir / "scaler" / "policies" / "web.yaml"
    path.write_text(text)
    return path


async def start(lab: LabConfig, port: int) -> ServiceProcess:
    config = write_config(lab, port, overrides={"intervals.reconcile": "300ms"})
    return ServiceProcess(config, port)


async def kill_when(svc: ServiceProcess, states: set[str], kind: str, timeout_s: float = 60) -> str:
    """SIGKILL the service as soon as an operation of `kind` runs and a member is in one of `states`."""

    async def caught() -> str | None:
        pool = await svc.get("/v1/pools/web")
        op = pool["operation"]
        hit = [m["state"] for m in pool["members"] if m["state"] in states]
        return hit[0] if op and op["kind"] == kind and hit else None

    state = await eventually(caught, timeout_s=timeout_s, interval_s=0.01, what=f"a {kind} in states {states}",
                             detail=svc.tail)
    assert svc.proc is not None
    svc.proc.send_signal(signal.SIGKILL)
    await svc.proc.wait()
    return state


async def settled(svc: ServiceProcess, size: int, timeout_s: float = 60) -> dict:
    async def pool_settled() -> dict | None:
        pool = await svc.get("/v1/pools/web")
        states = [m["state"] for m in pool["members"]]
        return pool if pool["operation"] is None and states == ["in_service"] * size else None

    return await eventually(pool_settled, timeout_s=timeout_s, interval_s=0.2, what=f"the pool settled at {size}",
                            detail=svc.tail)


async def assert_nothing_orphaned(lab: LabConfig, size: int) -> None:
    store = Store(f"sqlite:///{lab.lab_dir}/scaler/scaler.db")      # the scaler is stopped: lock is free
    try:
        alive = {m.instance: m for m in store.members("web")}
        assert all(m.state == MemberState.IN_SERVICE for m in alive.values()), alive
        assert len(alive) == size
        instances = await LabOrchestrator(lab.orchestrator_config()).list("web")
        assert {i.name for i in instances} == set(alive), "lab instances differ from the store's members"
        fib = await fib_next_hops(lab.router_ns, str(lab.vip))
        assert fib == {m.address for m in alive.values()}, "the FIB differs from the members in service"
    finally:
        store.close()


async def test_sigkill_during_scale_out_then_restart_completes_it(lab: LabConfig) -> None:
    port = free_port()
    svc = await start(lab, port)
    await svc.start()
    state = await kill_when(svc, {"creating", "booting", "healthy", "announcing"}, "scale_out")
    print(f"killed with a member in state {state}")
    svc2 = ServiceProcess(svc.config, port)
    await svc2.start()
    try:
        pool = await settled(svc2, 1)
        assert [op["state"] for op in await svc2.get("/v1/pools/web/operations")] == ["done"]
        assert pool["members"][0]["instance"].startswith("web-")
    finally:
        await svc2.stop()
    await assert_nothing_orphaned(lab, 1)


async def test_sigkill_during_scale_in_then_restart_completes_it(lab: LabConfig) -> None:
    port = free_port()
    svc = await start(lab, port)
    write_policy(lab, 2, 2)
    await svc.start()
    await settled(svc, 2)
    assert await svc.stop() == 0                        # a clean stop: exit 0 on SIGTERM
    write_policy(lab, 1, 1)                             # above max now: the restart scales in
    svc2 = ServiceProcess(svc.config, port)
    await svc2.start()
    state = await kill_when(svc2, {"draining", "withdrawn", "deleting"}, "scale_in")
    print(f"killed with a member in state {state}")
    svc3 = ServiceProcess(svc.config, port)
    await svc3.start()
    try:
        await settled(svc3, 1)
        ops = await svc3.get("/v1/pools/web/operations")
        assert [(o["kind"], o["state"]) for o in ops][:1] == [("scale_in", "done")]
    finally:
        await svc3.stop()
    await assert_nothing_orphaned(lab, 1)


def test_broken_config_stops_run_naming_file_line_and_key(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "web.yaml").write_text((EXAMPLES / "policies" / "web.yaml").read_text())
    config = tmp_path / "scaler.yaml"
    example = example_config_text(tmp_path / "snmp")
    broken = example.replace("    mode: conntrack ", "    idle_timer: 5\n    mode: conntrack ")
    line = broken.splitlines().index("    idle_timer: 5") + 1
    config.write_text(broken)
    run = subprocess.run([sys.executable, "-m", "scaler", "run", "-c", str(config)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1
    assert f"{config}:{line}:5: router.options.idle_timer: unknown key" in run.stderr

    config.write_text(example)
    policy = tmp_path / "policies" / "web.yaml"
    policy.write_text(policy.read_text().replace("for: 6s", "for: soon"))
    run = subprocess.run([sys.executable, "-m", "scaler", "run", "-c", str(config)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1
    assert f"{policy}:22:9: pools.web.rules.0.for: not a duration: 'soon'" in run.stderr
