"""The whole loop with the `openstack` orchestrator: the scaler process talks openstacksdk over HTTP to
the FAKE OpenStack cloud (a thread of this test process, on loopback), and every server the fake
boots is a real lab instance (namespace + HAProxy, `tests.fake_openstack.lab`) at the address of its
Neutron port. The router is the kernel's, in the lab's router namespace; load goes through the VIP.
Only the cloud API is fake. The pool scales 1 → 2+ under load and back to 1 with no failed request.

Each test gets its own lab (random name) and fake cloud and always tears both down.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scaler.lab.demo import Scenario, ServiceProcess, fib_next_hops, free_port
from scaler.lab.network import LabConfig, LoadRun, lab_down, lab_namespaces, lab_up
from scaler.store import Store
from tests.fake_openstack import FakeCloud, FakeOpenStack
from tests.fake_openstack.lab import LabBacking, lab_backed

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

NETWORK = "lab-net"        # the fake's network whose ports are lab links (198.18.N.2)
POLICY = """\
pools:
  web:
    min: 1
    max: 3
    inputs:
      sessions: {source: haproxy, metric: current_sessions, aggregate: avg}
    rules:
      - {name: busy, input: sessions, above: 12, for: 6s, adjust: +1}
      - {name: idle, input: sessions, below: 4, for: 10s, adjust: -1}
    cooldown: {scale_out: 10s, scale_in: 15s}
    stale_after: 10s
