"""The lab for real: namespaces, veths, HAProxy and the backend per instance, the load generator in the
client namespace, traffic through the router namespace over a plain multipath route the test programs.

Each test gets its own lab with a random name (`sclt` + 2 hex digits) and ALWAYS tears it down."""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import shutil
import signal
import time
from collections.abc import AsyncIterator
from ipaddress import IPv4Address

import pytest

from actuators.errors import OrchestratorError
from actuators.haproxy_runtime import HAProxyRuntime
from actuators.lab.orchestrator import (
    InstanceMeta,
    LabOrchestrator,
    instance_ns,
    pids_in_netns,
    process_cmdline,
    read_pidfile,
    router_ifname,
    write_atomic,
)
from actuators.linux import netns
from actuators.orchestrator import Instance, InstanceSpec
from scaler.lab.network import LabConfig, LoadRun, lab_down, lab_namespaces, lab_status, lab_up
from tests.support.wait import eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
]


@pytest.fixture
async def lab() -> AsyncIterator[LabConfig]:
    while True:
        cfg = LabConfig(name=f"sclt{secrets.token_hex(1)}")
        if not lab_namespaces(cfg) and not cfg.lab_dir.exists():
            break
    try:
        await lab_up(cfg)
        yield cfg
    finally:
        await lab_down(cfg)
        assert lab_namespaces(cfg) == []


@pytest.fixture
def orch(lab: LabConfig) -> LabOrchestrator:
    return LabOrchestrator(lab.orchestrator_config())


async def route_vip(lab: LabConfig, *instances: Instance) -> None:
    """What the router driver does in production, done the plain way."""
    hops: list[str] = []
    for inst in instances:
        hops += ["nexthop", "via", str(inst.address)]
    await netns.run(["ip", "route", "replace", f"{lab.vip}/32", *hops], ns=lab.router_ns)


async def serving(orch: LabOrchestrator, lab: LabConfig, *names: str) -> list[Instance]:
    spec = InstanceSpec(pool="web", vip=lab.vip)
    out = []
    for name in names:
        inst = await orch.create(spec, name)
        await eventually(functools.partial(orch.probe, inst), what=f"{name} serves")
        out.append(inst)
    return out


async def test_up_twice_then_down_leaves_nothing(lab: LabConfig, orch: LabOrchestrator) -> None:
    again = await lab_up(lab)                                   # idempotent
    assert again["router_ns"] == lab.router_ns
    await serving(orch, lab, "a")
    run = await LoadRun(lab, keepalive_clients=1, max_seconds=30).start()
    await run.next_tick()
    status = await lab_status(lab)
    assert status.up and status.instances["a"] == {"netns": True, "haproxy": True, "backend": True}
    ours = [pid for f in lab.lab_dir.rglob("*.pid") if (pid := read_pidfile(f))]
    assert len(ours) == 3                                       # haproxy, backend, loadgen

    report = await lab_down(lab)

    assert sorted(report.namespaces) == sorted([lab.router_ns, lab.client_ns, instance_ns(lab.name, "a")])
    assert {pid for pid, _ in report.processes} >= set(ours)
    assert all(process_cmdline(pid) == "" for pid in ours)
    assert lab_namespaces(lab) == [] and not lab.lab_dir.exists()
    summary = await run.stop()
    assert summary["reason"] in ("signal", "killed")
    assert str(await lab_down(lab)) == "processes: none; namespaces: none; directory: none"


async def test_down_cleans_a_half_built_lab(lab: LabConfig) -> None:
    # A crash mid-create: meta.json and the namespace exist, a process runs in it, no pidfile.
    ns = instance_ns(lab.name, "x")
    meta = InstanceMeta(name="x", pool="web", idx=9, vip=lab.vip, lab=lab.name, created_at=time.time())
    write_atomic(lab.lab_dir / "instances" / "x" / "meta.json", meta.model_dump_json())
    await netns.run(["ip", "netns", "add", ns])
    stray = await asyncio.create_subprocess_exec("ip", "netns", "exec", ns, "sleep", "60")
    try:
        await eventually(lambda: bool(pids_in_netns(ns)), what="sleep runs in ns")
        report = await lab_down(lab)
        assert await asyncio.wait_for(stray.wait(), 5) is not None
        assert stray.pid in {pid for pid, _ in report.processes}
        assert ns in report.namespaces and lab_namespaces(lab) == [] and not lab.lab_dir.exists()
    finally:
        if stray.returncode is None:
            stray.kill()
            await stray.wait()


