"""The lab built for the `bgp` router driver, for real: FRR (zebra + bgpd) in the router namespace, the
ctl namespace where the scaler's ExaBGP runs, the driver announcing lab instances to FRR, and the
whole scale-out / scale-in scenario with the scaler as a real process on the bgp driver.

Each test gets its own lab (random name) and ALWAYS tears it down, then checks nothing is left: no
namespace, no process naming the lab directory (FRR's daemons, ExaBGP and its bridge included).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from typing import Any

import pytest

from actuators.bgp import BgpRouter, BgpRouterConfig
from actuators.lab.orchestrator import LabOrchestrator, pids_in_netns, process_cmdline
from actuators.linux import netns
from actuators.orchestrator import Instance, InstanceSpec
from actuators.router import NextHop
from scaler.lab.demo import fib_next_hops, run_scenario
from scaler.lab.frr import FRR_BIN
from scaler.lab.network import (
    BGP_ROUTER_ADDRESS,
    BGP_SPEAKER_ADDRESS,
    LabConfig,
    LabError,
    lab_down,
    lab_namespaces,
    lab_status,
    lab_up,
)
from tests.support.wait import eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
    pytest.mark.skipif(not (FRR_BIN / "bgpd").exists(), reason=f"FRR is not installed ({FRR_BIN}/bgpd)"),
]


def new_lab(**kw: Any) -> LabConfig:
    while True:
        cfg = LabConfig(name=f"sclb{secrets.token_hex(1)}", router="bgp", **kw)
        if not lab_namespaces(cfg) and not cfg.lab_dir.exists():
            return cfg


async def teardown(cfg: LabConfig) -> None:
    await lab_down(cfg)
    assert lab_namespaces(cfg) == [], "the lab left namespaces behind"
    pgrep = await asyncio.to_thread(subprocess.run, ["pgrep", "-af", str(cfg.lab_dir)], capture_output=True,
                                    text=True)
    assert pgrep.stdout.strip() == "", f"processes of the lab are still running: {pgrep.stdout}"


@pytest.fixture
async def lab() -> AsyncIterator[LabConfig]:
    cfg = new_lab()
    try:
        await lab_up(cfg)
        yield cfg
    finally:
        await teardown(cfg)


async def test_bgp_lab_up_twice_then_down_leaves_nothing(lab: LabConfig) -> None:
    frr = lab.frr()
    assert frr.running()
    pids = {d: frr.pid(d) for d in ("zebra", "bgpd")}
    assert netns.exists(lab.ctl_ns)
    _, out, _ = await netns.run(["ip", "-j", "addr", "show"], ns=lab.ctl_ns)
    assert str(BGP_SPEAKER_ADDRESS) in {a["local"] for link in json.loads(out) for a in link["addr_info"]}
    info = json.loads((lab.lab_dir / "lab.json").read_text())
    assert info["router"] == "bgp"
    assert info["bgp"]["ctl_ns"] == lab.ctl_ns and info["bgp"]["router_options"] == lab.bgp_router_options()
    assert (info["bgp"]["router_asn"], info["bgp"]["speaker_asn"]) == (65000, 65001)

    again = await lab_up(lab)                                   # idempotent: the running FRR is kept
    assert again["router"] == "bgp"
    assert {d: frr.pid(d) for d in ("zebra", "bgpd")} == pids
    status = await lab_status(lab)
    assert status.up and status.router == "bgp"
    assert status.bgp_sessions is not None and set(status.bgp_sessions) == {str(BGP_SPEAKER_ADDRESS)}
    assert "FRR sessions: 198.18.255.2" in str(status)
    # The kernel driver must never run next to zebra: the lab refuses to switch in place.
    with pytest.raises(LabError, match="up with router 'bgp'"):
        await lab_up(lab.model_copy(update={"router": "kernel"}))

    report = await lab_down(lab)

    assert sorted(report.namespaces) == sorted([lab.router_ns, lab.client_ns, lab.ctl_ns])
    assert {pid for pid, _ in report.processes} >= {p for p in pids.values() if p is not None}
    assert all(process_cmdline(p) == "" for p in pids.values() if p is not None)
    assert lab_namespaces(lab) == [] and not lab.lab_dir.exists()
    assert str(await lab_down(lab)) == "processes: none; namespaces: none; directory: none"


async def test_kernel_lab_runs_no_frr() -> None:
    cfg = new_lab().model_copy(update={"router": "kernel"})
    try:
        info = await lab_up(cfg)
        assert info["router"] == "kernel" and info["bgp"] is None
        assert not netns.exists(cfg.ctl_ns) and not cfg.frr_dir.exists()
        assert pids_in_netns(cfg.router_ns) == []
        assert "FRR" not in str(await lab_status(cfg))
    finally:
        await teardown(cfg)


async def fib_without_compat(lab: LabConfig) -> set[str]:
    """The FIB read with `nexthop_compat_mode` 0: routes carry only `nhid`, hops come from the objects."""
    await netns.run(["sysctl", "-q", "-w", "net.ipv4.nexthop_compat_mode=0"], ns=lab.router_ns)
    try:
        _, out, _ = await netns.run(["ip", "-j", "route", "show", "exact", f"{lab.vip}/32"], ns=lab.router_ns)
        routes = json.loads(out or "[]")
        assert all("gateway" not in r and "nexthops" not in r for r in routes), routes
        return await fib_next_hops(lab.router_ns, str(lab.vip))
    finally:
        await netns.run(["sysctl", "-q", "-w", "net.ipv4.nexthop_compat_mode=1"], ns=lab.router_ns)


async def test_the_bgp_driver_with_the_lab_options_reaches_the_fib(lab: LabConfig) -> None:
    """`bgp_router_options()` is a working driver configuration, and `fib_next_hops` reads FRR's
    routes whether the kernel reports their next hops inline or only as nexthop objects."""
    orch = LabOrchestrator(lab.orchestrator_config())
    spec = InstanceSpec(pool="web", vip=lab.vip)
    instances: list[Instance] = []
    for name in ("a", "b", "c"):
        inst = await orch.create(spec, name)
        assert inst.address is not None
        instances.append(inst)
    router = BgpRouter(BgpRouterConfig(**lab.bgp_router_options()))
    try:
        await router.start()
        await lab.frr().wait_established(BGP_SPEAKER_ADDRESS, timeout_s=30)
        await eventually(lambda: router.speaker.connected, what="ExaBGP API connected")
        for members in (instances[:1], instances[:2], instances, instances[1:2], []):
            want = {str(i.address) for i in members}
            await router.apply({lab.vip: frozenset(NextHop(i.address) for i in members if i.address)})
            await eventually(functools.partial(fib_equals, lab, want), what=f"FIB == {sorted(want)}")
            assert await fib_without_compat(lab) == want
        assert router.health()["sessions"][0]["state"] == "synced"
        assert (await lab_status(lab)).bgp_sessions == {str(BGP_SPEAKER_ADDRESS): "Established"}
    finally:
        await router.close()
    # The speaker is the driver's child: nothing of it stays in the ctl namespace.
    await eventually(lambda: pids_in_netns(lab.ctl_ns) == [], what="ctl namespace empty")


async def fib_equals(lab: LabConfig, want: set[str]) -> bool:
    return await fib_next_hops(lab.router_ns, str(lab.vip)) == want


async def test_scales_out_and_in_over_bgp() -> None:
    """The demo's scenario on the bgp driver, with the members handing stray packets to their owner
    (actuators/handoff.py, on in the bgp demo): plain ECMP rehashes established flows when a member
    joins and a draining member is withdrawn at once, yet no request fails; scaling and the FIB must
    be right at every check."""
    cfg = new_lab(backend_delay_ms=20)
    try:
        await lab_up(cfg)
        result = await run_scenario(cfg, out=lambda line: print(line, flush=True))
        # The scaler stopped: its ExaBGP and the API bridge went with it.
        await eventually(lambda: pids_in_netns(cfg.ctl_ns) == [], what="ctl namespace empty")
    finally:
        await teardown(cfg)
    # The numbers the lead reports (run with -s to see them on success).
    print(result.summary())
    print("SCENARIO " + json.dumps({"router": "bgp", "times_s": {k: round(v, 1) for k, v in result.times.items()},
                                    "high": {k: result.high.get(k) for k in ("ok", "failed", "failures")},
                                    "low": {k: result.low.get(k) for k in ("ok", "failed", "failures")}}))
    timeline = "\n".join(result.timeline)
    assert result.router == "bgp"
    assert result.scaled_out_to >= 2, timeline
    assert result.final_size == 1, timeline
    assert len(result.checks) >= 20
    assert result.fib_problems == []
    assert any(len(c.fib) == 2 for c in result.checks) and result.checks[-1].fib == result.checks[-1].serving
    assert result.low["ok"] > 500, result.low          # the scale-in happened under continuous load
    assert result.high.get("retried", 0) == 0 and result.low.get("retried", 0) == 0
    assert (result.high.get("failed"), result.low.get("failed")) == (0, 0), (result.high, result.low, timeline)
    assert set(result.times) == {"first_in_service", "scale_out", "scale_in"}
    assert result.ok, timeline


def test_bgp_router_options_name_the_lab_link() -> None:
    cfg = LabConfig(name="sclbx", router="bgp")
    opts = cfg.bgp_router_options()
    parsed = BgpRouterConfig(**opts)
    assert parsed.netns == "sclbx-ctl" and parsed.dir == cfg.lab_dir / "bgp"
    assert parsed.local_address == BGP_SPEAKER_ADDRESS == IPv4Address("198.18.255.2")
    assert [(p.address, p.asn) for p in parsed.peers] == [(BGP_ROUTER_ADDRESS, 65000)]
    assert (parsed.local_as, cfg.frr().config.asn) == (65001, 65000)
    assert cfg.frr().config.neighbors[0].address == BGP_SPEAKER_ADDRESS