"""


@pytest.fixture
async def lab() -> AsyncIterator[LabConfig]:
    cfg = LabConfig(name=f"sclo{secrets.token_hex(1)}", backend_delay_ms=20)
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


@dataclass
class Cloud:
    cloud: FakeCloud
    api: FakeOpenStack
    backing: LabBacking


@pytest.fixture
def cloud(lab: LabConfig) -> Iterator[Cloud]:
    c = FakeCloud()
    c.add_image("haproxy-lb")
    c.add_flavor("lb.small")
    c.add_network(NETWORK, "198.18.0.0/16")
    c.knobs.boot_delay_s = 1.0                      # a VM takes a moment to leave BUILD
    api = FakeOpenStack(c).start()
    backing = lab_backed(c, lab.orchestrator_config(), NETWORK)
    try:
        yield Cloud(c, api, backing)
    finally:
        backing.close()
        api.stop()
    assert api.internal_errors == []
    assert backing.errors == []


def write_config(lab: LabConfig, api: FakeOpenStack, port: int) -> Path:
    """scaler.yaml for the openstack driver against the fake, the kernel router in the lab."""
    d = lab.lab_dir / "scaler"
    (d / "policies").mkdir(parents=True, exist_ok=True)
    (d / "policies" / "web.yaml").write_text(POLICY)
    clouds = api.clouds_yaml(d / "clouds.yaml")
    instances = lab.lab_dir / "instances"
    cfg: dict[str, Any] = {
        "store": {"url": f"sqlite:///{d}/scaler.db"},
        "api": {"host": "127.0.0.1", "port": port, "anonymous_read": True},
        "policy_dir": "policies",
        "intervals": {"collect": "2s", "evaluate": "2s", "reconcile": "1s"},
        "orchestrator": {"driver": "openstack", "options": {
            "cloud": "fake", "clouds_yaml": str(clouds), "api_timeout_s": 30, "call_timeout_s": 60,
            "build_timeout_s": 60, "delete_timeout_s": 30, "poll_interval_s": 0.2}},
        "router": {"driver": "kernel", "options": {"netns": lab.router_ns, "buckets": 128, "idle_timer_s": 5,
                                                   "unbalanced_timer_s": 0}},
        "collectors": {"haproxy": {"driver": "haproxy", "options": {"timeout_s": 1.5, "frontend": "vip"},
                                   "target": {"url": "{metrics_url}", "uds": "{metrics_uds}"}}},
        "pools": {"web": {
            "vip": str(lab.vip), "boot_timeout": "90s", "drain_timeout": "60s",
            "instance": {
                "image": "haproxy-lb", "flavor": "lb.small", "networks": [NETWORK],
                "server_group": {"policy": "soft-anti-affinity"},
                "haproxy": {"backends": ["127.0.0.1:8081"]},
                "probe": "active",          # ACTIVE = the lab instance answers on the VIP (the backing waits)
                # The lab's HAProxy is reached through its sockets, as with the lab driver.
                "endpoints": {"metrics_url": "http://localhost/metrics",
                              "metrics_uds": f"{instances}/{{name}}/metrics.sock",
                              "runtime_api": f"{instances}/{{name}}/admin.sock"},
            }}},
    }
    path = d / "scaler.yaml"
    path.write_text(json.dumps(cfg, indent=2))          # JSON is YAML
    return path


def vip_ports_ok(c: FakeCloud, vip: str) -> list[str]:
    """Problems: servers whose VIP-network port does not allow the VIP, or ports without a server."""
    with c.lock:
        servers = {s["id"]: s for s in c.servers.values() if s["_gone_at"] is None}
        problems = []
        for sid, s in servers.items():
            ports = [p for p in c.ports.values() if p["device_id"] == sid]
            if not ports or any([a["ip_address"] for a in p["allowed_address_pairs"]] != [vip] for p in ports):
                problems.append(f"server {s['name']}: ports {[(p['id'], p['allowed_address_pairs']) for p in ports]}")
        return problems


async def test_openstack_pool_scales_out_and_in_under_load_without_a_failed_request(
        lab: LabConfig, cloud: Cloud) -> None:
    port = free_port()
    service = ServiceProcess(write_config(lab, cloud.api, port), port)
    sc = Scenario(lab, service, out=lambda line: print(line, flush=True))
    t0 = time.monotonic()
    await service.start()
    vip = str(lab.vip)
    peak, port_problems = 0, []
    try:
        assert await sc.watch_until(lambda: bool(sc.checks and len(sc.checks[-1].serving) == 1), 60,
                                    what="the first member in service"), service.tail()
        first_in_service = time.monotonic() - t0
        load = LoadRun(lab, short_rps=100, keepalive_clients=16, max_seconds=420, retry=False)
        await load.start()
        try:
            assert await sc.watch_until(lambda: bool(sc.checks and len(sc.checks[-1].serving) >= 2), 150, load,
                                        "scale-out"), service.tail()
            port_problems += vip_ports_ok(cloud.cloud, vip)
            peak = max(n for _, n in sc.sizes)
            high = load.totals()
            await load.set(short_rps=20, keepalive_clients=4)
            assert await sc.watch_until(lambda: sc.size() == 1 and sc.alive == 1 and bool(sc.checks)
                                        and len(sc.checks[-1].fib) == 1, 150, load, "scale-in"), service.tail()
        finally:
            summary = await load.stop()
        total = summary if summary.get("type") == "summary" else load.totals()
        low = {k: total.get(k, 0) - high.get(k, 0) for k in ("ok", "failed", "retried")}
        await sc.print_news()
    finally:
        await service.stop()
    elapsed = time.monotonic() - t0
    print(f"first member in service after {first_in_service:.1f}s; scenario {elapsed:.1f}s; high {high}; "
          f"low {low}; lab instances made {cloud.backing.made}, deleted {cloud.backing.deleted}")

    timeline = "\n".join(sc.timeline)
    assert peak >= 2, timeline
    assert sc.size() == 1, timeline
    assert [c.problem for c in sc.checks if c.problem] == []
    assert high["failed"] == 0 and low["failed"] == 0, (high, low)
    assert low["ok"] > 500, low                           # the scale-in happened under load
    assert high.get("retried", 0) == 0 and low.get("retried", 0) == 0
    assert port_problems == []

    # The cloud, the lab, the store and the FIB agree: one member, nothing orphaned.
    store = Store(f"sqlite:///{lab.lab_dir}/scaler/scaler.db")     # the scaler is stopped: lock is free
    try:
        alive = store.members("web")
    finally:
        store.close()
    assert [m.state for m in alive] == ["in_service"]
    live = cloud.cloud.live_servers()
    assert [s["name"] for s in live] == [alive[0].instance]
    assert len(cloud.cloud.ports) == 1 and vip_ports_ok(cloud.cloud, vip) == []
    assert [i.name for i in await cloud.backing.orch.list("web")] == [alive[0].instance]
    assert await fib_next_hops(lab.router_ns, vip) == {alive[0].address}
    assert len(cloud.backing.made) == len(cloud.backing.deleted) + 1