async def test_create_after_crash_finishes_exactly_once(lab: LabConfig, orch: LabOrchestrator) -> None:
    ns = instance_ns(lab.name, "x")
    meta = InstanceMeta(name="x", pool="web", idx=5, vip=lab.vip, lab=lab.name, created_at=time.time())
    write_atomic(orch.paths("x").meta, meta.model_dump_json())
    await netns.run(["ip", "netns", "add", ns])
    [half] = await orch.list("web")
    assert half.status == "building" and half.address == IPv4Address("198.18.5.2")
    assert await orch.probe(half) is False

    spec = InstanceSpec(pool="web", vip=lab.vip)
    first = await orch.create(spec, "x")
    second = await orch.create(spec, "x")

    assert first.address == second.address == IPv4Address("198.18.5.2")   # the persisted index
    assert await orch.probe(first) is True
    assert [n for n in lab_namespaces(lab) if n.startswith(f"{lab.name}-i-")] == [ns]
    assert len(pids_in_netns(ns)) == 2                           # one haproxy, one backend
    assert [(i.name, i.status) for i in await orch.list("web")] == [("x", "active")]
    assert await orch.list("other") == []

    # HAProxy dies: probe says no, list says error, a create repairs it.
    haproxy_pid = read_pidfile(orch.paths("x").haproxy_pid)
    assert haproxy_pid is not None
    os.kill(haproxy_pid, signal.SIGKILL)
    await eventually(lambda: process_cmdline(haproxy_pid) == "", what="haproxy dead")
    assert await orch.probe(first) is False
    assert [i.status for i in await orch.list("web")] == ["error"]
    await orch.create(spec, "x")
    assert await orch.probe(first) is True
    assert len(pids_in_netns(ns)) == 2

    # A second instance gets the next free index; a name in another pool is refused.
    y = await orch.create(spec, "y")
    assert y.address == IPv4Address("198.18.1.2")
    with pytest.raises(OrchestratorError, match="instance y"):
        await orch.create(InstanceSpec(pool="other", vip=lab.vip), "y")

    await orch.delete("x")
    await orch.delete("x")                                         # idempotent
    assert not netns.exists(ns) and not orch.paths("x").dir.exists()
    rc, _, _ = await netns.run(["ip", "-n", lab.router_ns, "link", "show", "dev", router_ifname(lab.name, 5)],
                               check=False)
    assert rc != 0
    assert [i.name for i in await orch.list("web")] == ["y"]


async def test_create_is_idempotent_and_probe_turns_true(lab: LabConfig, orch: LabOrchestrator) -> None:
    spec = InstanceSpec(pool="web", vip=lab.vip)
    a1 = await orch.create(spec, "a")
    a2 = await orch.create(spec, "a")
    assert a1 == a2
    assert a1.endpoints["runtime_api"].endswith("/instances/a/admin.sock")
    await eventually(lambda: orch.probe(a1), what="a serves")
    assert [n for n in lab_namespaces(lab) if "-i-" in n] == [instance_ns(lab.name, "a")]
    info = await HAProxyRuntime(a1.endpoints["runtime_api"]).show_info()
    assert info["Name"] == "HAProxy"


async def test_traffic_reaches_both_instances(lab: LabConfig, orch: LabOrchestrator) -> None:
    a, b = await serving(orch, lab, "a", "b")
    await route_vip(lab, a, b)
    async with LoadRun(lab, short_rps=150, keepalive_clients=2, keepalive_pause_ms=5, max_seconds=3) as run:
        summary = await run.wait()
    assert summary["reason"] == "max_seconds"
    assert summary["failed"] == 0, summary
    assert summary["ok"] > 300
    assert summary["by_lb"].get("a", 0) > 50 and summary["by_lb"].get("b", 0) > 50, summary["by_lb"]
    assert len(run.ticks) >= 2 and all(t["failed"] == 0 for t in run.ticks)


