"""The lifecycle driving the `openstack` orchestrator against the FAKE OpenStack cloud (openstacksdk over
HTTP on a loopback port, in a thread): failed steps leave nothing behind, a retried create adopts the
server a crashed scaler made, the launch circuit breaker stops a pool, and the audit reconciles the
cloud with the store. One clock drives the cloud, the driver and the lifecycle, so minutes of BUILD
pass in no time. No root needed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from actuators.drainer import NoDrainer
from actuators.errors import OrchestratorError
from actuators.fake import FakeOrchestrator, FakeOrchestratorConfig, FakeRouter, FakeRouterConfig
from actuators.openstack.options import OpenStackOrchestratorConfig
from actuators.openstack.orchestrator import OpenStackOrchestrator
from actuators.orchestrator import Instance, InstanceSpec
from scaler.audit import Auditor
from scaler.breaker import LaunchBreakerConfig, breaker_state
from scaler.config import PoolConfig
from scaler.engine import Engine
from scaler.lifecycle import Lifecycle
from scaler.metrics import Metrics
from scaler.store import MemberState, OpState, Store
from tests.fake_openstack import FakeCloud, FakeOpenStack
from tests.support import rows
from tests.support.clock import ManualClock

VIP = IPv4Address("198.51.100.10")


@pytest.fixture
def cloud(clock: ManualClock) -> FakeCloud:
    c = FakeCloud(hosts=["cmp-1", "cmp-2", "cmp-3", "cmp-4"], clock=clock, wallclock=clock)
    c.add_image("haproxy-lb")
    c.add_flavor("m1.small")
    c.add_network("lb-net", "10.20.0.0/24")
    c.add_network("mgmt-net", "10.30.0.0/24")
    return c


@pytest.fixture
def fake(cloud: FakeCloud) -> Iterator[FakeOpenStack]:
    server = FakeOpenStack(cloud).start()
    try:
        yield server
    finally:
        server.stop()
        assert server.internal_errors == []


@pytest.fixture
async def driver(fake: FakeOpenStack, tmp_path: Path, clock: ManualClock) -> AsyncIterator[OpenStackOrchestrator]:
    clouds = fake.clouds_yaml(tmp_path / "clouds.yaml")
    cfg = OpenStackOrchestratorConfig.model_validate({
        "cloud": "fake", "clouds_yaml": str(clouds), "api_timeout_s": 5, "call_timeout_s": 20,
        "build_timeout_s": 240, "delete_timeout_s": 10, "poll_interval_s": 0.02})
    d = OpenStackOrchestrator(cfg, clock=clock)
    try:
        yield d
    finally:
        await d.close()


INSTANCE: dict[str, Any] = {
    "image": "haproxy-lb", "flavor": "m1.small", "networks": ["lb-net", "mgmt-net"],
    "haproxy": {"backends": ["10.0.1.10:8080"], "runtime_api_port": 9999},
    "probe": "active",          # the fake's servers run no HAProxy to answer the health URL
}
POOL = PoolConfig.model_validate({"vip": str(VIP), "instance": INSTANCE, "boot_timeout": "300s",
                                  "drain_timeout": "30s"})


@pytest.fixture
def store(store: Store) -> Store:
    """The shared store (tests/conftest.py) with the pool."""
    store.ensure_pool("web", str(VIP), 0)
    return store


def lifecycle(store: Store, orch: Any, clock: ManualClock, router: FakeRouter | None = None, drainer: Any = None,
              **breaker: Any) -> Lifecycle:
    return Lifecycle(store, orch, router or FakeRouter(), drainer or NoDrainer(), {"web": POOL}, Metrics(), clock,
                     breakers={"web": LaunchBreakerConfig.model_validate(breaker)})


async def settle(lc: Lifecycle, clock: ManualClock, passes: int = 5, step_s: float = 1.0) -> None:
    for _ in range(passes):
        await lc.reconcile()
        clock.advance(step_s)


def states(store: Store) -> list[str]:
    return [m.state for m in store.members("web", include_deleted=True)]


def server_posts(cloud: FakeCloud) -> int:
    return sum(1 for method, path, _ in cloud.requests if method == "POST" and path.endswith("/servers"))


def port_owners(cloud: FakeCloud) -> set[str]:
    return {t.removeprefix("scaler-name=") for p in cloud.ports.values() for t in p["tags"]
            if t.startswith("scaler-name=")}


def nothing_left(cloud: FakeCloud) -> bool:
    return cloud.live_servers() == [] and cloud.ports == {}


# ---- a create retried after a crash ------------------------------------------------------------------

async def test_a_create_retried_after_a_crash_adopts_the_server_it_made(
        store: Store, cloud: FakeCloud, driver: OpenStackOrchestrator, clock: ManualClock) -> None:
    store.start_scale_out("web", 1, 0, "below min", clock())
    m = store.members("web")[0]
    # The crashed scaler's create went through, but it died before persisting "booting".
    made = await driver.create(InstanceSpec("web", VIP, INSTANCE), m.instance)
    assert rows.member(store, m.id).state == MemberState.CREATING
    lc = lifecycle(store, driver, clock)                   # the restarted scaler
    await lc.reconcile()
    after = rows.member(store, m.id)
    assert after.state == MemberState.BOOTING
    assert after.endpoint_map()["server_id"] == made.endpoints["server_id"]
    assert after.address == str(made.address)
    await settle(lc, clock, passes=3)
    assert states(store) == ["in_service"]
    assert server_posts(cloud) == 1 and len(cloud.live_servers()) == 1 and len(cloud.ports) == 2


# ---- failed steps leave nothing behind ---------------------------------------------------------------

@pytest.mark.parametrize(("knobs", "error"), [
    pytest.param({"quota_instances": 0}, "quota exceeded", id="nova instance quota (403)"),
    pytest.param({"quota_cores": 0, "quota_status": 413}, "quota exceeded", id="nova cores quota (413)"),
    pytest.param({"quota_ports": 1}, "quota exceeded", id="neutron port quota on the second port"),
    pytest.param({"conflict_next_server_creates": 1}, "conflict (HTTP 409)", id="nova 409"),
    pytest.param({"drop_responses": {"server.create": 1}}, "connection to the cloud failed",
                 id="answer to POST /servers lost: the server exists"),
    pytest.param({"error_next_boots": 1}, "fake hypervisor failure", id="server goes ERROR"),
])
async def test_a_failed_step_becomes_a_failed_member_that_is_cleaned_up(
        store: Store, cloud: FakeCloud, driver: OpenStackOrchestrator, clock: ManualClock, knobs: dict[str, Any],
        error: str) -> None:
    for k, v in knobs.items():
        setattr(cloud.knobs, k, v)
    lc = lifecycle(store, driver, clock)
    store.start_scale_out("web", 1, 0, "below min", clock())
    await settle(lc, clock)
    assert states(store) == ["deleted"]
    op = store.operations("web")[0]
    assert op.state == OpState.FAILED and error in (op.error or "")
    assert nothing_left(cloud), (cloud.live_servers(), cloud.ports)
    launched = "error_next_boots" in knobs
    assert breaker_state(store, "web", clock()).failures == (1 if launched else 0)   # only launches count


async def test_a_server_stuck_in_build_times_out_counts_toward_max_and_is_cleaned_up(
        store: Store, cloud: FakeCloud, driver: OpenStackOrchestrator, clock: ManualClock) -> None:
    cloud.knobs.stuck_in_build = True
    lc = lifecycle(store, driver, clock)
    engine = Engine(store=store, collectors={}, collector_configs={}, pools={"web": POOL}, policies={},
                    metrics=Metrics(), clock=clock)
    store.start_scale_out("web", 2, 0, "below min", clock())
    await settle(lc, clock, passes=3, step_s=60)
    assert states(store) == ["booting", "booting"]
    st = engine.pool_state("web", store.members("web"))
    assert (st.current, st.toward_max) == (2, 2)            # booting members count toward max
    clock.advance(61)                                       # BUILD for more than build_timeout_s (240)
    await lc.reconcile()
    assert states(store) == ["failed", "failed"]
    assert all("still in BUILD after" in (m.error or "") for m in store.members("web"))
    st = engine.pool_state("web", store.members("web"))
    assert (st.current, st.toward_max) == (0, 2)            # failed ones too, until they are gone
    assert len(cloud.live_servers()) == 2
    await settle(lc, clock, passes=2)
    assert states(store) == ["deleted", "deleted"]
    assert nothing_left(cloud)
    assert engine.pool_state("web", store.members("web")).toward_max == 0
    assert breaker_state(store, "web", clock()).failures == 2


async def test_repeated_error_launches_open_the_breaker_and_the_pool_stops_creating(
        store: Store, cloud: FakeCloud, driver: OpenStackOrchestrator, clock: ManualClock) -> None:
    cloud.knobs.error_next_boots = 3
    lc = lifecycle(store, driver, clock, failures=3, cool_off="10m")
    store.start_scale_out("web", 3, 0, "below min", clock())
    await settle(lc, clock)
    assert states(store) == ["deleted"] * 3 and nothing_left(cloud)
    st = breaker_state(store, "web", clock())
    assert st.open and st.failures == 3 and "fake hypervisor failure" in (st.reason or "")
    posts = server_posts(cloud)
    store.start_scale_out("web", 2, 0, "below min", clock())
    await settle(lc, clock)
    assert server_posts(cloud) == posts                     # nothing was launched
    assert nothing_left(cloud)
    assert "not launched: launch circuit breaker open" in (store.operations("web")[0].error or "")
    clock.advance(600)                                      # cool-off over: the cloud works again
    store.start_scale_out("web", 1, 0, "below min", clock())
    await settle(lc, clock)
    assert states(store)[-1] == "in_service" and server_posts(cloud) == posts + 1
    assert breaker_state(store, "web", clock()).status == "closed"


async def test_the_vip_is_in_every_member_vip_port_allowed_address_pairs(
        store: Store, cloud: FakeCloud, driver: OpenStackOrchestrator, clock: ManualClock) -> None:
    router = FakeRouter()
    lc = lifecycle(store, driver, clock, router)
    store.start_scale_out("web", 3, 0, "below min", clock())
    await settle(lc, clock)
    members = store.members("web")
    assert [m.state for m in members] == ["in_service"] * 3
    for m in members:
        ports = {t: p for p in cloud.ports.values() if f"scaler-name={m.instance}" in p["tags"]
                 for t in p["tags"] if t.startswith("scaler-nic=")}
        vip_port, mgmt_port = ports["scaler-nic=0"], ports["scaler-nic=1"]
        assert [a["ip_address"] for a in vip_port["allowed_address_pairs"]] == [str(VIP)]
        assert mgmt_port["allowed_address_pairs"] == []
        assert vip_port["fixed_ips"][0]["ip_address"] == m.address       # the next hop is the VIP port
    assert router.hops(VIP) == {IPv4Address(m.address) for m in members if m.address}


# ---- audit -------------------------------------------------------------------------------------------

def hand_made_server(cloud: FakeCloud, name: str, tags: list[str]) -> dict[str, Any]:
    net = next(n for n in cloud.networks.values() if n["name"] == "lb-net")
    port = cloud.create_port({"network_id": net["id"]})
    return cloud.create_server({"name": name, "flavorRef": next(iter(cloud.flavors)),
                                "imageRef": next(iter(cloud.images)), "networks": [{"port": port["id"]}],
                                "tags": tags}, {}, (2, 96))


async def test_audit_reports_an_unknown_tagged_server_once_and_leaves_it_alone(
        store: Store, cloud: FakeCloud, driver: OpenStackOrchestrator, clock: ManualClock) -> None:
    lc = lifecycle(store, driver, clock)
    auditor = Auditor(lc)
    store.start_scale_out("web", 1, 0, "below min", clock())
    await settle(lc, clock)
    stray = hand_made_server(cloud, "web-by-hand", ["scaler-pool=web"])
    hand_made_server(cloud, "other-pool", ["scaler-pool=api"])
    findings = await auditor.audit()
    assert [(f.kind, f.instance, f.action) for f in findings] == [("unknown_instance", "web-by-hand", "reported")]
    assert "not in the store: left alone, not routed" in findings[0].message
    assert (await auditor.audit())[0].kind == "unknown_instance"
    events = [e for e in store.events("web") if e.kind == "unknown_instance"]
    assert len(events) == 1 and events[0].member == "web-by-hand"
    assert stray["id"] in {s["id"] for s in cloud.live_servers()}
    assert states(store) == ["in_service"]


@pytest.mark.parametrize(("scale_in", "via"), [
    pytest.param(False, "failed", id="in service: failed, route withdrawn"),
    pytest.param(True, "withdrawn", id="draining: withdrawn"),
])
async def test_audit_withdraws_a_member_whose_server_vanished(
        store: Store, cloud: FakeCloud, driver: OpenStackOrchestrator, clock: ManualClock, scale_in: bool,
        via: str) -> None:
    router = FakeRouter(FakeRouterConfig(drain_buckets=8))
    lc = lifecycle(store, driver, clock, router, Connections(5))
    auditor = Auditor(lc)
    store.start_scale_out("web", 2, 0, "below min", clock())
    await settle(lc, clock)
    gone, kept = store.members("web")
    if scale_in:
        store.start_scale_in("web", [gone], 2, "idle", clock())
        await settle(lc, clock, passes=2)                   # draining: buckets and connections left
        assert rows.member(store, gone.id).state == MemberState.DRAINING
    cloud.delete_server(gone.endpoint_map()["server_id"])   # behind the scaler's back
    clock.advance(1)
    findings = await auditor.audit()
    assert [(f.kind, f.instance, f.action) for f in findings] == [("vanished", gone.instance, via)]
    assert router.hops(VIP) == {IPv4Address(kept.address or "")}      # withdrawn before audit() returned
    await settle(lc, clock, passes=2)
    assert rows.member(store, gone.id).state == MemberState.DELETED
    assert rows.member(store, kept.id).state == MemberState.IN_SERVICE
    assert port_owners(cloud) == {kept.instance}           # its ports went too


async def test_audit_deletes_the_leftover_of_a_deleted_member(
        store: Store, cloud: FakeCloud, driver: OpenStackOrchestrator, clock: ManualClock) -> None:
    lc = lifecycle(store, driver, clock)
    auditor = Auditor(lc)
    store.start_scale_out("web", 1, 0, "below min", clock())
    await settle(lc, clock)
    [m] = store.members("web")
    store.start_scale_in("web", [m], 1, "idle", clock())
    await settle(lc, clock)
    assert states(store) == ["deleted"] and nothing_left(cloud)
    await driver.create(InstanceSpec("web", VIP, INSTANCE), m.instance)   # a create answered too late
    findings = await auditor.audit()
    assert [(f.kind, f.instance, f.action) for f in findings] == [("leftover", m.instance, "deleted")]
    assert nothing_left(cloud)


@dataclass
class Connections:
    conns: int

    async def drain(self, endpoints: Mapping[str, str]) -> None:
        return None

    async def connections(self, endpoints: Mapping[str, str]) -> int | None:
        return self.conns

    async def recycle(self, endpoints: Mapping[str, str], percent: int) -> None:
        return None


class Unlistable(FakeOrchestrator):
    async def list(self, pool: str) -> list[Instance]:
        raise OrchestratorError(f"list pool {pool}: connection to the cloud failed (fake)")


async def test_audit_confirms_a_missing_instance_before_failing_its_member(store: Store, clock: ManualClock) -> None:
    orch = FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0))
    router = FakeRouter()
    lc = lifecycle(store, orch, clock, router)
    auditor = Auditor(lc)
    store.start_scale_out("web", 1, 0, "below min", clock())
    await settle(lc, clock)
    [m] = store.members("web")
    del orch.instances[m.instance]          # the fake's probe answers False, not "not found"
    first = await auditor.audit()
    assert [(f.kind, f.action) for f in first] == [("missing", "confirming")]
    assert states(store) == ["in_service"] and router.hops(VIP)
    clock.advance(60)
    second = await auditor.audit()
    assert [(f.kind, f.action) for f in second] == [("vanished", "failed")]
    assert "has not been listed for 1m" in second[0].message
    assert router.hops(VIP) == set()


async def test_audit_when_the_list_fails_changes_nothing(store: Store, clock: ManualClock) -> None:
    orch = Unlistable(FakeOrchestratorConfig(boot_probes=0))
    lc = lifecycle(store, orch, clock)
    auditor = Auditor(lc)
    store.start_scale_out("web", 1, 0, "below min", clock())
    await settle(lc, clock)
    findings = await auditor.audit()
    assert [(f.kind, f.action) for f in findings] == [("list_failed", "none")]
    assert states(store) == ["in_service"]
    assert any("connection to the cloud failed" in e.message for e in store.events("web") if e.kind == "audit")
