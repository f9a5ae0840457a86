"""The `openstack` orchestrator through the real openstacksdk, over HTTP, against the FAKE OpenStack
cloud of `tests.fake_openstack` on a loopback port. No root, no namespaces, no real cloud.

Each test gets a fresh fake cloud (its own port and state) and a driver configured the way an
operator would configure it: a clouds.yaml entry and per-pool instance options.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import time
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from actuators.errors import (
    BuildTimeout,
    InstanceErrored,
    InstanceNotFound,
    LaunchFailed,
    OrchestratorConflict,
    OrchestratorError,
    OrchestratorTimeout,
    QuotaExceeded,
)
from actuators.openstack.options import OpenStackOrchestratorConfig
from actuators.openstack.orchestrator import OpenStackOrchestrator
from actuators.orchestrator import Instance, InstanceSpec
from tests.fake_openstack import FakeCloud, FakeOpenStack, Hooks
from tests.support.wait import eventually

pytestmark = [
    pytest.mark.integration,
    # openstacksdk 4.22 warns about its own internal calls (PendingDeprecationWarning, which Python
    # ignores outside tests): e.g. "InfluxDB is deprecated" with no InfluxDB configured.
    pytest.mark.filterwarnings(r"ignore::PendingDeprecationWarning:openstack\..*"),
]

VIP = IPv4Address("198.51.100.10")
POOL = "web"


@pytest.fixture
def active_log() -> list[str]:
    return []


@pytest.fixture
def cloud(active_log: list[str]) -> FakeCloud:
    c = FakeCloud(hosts=["cmp-1", "cmp-2", "cmp-3"], availability_zones=["az1", "az2"],
                  hooks=Hooks(on_active=lambda s: active_log.append(s["name"])))
    c.add_image("haproxy-lb")
    c.add_flavor("m1.small")
    c.add_network("lb-net", "10.20.0.0/24")
    c.add_network("mgmt-net", "10.30.0.0/24")
    c.add_security_group("lb-vip")
    c.add_keypair("ops")
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
def secrets_dir(tmp_path: Path) -> Path:
    d = tmp_path / "secrets"
    d.mkdir()
    (d / "snmp-auth").write_text("auth-key-123\n")
    (d / "snmp-priv").write_text("priv-key-456\n")
    return d


def params(secrets_dir: Path, **over: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "image": "haproxy-lb", "flavor": "m1.small", "networks": ["lb-net", "mgmt-net"], "subnet": "lb-net-subnet",
        "security_groups": ["lb-vip"], "key_name": "ops", "availability_zones": ["az1", "az2"],
        "metadata": {"team": "netops"},
        "haproxy": {"backends": ["10.0.1.10:8080", "10.0.1.11:8080"], "runtime_api_port": 9999},
        "snmp": {"user": "scaler", "auth_key": {"file": str(secrets_dir / "snmp-auth")},
                 "priv_key": {"file": str(secrets_dir / "snmp-priv")}},
        "probe": "active",      # the fake's servers run no HAProxy to answer the health URL
    }
    p.update(over)
    return p


def config(fake: FakeOpenStack, tmp_path: Path, **over: Any) -> OpenStackOrchestratorConfig:
    clouds = fake.clouds_yaml(tmp_path / "clouds.yaml")
    opts: dict[str, Any] = {"cloud": "fake", "clouds_yaml": str(clouds), "api_timeout_s": 5, "call_timeout_s": 20,
                            "build_timeout_s": 60, "delete_timeout_s": 10, "poll_interval_s": 0.05}
    opts.update(over)
    return OpenStackOrchestratorConfig.model_validate(opts)


@pytest.fixture
async def driver(fake: FakeOpenStack, tmp_path: Path) -> AsyncIterator[OpenStackOrchestrator]:
    d = OpenStackOrchestrator(config(fake, tmp_path))
    try:
        yield d
    finally:
        await d.close()


@pytest.fixture
def spec(secrets_dir: Path) -> InstanceSpec:
    return InstanceSpec(POOL, VIP, params(secrets_dir))


def ports_of(cloud: FakeCloud, name: str) -> list[dict[str, Any]]:
    return sorted((p for p in cloud.ports.values() if f"scaler-name={name}" in p["tags"]), key=lambda p: p["name"])


def servers_named(cloud: FakeCloud, name: str) -> list[dict[str, Any]]:
    return [s for s in cloud.live_servers() if s["name"] == name]


def posts(cloud: FakeCloud, path_end: str) -> int:
    return sum(1 for m, p, _ in cloud.requests if m == "POST" and p.endswith(path_end))


# ---- create → ACTIVE ---------------------------------------------------------------------------

async def test_create_boots_on_the_vip_port_and_becomes_active(
        driver: OpenStackOrchestrator, cloud: FakeCloud, spec: InstanceSpec, active_log: list[str]) -> None:
    cloud.knobs.boot_delay_s = 0.3
    inst = await driver.create(spec, "web-1a2b3c4d-0")

    [server] = servers_named(cloud, "web-1a2b3c4d-0")
    vip_port, mgmt_port = ports_of(cloud, "web-1a2b3c4d-0")
    assert inst.address == IPv4Address(vip_port["fixed_ips"][0]["ip_address"])
    assert str(inst.address).startswith("10.20.0.")
    assert inst.status == "building"
    assert inst.endpoints["server_id"] == server["id"]
    assert inst.endpoints["metrics_url"] == f"http://{inst.address}:8404/metrics"
    assert inst.endpoints["runtime_api"] == f"tcp:{inst.address}:9999"
    # Both ports are bound to the server, the VIP only on the VIP network's port.
    assert vip_port["device_id"] == mgmt_port["device_id"] == server["id"]
    assert [p["ip_address"] for p in vip_port["allowed_address_pairs"]] == [str(VIP)]
    assert mgmt_port["allowed_address_pairs"] == []
    lb_vip = next(g["id"] for g in cloud.security_groups.values() if g["name"] == "lb-vip")
    assert vip_port["security_groups"] == mgmt_port["security_groups"] == [lb_vip]
    # Marked with pool and operation; named after the instance.
    assert set(server["tags"]) == {"scaler-pool=web", "scaler-op=op-1a2b3c4d"}
    assert {"scaler-pool=web", "scaler-op=op-1a2b3c4d", "scaler-nic=0"} <= set(vip_port["tags"])
    assert server["metadata"]["scaler:vip"] == str(VIP) and server["metadata"]["team"] == "netops"
    assert server["key_name"] == "ops"

    assert await driver.probe(inst) is False          # still in BUILD
    await eventually(lambda: driver.probe(inst), what="ACTIVE")
    assert active_log == ["web-1a2b3c4d-0"]
    [listed] = await driver.list(POOL)
    assert (listed.name, listed.address, listed.status) == ("web-1a2b3c4d-0", inst.address, "active")


async def test_an_older_neutron_gets_its_port_tags_afterwards(
        driver: OpenStackOrchestrator, cloud: FakeCloud, spec: InstanceSpec) -> None:
    cloud.knobs.neutron_tags_on_create = False
    await driver.create(spec, "web-1a2b3c4d-0")
    assert len(ports_of(cloud, "web-1a2b3c4d-0")) == 2
    assert any(m == "PUT" and p.endswith("/tags") for m, p, _ in cloud.requests)
    await driver.delete("web-1a2b3c4d-0")
    assert cloud.ports == {}


async def test_user_data_carries_vip_haproxy_and_snmp(
        driver: OpenStackOrchestrator, cloud: FakeCloud, spec: InstanceSpec) -> None:
    inst = await driver.create(spec, "web-1a2b3c4d-0")
    [server] = servers_named(cloud, "web-1a2b3c4d-0")
    text = base64.b64decode(server["OS-EXT-SRV-ATTR:user_data"]).decode()
    doc = YAML(typ="safe").load(text)
    files = {f["path"]: f["content"] for f in doc["write_files"]}
    assert text.startswith("#cloud-config\n")
    assert f"ip addr replace {VIP}/32 dev lo" in files["/etc/systemd/system/scaler-vip.service"]
    haproxy = files["/etc/haproxy/haproxy.cfg"]
    assert f"bind {VIP}:80" in haproxy
    assert "server s1 10.0.1.10:8080 check" in haproxy and "server s2 10.0.1.11:8080 check" in haproxy
    assert f"bind {inst.address}:8404" in haproxy and "prometheus-exporter" in haproxy
    assert f"stats socket ipv4@{inst.address}:9999 level admin" in haproxy
    assert "scaler-drain.map" in haproxy
    snmpd = files["/etc/snmp/snmpd.conf"]
    assert 'createUser scaler SHA-256 "auth-key-123" AES "priv-key-456"' in snmpd
    assert f"agentAddress udp:{inst.address}:161" in snmpd


async def test_members_use_an_anti_affinity_group_and_spread_over_zones(
        driver: OpenStackOrchestrator, cloud: FakeCloud, spec: InstanceSpec) -> None:
    insts = [await driver.create(spec, f"web-1a2b3c4d-{i}") for i in range(3)]
    [group] = cloud.server_groups.values()
    assert (group["name"], group["policy"]) == ("scaler-web", "anti-affinity")
    assert sorted(group["members"]) == sorted(i.endpoints["server_id"] for i in insts)
    hosts = [cloud.servers[i.endpoints["server_id"]]["OS-EXT-SRV-ATTR:host"] for i in insts]
    assert len(set(hosts)) == 3
    zones = [cloud.servers[i.endpoints["server_id"]]["OS-EXT-AZ:availability_zone"] for i in insts]
    assert sorted(zones) == ["az1", "az1", "az2"]

    # A fourth member has no host left: Nova puts it in ERROR, the probe says so with the fault.
    fourth = await driver.create(spec, "web-1a2b3c4d-3")
    with pytest.raises(InstanceErrored, match="No valid host"):
        await eventually(lambda: driver.probe(fourth), what="probe error")
    # A second driver (a restarted scaler) reuses the group instead of making another.
    assert len(cloud.server_groups) == 1


# ---- idempotency ----------------------------------------------------------------------------------

@pytest.mark.parametrize("lost", [
    pytest.param("server.create", id="answer to POST /servers lost after the server was made"),
    pytest.param("port.create", id="answer to POST /ports lost after the port was made"),
])
async def test_a_retried_create_finds_what_the_lost_call_made(
        driver: OpenStackOrchestrator, cloud: FakeCloud, spec: InstanceSpec, lost: str) -> None:
    cloud.knobs.drop_responses[lost] = 1
    with pytest.raises(OrchestratorError, match="connection to the cloud failed"):
        await driver.create(spec, "web-1a2b3c4d-0")
    inst = await driver.create(spec, "web-1a2b3c4d-0")

    assert len(servers_named(cloud, "web-1a2b3c4d-0")) == 1
    assert posts(cloud, "/servers") == 1
    vip_port, _ = ports_of(cloud, "web-1a2b3c4d-0")
    assert len(cloud.ports) == 2
    assert inst.address == IPv4Address(vip_port["fixed_ips"][0]["ip_address"])
    # And a third call is a pure lookup.
    again = await driver.create(spec, "web-1a2b3c4d-0")
    assert (again.address, again.endpoints["server_id"]) == (inst.address, inst.endpoints["server_id"])
    assert posts(cloud, "/servers") == 1 and len(cloud.ports) == 2


async def test_a_duplicate_server_with_the_same_name_is_removed(
        driver: OpenStackOrchestrator, cloud: FakeCloud, spec: InstanceSpec) -> None:
    inst = await driver.create(spec, "web-1a2b3c4d-0")
    # A second server of the pool with the same name, as a retried POST below the driver could make.
    net = next(n for n in cloud.networks.values() if n["name"] == "lb-net")
    stray = cloud.create_port({"network_id": net["id"]})
    cloud.create_server({"name": "web-1a2b3c4d-0", "flavorRef": next(iter(cloud.flavors)),
                         "imageRef": next(iter(cloud.images)), "networks": [{"port": stray["id"]}],
                         "tags": ["scaler-pool=web"]}, {}, (2, 96))
    again = await driver.create(spec, "web-1a2b3c4d-0")
    assert again.endpoints["server_id"] == inst.endpoints["server_id"]
    assert [s["id"] for s in servers_named(cloud, "web-1a2b3c4d-0")] == [inst.endpoints["server_id"]]


# ---- refusals leave nothing behind ----------------------------------------------------------------

@pytest.mark.parametrize(("knobs", "error", "message"), [
    pytest.param({"quota_instances": 0}, QuotaExceeded, "Quota exceeded for instances", id="nova quota 403"),
    pytest.param({"quota_instances": 0, "quota_status": 413}, QuotaExceeded, "HTTP 413", id="nova quota 413"),
    pytest.param({"quota_cores": 1}, QuotaExceeded, "cores", id="nova cores quota"),
    pytest.param({"quota_ports": 0}, QuotaExceeded, "port", id="neutron port quota (409 OverQuota)"),
    pytest.param({"quota_ports": 1}, QuotaExceeded, "port", id="second port over quota: first port removed"),
    pytest.param({"conflict_next_server_creates": 1}, OrchestratorConflict, "409", id="nova 409 conflict"),
])
async def test_a_refused_create_raises_a_typed_error_and_leaves_nothing(
        driver: OpenStackOrchestrator, cloud: FakeCloud, spec: InstanceSpec, knobs: dict[str, Any],
        error: type[OrchestratorError], message: str) -> None:
    for k, v in knobs.items():
        setattr(cloud.knobs, k, v)
    with pytest.raises(error, match=message) as caught:
        await driver.create(spec, "web-1a2b3c4d-0")
    assert "web-1a2b3c4d-0" in str(caught.value)
    assert cloud.live_servers() == []
    assert cloud.ports == {}
    assert not isinstance(caught.value, LaunchFailed)    # the cloud refused; nothing was launched


async def test_lookup_failures_name_what_is_missing(
        driver: OpenStackOrchestrator, cloud: FakeCloud, secrets_dir: Path) -> None:
    with pytest.raises(OrchestratorError, match="image 'no-such-image'"):
        await driver.create(InstanceSpec(POOL, VIP, params(secrets_dir, image="no-such-image")), "web-1a2b3c4d-0")
    with pytest.raises(OrchestratorError, match=r"haproxy\.backends"):
        await driver.create(InstanceSpec(POOL, VIP, params(secrets_dir, haproxy={})), "web-1a2b3c4d-0")
    assert cloud.ports == {} and cloud.live_servers() == []


# ---- launches that never become healthy ------------------------------------------------------------

async def test_a_server_stuck_in_build_times_out(
        fake: FakeOpenStack, cloud: FakeCloud, tmp_path: Path, spec: InstanceSpec) -> None:
    cloud.knobs.stuck_in_build = True
    d = OpenStackOrchestrator(config(fake, tmp_path, build_timeout_s=2))  # Nova: whole seconds
    try:
        inst = await d.create(spec, "web-1a2b3c4d-0")
        assert await d.probe(inst) is False
        with pytest.raises(BuildTimeout, match="still in BUILD"):
            await eventually(lambda: d.probe(inst), what="build timeout")
        await d.delete(inst.name)
    finally:
        await d.close()
    assert cloud.live_servers() == [] and cloud.ports == {}


async def test_repeated_error_launches_each_raise_a_typed_error_and_clean_up(
        driver: OpenStackOrchestrator, cloud: FakeCloud, spec: InstanceSpec) -> None:
    cloud.knobs.error_next_boots = 3
    for i in range(3):
        inst = await driver.create(spec, f"web-1a2b3c4d-{i}")
        with pytest.raises(InstanceErrored, match="fake hypervisor failure"):
            await eventually(functools.partial(driver.probe, inst), what="error")
        await driver.delete(inst.name)
    assert cloud.live_servers() == [] and cloud.ports == {}
    # The cloud recovered: the next launch works.
    inst = await driver.create(spec, "web-1a2b3c4d-3")
    await eventually(lambda: driver.probe(inst), what="ACTIVE")


async def test_probe_of_a_vanished_server_raises_not_found(
        driver: OpenStackOrchestrator, cloud: FakeCloud, spec: InstanceSpec) -> None:
    inst = await driver.create(spec, "web-1a2b3c4d-0")
    cloud.delete_server(inst.endpoints["server_id"])
    with pytest.raises(InstanceNotFound):
        await driver.probe(inst)
    # Without the server id (an instance the store knew before), the name is looked up.
    with pytest.raises(InstanceNotFound):
        await driver.probe(Instance(inst.name, POOL, inst.address, "unknown", {}))


async def test_http_probe_asks_the_health_url(
        driver: OpenStackOrchestrator, cloud: FakeCloud, spec: InstanceSpec) -> None:
    inst = await driver.create(spec, "web-1a2b3c4d-0")
    await eventually(lambda: driver.probe(inst), what="ACTIVE")
    # Nothing listens on this loopback port: ACTIVE but not serving → False, not an error.
    dead = Instance(inst.name, POOL, inst.address, "building",
                    {**inst.endpoints, "health_url": "http://127.0.0.1:9/healthz"})
    assert await driver.probe(dead) is False
    with FakeOpenStack(FakeCloud()) as other:     # something that answers 200 on a URL
        ok = Instance(inst.name, POOL, inst.address, "building",
                      {**inst.endpoints, "health_url": f"{other.base}/identity/v3"})
        assert await driver.probe(ok) is True


# ---- delete -----------------------------------------------------------------------------------------

async def test_delete_removes_server_and_ports_and_is_idempotent(
        fake: FakeOpenStack, cloud: FakeCloud, tmp_path: Path, spec: InstanceSpec) -> None:
    deleted: list[str] = []
    cloud.hooks.on_delete = lambda s: deleted.append(s["name"])
    cloud.knobs.delete_delay_s = 0.3          # Nova keeps showing a deleted server for a while
    d = OpenStackOrchestrator(config(fake, tmp_path))
    try:
        keep = await d.create(spec, "web-1a2b3c4d-0")
        gone = await d.create(spec, "web-1a2b3c4d-1")
        await d.delete(gone.name)
        assert deleted == ["web-1a2b3c4d-1"]          # delete returned after the server was gone
        assert servers_named(cloud, gone.name) == [] and ports_of(cloud, gone.name) == []
        assert len(ports_of(cloud, keep.name)) == 2 and len(servers_named(cloud, keep.name)) == 1
        await d.delete(gone.name)                     # again: nothing to do, no error
        await d.delete("web-ffffffff-9")              # never existed
        await d.delete("not a valid name!")
        assert [i.name for i in await d.list(POOL)] == [keep.name]
    finally:
        await d.close()


async def test_a_create_that_lost_a_port_answer_takes_the_port_back(
        driver: OpenStackOrchestrator, cloud: FakeCloud, spec: InstanceSpec) -> None:
    cloud.knobs.drop_responses["port.create"] = 1
    with pytest.raises(OrchestratorError, match="connection to the cloud failed"):
        await driver.create(spec, "web-1a2b3c4d-0")
    assert cloud.ports == {} and cloud.live_servers() == []     # no server was asked for: nothing kept


async def test_delete_removes_ports_left_without_a_server(
        driver: OpenStackOrchestrator, cloud: FakeCloud) -> None:
    net = next(n for n in cloud.networks.values() if n["name"] == "lb-net")
    cloud.create_port({"network_id": net["id"], "tags": ["scaler-pool=web", "scaler-name=web-1a2b3c4d-0"]})
    cloud.create_port({"network_id": net["id"], "tags": ["scaler-pool=web", "scaler-name=web-1a2b3c4d-1"]})
    await driver.delete("web-1a2b3c4d-0")
    assert [p["tags"][1] for p in cloud.ports.values()] == ["scaler-name=web-1a2b3c4d-1"]


async def test_delete_does_not_touch_untagged_servers(
        driver: OpenStackOrchestrator, cloud: FakeCloud) -> None:
    net = next(n for n in cloud.networks.values() if n["name"] == "lb-net")
    port = cloud.create_port({"network_id": net["id"]})
    cloud.create_server({"name": "web-1a2b3c4d-0", "flavorRef": next(iter(cloud.flavors)),
                         "imageRef": next(iter(cloud.images)), "networks": [{"port": port["id"]}]}, {}, (2, 96))
    await driver.delete("web-1a2b3c4d-0")
    assert len(servers_named(cloud, "web-1a2b3c4d-0")) == 1 and len(cloud.ports) == 1


# ---- list --------------------------------------------------------------------------------------------

async def test_list_reports_unknown_tagged_servers_across_pages(
        driver: OpenStackOrchestrator, cloud: FakeCloud, spec: InstanceSpec) -> None:
    cloud.knobs.max_page_size = 2          # every listing spans several pages
    made = [await driver.create(spec, f"web-1a2b3c4d-{i}") for i in range(3)]
    net = next(n for n in cloud.networks.values() if n["name"] == "lb-net")
    port = cloud.create_port({"network_id": net["id"]})
    cloud.create_server({"name": "hand-made", "flavorRef": next(iter(cloud.flavors)),
                         "imageRef": next(iter(cloud.images)), "networks": [{"port": port["id"]}],
                         "tags": ["scaler-pool=web"]}, {}, (2, 96))
    cloud.create_server({"name": "other-pool", "flavorRef": next(iter(cloud.flavors)),
                         "imageRef": next(iter(cloud.images)), "networks": [],
                         "tags": ["scaler-pool=api"]}, {}, (2, 96))
    listed = {i.name: i for i in await driver.list(POOL)}
    assert set(listed) == {*(m.name for m in made), "hand-made"}
    assert listed["hand-made"].address == IPv4Address(port["fixed_ips"][0]["ip_address"])
    assert all(listed[m.name].address == m.address for m in made)
    assert [i.name for i in await driver.list("api")] == ["other-pool"]


# ---- the connection -----------------------------------------------------------------------------------

async def test_a_slow_cloud_raises_a_timeout(
        fake: FakeOpenStack, cloud: FakeCloud, tmp_path: Path, spec: InstanceSpec) -> None:
    # 1 s per request: enough for the first authentication (several requests) on a loaded CI box,
    # where 0.2 s once timed out before the cloud was made slow.
    d = OpenStackOrchestrator(config(fake, tmp_path, api_timeout_s=1.0))
    try:
        assert await d.list(POOL) == []               # authenticated while the cloud was fast
        cloud.knobs.api_delay_s = 3.0
        t0 = time.monotonic()
        with pytest.raises(OrchestratorTimeout, match="list pool web"):
            await d.list(POOL)
        assert time.monotonic() - t0 < 3.0, "bounded by the request timeout, not the cloud's delay"
    finally:
        cloud.knobs.api_delay_s = 0
        await d.close()


async def test_wrong_credentials_are_reported(fake: FakeOpenStack, cloud: FakeCloud, tmp_path: Path) -> None:
    d = OpenStackOrchestrator(config(fake, tmp_path))
    cloud.password = "rotated"          # after clouds.yaml was written
    try:
        with pytest.raises(OrchestratorError, match="authentication"):
            await d.list(POOL)
    finally:
        await d.close()


async def test_application_credentials_work(fake: FakeOpenStack, cloud: FakeCloud, tmp_path: Path) -> None:
    cred = cloud.add_application_credential("scaler", "app-secret")
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        "clouds:\n  prod:\n    auth_type: v3applicationcredential\n    auth:\n"
        f"      auth_url: {fake.auth_url}\n      application_credential_id: {cred['id']}\n"
        "      application_credential_secret: app-secret\n    region_name: RegionOne\n")
    d = OpenStackOrchestrator(OpenStackOrchestratorConfig(cloud="prod", clouds_yaml=clouds))
    try:
        assert await d.list(POOL) == []
    finally:
        await d.close()


async def test_parallel_creates_of_one_pool(driver: OpenStackOrchestrator, cloud: FakeCloud,
                                            spec: InstanceSpec) -> None:
    cloud.hosts += ["cmp-4", "cmp-5"]
    made = await asyncio.gather(*(driver.create(spec, f"web-1a2b3c4d-{i}") for i in range(5)))
    assert len({m.address for m in made}) == 5
    assert len(cloud.server_groups) == 1           # one group even when five creates race for it
    assert len(cloud.live_servers()) == 5 and len(cloud.ports) == 10


# ---- Heat mode ---------------------------------------------------------------------------------------

@pytest.fixture
def heat_spec(secrets_dir: Path) -> InstanceSpec:
    return InstanceSpec(POOL, VIP, params(secrets_dir, networks=["lb-net"], heat={}))


def the_stack(cloud: FakeCloud) -> dict[str, Any]:
    [stack] = cloud.stacks.values()
    return stack


async def test_heat_pool_grows_and_shrinks_by_stack_update(
        driver: OpenStackOrchestrator, cloud: FakeCloud, heat_spec: InstanceSpec) -> None:
    made = [await driver.create(heat_spec, f"web-1a2b3c4d-{i}") for i in range(3)]
    stack = the_stack(cloud)
    assert stack["stack_name"] == "scaler-web" and stack["parameters"]["count"] == 3
    assert stack["parameters"]["member_names"] == {str(i): f"web-1a2b3c4d-{i}" for i in range(3)}
    for inst in made:
        [server] = servers_named(cloud, inst.name)
        [port] = ports_of(cloud, inst.name)
        assert inst.address == IPv4Address(port["fixed_ips"][0]["ip_address"])
        assert [p["ip_address"] for p in port["allowed_address_pairs"]] == [str(VIP)]
        assert port["device_id"] == server["id"]
        # Heat filled the tokens: the member's own name and address are in its user data.
        text = base64.b64decode(server["OS-EXT-SRV-ATTR:user_data"]).decode()
        assert f"hostname: {inst.name}" in text and f"bind {inst.address}:8404" in text
        assert f"bind {VIP}:80" in text and "__SCALER_" not in text
        await eventually(functools.partial(driver.probe, inst), what="ACTIVE")
    [group] = cloud.server_groups.values()
    assert group["policy"] == "anti-affinity" and len(group["members"]) == 3
    assert {i.name for i in await driver.list(POOL)} == {i.name for i in made}

    # Scale-in removes exactly the drained member; its index is never reused.
    await driver.delete("web-1a2b3c4d-1")
    assert servers_named(cloud, "web-1a2b3c4d-1") == [] and ports_of(cloud, "web-1a2b3c4d-1") == []
    stack = the_stack(cloud)
    assert stack["parameters"]["count"] == 2
    assert stack["parameters"]["removal_policies"] == [{"resource_list": ["1"]}]
    assert {i.name for i in await driver.list(POOL)} == {"web-1a2b3c4d-0", "web-1a2b3c4d-2"}
    await driver.create(heat_spec, "web-5e6f7a8b-0")
    assert the_stack(cloud)["parameters"]["member_names"] == {
        "0": "web-1a2b3c4d-0", "2": "web-1a2b3c4d-2", "3": "web-5e6f7a8b-0"}
    await driver.delete("web-1a2b3c4d-1")            # idempotent
    assert len(cloud.live_servers()) == 3


async def test_heat_create_retried_after_a_lost_answer_adds_no_second_member(
        driver: OpenStackOrchestrator, cloud: FakeCloud, heat_spec: InstanceSpec) -> None:
    await driver.create(heat_spec, "web-1a2b3c4d-0")
    cloud.knobs.drop_responses["stack.update"] = 1
    with pytest.raises(OrchestratorError, match="connection to the cloud failed"):
        await driver.create(heat_spec, "web-1a2b3c4d-1")
    inst = await driver.create(heat_spec, "web-1a2b3c4d-1")
    assert the_stack(cloud)["parameters"]["count"] == 2
    assert len(servers_named(cloud, inst.name)) == 1 and len(cloud.live_servers()) == 2


async def test_heat_quota_failure_takes_the_member_back(
        driver: OpenStackOrchestrator, cloud: FakeCloud, heat_spec: InstanceSpec) -> None:
    await driver.create(heat_spec, "web-1a2b3c4d-0")
    cloud.knobs.quota_instances = 1
    with pytest.raises(QuotaExceeded, match="Quota exceeded for instances"):
        await driver.create(heat_spec, "web-1a2b3c4d-1")
    stack = the_stack(cloud)
    assert stack["parameters"]["member_names"] == {"0": "web-1a2b3c4d-0"}
    assert [s["name"] for s in cloud.live_servers()] == ["web-1a2b3c4d-0"]
    assert len(cloud.ports) == 1                     # the half-made member's port went too
    cloud.knobs.quota_instances = None
    await driver.create(heat_spec, "web-1a2b3c4d-1")
    assert the_stack(cloud)["parameters"]["member_names"] == {"0": "web-1a2b3c4d-0", "2": "web-1a2b3c4d-1"}


async def test_heat_error_member_is_reported_and_deleted(
        driver: OpenStackOrchestrator, fake: FakeOpenStack, cloud: FakeCloud, heat_spec: InstanceSpec) -> None:
    cloud.knobs.error_next_boots = 1
    inst = await driver.create(heat_spec, "web-1a2b3c4d-0")
    with pytest.raises(InstanceErrored, match="fake hypervisor failure"):
        await eventually(lambda: driver.probe(inst), what="error")
    assert fake.heat.get("scaler-web")["stack_status"] == "CREATE_FAILED"
    await driver.delete(inst.name)
    assert cloud.live_servers() == [] and cloud.ports == {}
    assert the_stack(cloud)["parameters"]["count"] == 0


async def test_heat_updates_wait_for_the_running_one(
        driver: OpenStackOrchestrator, cloud: FakeCloud, heat_spec: InstanceSpec) -> None:
    cloud.knobs.boot_delay_s = 0.3           # each update stays IN_PROGRESS until its server is ACTIVE
    made = await asyncio.gather(*(driver.create(heat_spec, f"web-1a2b3c4d-{i}") for i in range(3)))
    assert the_stack(cloud)["parameters"]["count"] == 3
    assert len({m.address for m in made}) == 3
    # An update that raced ours (409 "in progress") is waited out, then ours goes through.
    cloud.knobs.conflict_next_stack_updates = 2
    await driver.create(heat_spec, "web-1a2b3c4d-3")
    assert the_stack(cloud)["parameters"]["count"] == 4
    assert sum(1 for m, p, st in cloud.requests if m == "PUT" and "/stacks/" in p and st == 409) == 2