async def test_drain_moves_keepalive_clients_away(lab: LabConfig, orch: LabOrchestrator) -> None:
    a, b = await serving(orch, lab, "a", "b")
    await route_vip(lab, a, b)
    rt_a = HAProxyRuntime(a.endpoints["runtime_api"])
    rt_b = HAProxyRuntime(b.endpoints["runtime_api"])
    async with LoadRun(lab, keepalive_clients=8, keepalive_pause_ms=20, max_seconds=25) as run:
        async def both_busy() -> bool:
            return await rt_a.current_connections() > 0 and await rt_b.current_connections() > 0
        await eventually(both_busy, what="keep-alive clients on both LBs")

        await rt_a.drain()
        assert await rt_a.is_draining() and not await rt_b.is_draining()

        # Every client on `a` is closed after its next response and reconnects; the ones hashed
        # to `b` stay there, so all end up on `b`.
        async def all_on_b() -> bool:
            return await rt_a.current_connections() == 0 and await rt_b.current_connections() == 8
        await eventually(all_on_b, timeout_s=10, what="drained LB has no connections, b has all 8")
        await asyncio.sleep(0.5)
        assert await rt_a.current_connections() == 0       # and it stays so

        # The drained LB still accepts and answers new connections.
        assert await orch.probe(a) is True
        await run.set(short_rps=100)
        await run.next_tick()
        tick = await run.next_tick()
        assert tick is not None and tick["by_lb"].get("a", 0) > 10, tick
        summary = await run.stop()
    assert summary["failed"] == 0, summary

    await rt_a.undrain()
    assert not await rt_a.is_draining()


async def test_loadgen_counts_a_killed_lb_as_failures(lab: LabConfig, orch: LabOrchestrator) -> None:
    a, b = await serving(orch, lab, "a", "b")
    await route_vip(lab, a, b)
    async with LoadRun(lab, short_rps=100, keepalive_clients=4, keepalive_pause_ms=10, max_seconds=20) as run:
        first = await run.next_tick()
        assert first is not None and first["failed"] == 0
        pid = read_pidfile(orch.paths("a").haproxy_pid)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)            # the LB dies; the route still sends flows to it
        await run.next_tick()
        await run.next_tick()
        summary = await run.stop()
    assert summary["failed"] > 10, summary
    assert summary["failures"].get("connect_refused", 0) > 0, summary["failures"]
    assert summary["by_lb"].get("b", 0) > 0


@pytest.mark.parametrize("retry", [pytest.param(False, id="without retry a reset is a failure"),
                                   pytest.param(True, id="the safe retry absorbs it and counts it")])
async def test_loadgen_sees_resets_when_flows_move(lab: LabConfig, orch: LabOrchestrator, retry: bool) -> None:
    a, b = await serving(orch, lab, "a", "b")
    await route_vip(lab, a)
    async with LoadRun(lab, keepalive_clients=6, keepalive_pause_ms=10, max_seconds=20, retry=retry) as run:
        await run.next_tick()
        # Every established flow now reaches `b`, which knows none of them and answers RST.
        await route_vip(lab, b)
        await run.next_tick()
        summary = await run.stop()
    if retry:
        assert summary["failed"] == 0 and summary["retries"] == {"reset": 6}, summary
    else:
        assert summary["failures"] == {"reset": 6} and summary["retried"] == 0, summary
    assert summary["by_lb"].get("b", 0) > 0


async def test_create_applies_a_changed_configuration(lab: LabConfig, orch: LabOrchestrator) -> None:
    spec = InstanceSpec(pool="web", vip=lab.vip)
    [a] = await serving(orch, lab, "a")
    old_haproxy, old_backend = read_pidfile(orch.paths("a").haproxy_pid), read_pidfile(orch.paths("a").backend_pid)
    assert await orch.create(spec, "a") == a                      # same settings: nothing restarted
    assert read_pidfile(orch.paths("a").haproxy_pid) == old_haproxy

    changed = LabOrchestrator(lab.orchestrator_config(keepalive_timeout_s=1.0, backend_delay_ms=1))
    await changed.create(spec, "a")
    assert "timeout http-keep-alive 1000ms" in orch.paths("a").haproxy_cfg.read_text()
    assert read_pidfile(orch.paths("a").haproxy_pid) not in (None, old_haproxy)
    assert read_pidfile(orch.paths("a").backend_pid) not in (None, old_backend)
    await eventually(lambda: changed.probe(a), what="a serves after the reload")
