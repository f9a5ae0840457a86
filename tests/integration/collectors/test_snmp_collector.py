"""The snmp collector against real net-snmp snmpd daemons started by `actuators.lab.snmpd`: on loopback
(free ports), inside a network namespace made for the test, and in lab instances. v2c and v3 reads of
the presets and of generic OIDs (cross-checked with stock pysnmp), every USM protocol pair, the
distinct errors of each credential mistake, a dead agent, and agents whose engine ID or namespace
changed under the same collector. Every daemon is stopped by PID and every namespace removed."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from actuators.lab.snmpd import Snmpd, SnmpdCommunity, SnmpdConfig, SnmpdUser
from actuators.linux import netns
from collectors import CollectorAuthError, CollectorError, CollectorTimeout, Sample, Target
from collectors.snmp.ber import GET, encode_oid
from collectors.snmp.client import Agent, Request, SnmpClient, V3Security
from collectors.snmp.collector import MEMORY, SnmpCollector, SnmpCollectorConfig
from collectors.snmp.usm import UsmUser, auth_protocol, priv_protocol
from tests.support.wait import eventually

SNMPD = shutil.which("snmpd") or "/usr/sbin/snmpd"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.access(SNMPD, os.X_OK), reason="snmpd is not installed"),
]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

COMMUNITY = "it-community-" + secrets.token_hex(4)
AUTH_KEY = "it-auth-" + secrets.token_hex(6)
PRIV_KEY = "it-priv-" + secrets.token_hex(6)
# (auth, net-snmp priv name, our priv name) for each extra user: every pair this net-snmp supports.
MATRIX = [
    ("MD5", "DES", "DES"),
    ("SHA", "AES", "AES-128"),
    ("SHA-224", "AES-192", "AES-192"),
    ("SHA", "AES-256", "AES-256"),
    ("SHA", "AES-256-C", "AES-256-C"),
    ("MD5", "AES-192-C", "AES-192-C"),
    ("SHA-384", "AES-256", "AES-256"),
    ("SHA-512", "AES", "AES-128"),
]
SNMP_ENGINE_BOOTS = "1.3.6.1.6.3.10.2.1.2.0"
UDP_IN_DATAGRAMS = "1.3.6.1.2.1.7.1.0"
EXTEND_SCUR = "1.3.6.1.4.1.8072.1.3.2.3.1.1.4.115.99.117.114"      # nsExtendOutput1Line."scur"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def agent_config(directory: Path, listen: str, netns_name: str | None = None) -> SnmpdConfig:
    users = [SnmpdUser("scaler", AUTH_KEY, PRIV_KEY, "SHA-256", "AES"),
             SnmpdUser("authonly", AUTH_KEY, None, "SHA", None)]
    users += [SnmpdUser(f"m{i}", AUTH_KEY, PRIV_KEY, auth, priv) for i, (auth, priv, _) in enumerate(MATRIX)]
    # An `extend` is how operators bridge other data (e.g. HAProxy's) into snmpd: its first output line.
    return SnmpdConfig(directory=directory, listen=[listen], communities=[SnmpdCommunity(COMMUNITY)],
                       users=users, netns=netns_name, snmpd_bin=SNMPD, extra=["extend scur /bin/echo 42"])


class Lab:
    """One snmpd on loopback, credential files, and collectors to close."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_udp_port()
        self.snmpd = Snmpd(agent_config(tmp_path / "snmpd", f"127.0.0.1:{self.port}"))
        self.secrets = tmp_path / "secrets"
        self.secrets.mkdir()
        self.collectors: list[SnmpCollector] = []
        self.write_secret("community", COMMUNITY)
        self.write_secret("auth", AUTH_KEY)
        self.write_secret("priv", PRIV_KEY)

    def write_secret(self, name: str, value: str) -> dict[str, str]:
        path = self.secrets / name
        path.write_text(value + "\n")
        return {"file": str(path)}

    def v2c(self, community: str = "community") -> dict[str, Any]:
        return {"community": {"file": str(self.secrets / community)}}

    def v3(self, user: str = "scaler", auth: str = "auth", priv: str | None = "priv", **extra: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {"version": "v3", "user": user, "auth_key": {"file": str(self.secrets / auth)}}
        if priv is None:
            conf["priv_protocol"] = "none"
        else:
            conf["priv_key"] = {"file": str(self.secrets / priv)}
        return conf | extra

    def collector(self, credentials: dict[str, Any], **config: Any) -> SnmpCollector:
        settings = credentials | {"timeout_s": 0.5, "retries": 1} | config
        collector = SnmpCollector(SnmpCollectorConfig.model_validate(settings))
        self.collectors.append(collector)
        return collector

    @property
    def target(self) -> Target:
        return Target(key="vm1", url=f"udp://127.0.0.1:{self.port}")


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    lab = Lab(tmp_path)
    try:
        await lab.snmpd.start()
        yield lab
    finally:
        for collector in lab.collectors:
            await collector.close()
        await lab.snmpd.stop()
        assert not lab.snmpd.running()


def by_name(samples: list[Sample]) -> dict[str, float]:
    return {s.metric + ("{" + ",".join(f"{k}={v}" for k, v in s.labels.items()) + "}" if s.labels else ""): s.value
            for s in samples}


def meminfo() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return fields


def meminfo_used_percent() -> float:
    fields = meminfo()
    return 100.0 * (fields["MemTotal"] - fields["MemAvailable"]) / fields["MemTotal"]


async def stock_pysnmp_get(port: int, oids: list[str], *, v3: bool) -> list[int]:
    """The same OIDs read by stock pysnmp (the reference implementation)."""
    from pysnmp.hlapi.v3arch.asyncio import (
        CommunityData,
        ContextData,
        ObjectIdentity,
        ObjectType,
        SnmpEngine,
        UdpTransportTarget,
        UsmUserData,
        get_cmd,
        usmAesCfb128Protocol,
        usmHMAC192SHA256AuthProtocol,
    )

    engine = SnmpEngine()
    try:
        transport = await UdpTransportTarget.create(("127.0.0.1", port), timeout=1, retries=1)
        auth: Any = (UsmUserData("scaler", AUTH_KEY, PRIV_KEY, authProtocol=usmHMAC192SHA256AuthProtocol,
                                 privProtocol=usmAesCfb128Protocol) if v3 else CommunityData(COMMUNITY, mpModel=1))
        error, status, _, binds = await get_cmd(engine, auth, transport, ContextData(),
                                                *[ObjectType(ObjectIdentity(o)) for o in oids], lookupMib=False)
        assert not error and not status, (error, status)
        return [int(value) for _, value in binds]
    finally:
        engine.close_dispatcher()


# ---- reads -------------------------------------------------------------------------------------------

@pytest.mark.slow
async def test_v2c_presets_and_generic_oids(lab: Lab) -> None:
    collector = lab.collector(lab.v2c(), presets=["cpu", "memory", "load", "interfaces"],
                              interfaces={"exclude": []},
                              oids={"boots": {"oid": SNMP_ENGINE_BOOTS}, "mem_total": {"oid": MEMORY["total"]},
                                    "udp_in": {"oid": UDP_IN_DATAGRAMS, "type": "counter"},
                                    "scur": {"oid": EXTEND_SCUR}})
    first = by_name(await collector.collect(lab.target))
    assert first["memory_used_percent"] == pytest.approx(meminfo_used_percent(), abs=5.0)
    assert first["load1"] == pytest.approx(os.getloadavg()[0], abs=2.0)
    assert {"load5", "load15", "boots"} <= set(first)
    assert first["mem_total"] == meminfo()["MemTotal"]
    assert first["scur"] == 42.0                         # a number bridged through `extend`
    assert "cpu_percent" not in first and "udp_in" not in first and "rx_bytes_per_s" not in first
    missing = collector.missing("vm1")
    assert missing["udp_in"] == "first reading"
    # Stock pysnmp reads the same values.
    assert [first["boots"], first["mem_total"]] == await stock_pysnmp_get(
        lab.port, [SNMP_ENGINE_BOOTS, MEMORY["total"]], v3=False)

    async def with_cpu() -> dict[str, float] | None:
        got = by_name(await collector.collect(lab.target))
        return got if "cpu_percent" in got else None

    # snmpd samples its CPU every 5 s: collect every 0.5 s until it has.
    got = await eventually(with_cpu, timeout_s=25, interval_s=0.5, what="cpu_percent from snmpd")
    assert 0.0 <= got["cpu_percent"] <= 100.0
    assert got["udp_in"] > 0                             # our own GETs reach the agent's UDP stack
    assert got["rx_bytes_per_s{interface=lo}"] >= 0 and got["rx_bytes_per_s"] >= got["rx_bytes_per_s{interface=lo}"]


async def test_v3_authpriv_presets_and_generic_oids(lab: Lab) -> None:
    collector = lab.collector(lab.v3(), presets=["cpu", "memory", "load"],
                              oids={"boots": {"oid": SNMP_ENGINE_BOOTS}, "mem_total": {"oid": MEMORY["total"]}})
    got = by_name(await collector.collect(lab.target))
    assert got["memory_used_percent"] == pytest.approx(meminfo_used_percent(), abs=5.0)
    assert {"load1", "load5", "load15"} <= set(got)
    assert "cpu_percent" not in got and "cpu_percent" in collector.missing("vm1")
    assert [got["boots"], got["mem_total"]] == await stock_pysnmp_get(
        lab.port, [SNMP_ENGINE_BOOTS, MEMORY["total"]], v3=True)
    v2c = by_name(await lab.collector(lab.v2c(), presets=[], oids={"mem_total": {"oid": MEMORY["total"]}})
                  .collect(lab.target))
    assert v2c["mem_total"] == got["mem_total"]


@pytest.mark.parametrize(("index", "auth", "priv"), [
    pytest.param(i, auth, ours, id=f"{auth}+{ours}") for i, (auth, _, ours) in enumerate(MATRIX)])
async def test_every_usm_protocol_pair(lab: Lab, index: int, auth: str, priv: str) -> None:
    collector = lab.collector(lab.v3(user=f"m{index}", auth_protocol=auth, priv_protocol=priv), presets=[],
                              oids={"mem_total": {"oid": MEMORY["total"]}})
    assert by_name(await collector.collect(lab.target)) == {"mem_total": meminfo()["MemTotal"]}


async def test_auth_no_priv_user(lab: Lab) -> None:
    collector = lab.collector(lab.v3(user="authonly", priv=None, auth_protocol="SHA"), presets=["memory"])
    assert "memory_used_percent" in by_name(await collector.collect(lab.target))


# ---- errors ------------------------------------------------------------------------------------------

CREDENTIAL_MISTAKES = [
    pytest.param("wrong community", CollectorTimeout, "timeout", "wrong community or agent down",
                 id="wrong community: no answer"),
    pytest.param("wrong auth key", CollectorAuthError, "auth", "wrongDigest", id="wrong auth key"),
    pytest.param("unknown user", CollectorAuthError, "auth", "unknownUserName", id="unknown user"),
    pytest.param("wrong priv key", CollectorAuthError, "priv", "wrong priv key or priv protocol",
                 id="wrong priv key"),
    pytest.param("wrong priv variant", CollectorAuthError, "priv", "configured AES-256-C",
                 id="Reeder key extension against a Blumenthal agent"),
    pytest.param("priv for an auth-only user", CollectorAuthError, "auth", "unsupportedSecLevel",
                 id="authPriv asked of an authNoPriv user"),
]


@pytest.mark.parametrize(("mistake", "error", "reason", "says"), CREDENTIAL_MISTAKES)
async def test_each_credential_mistake_is_a_distinct_clear_error(
        lab: Lab, mistake: str, error: type[CollectorError], reason: str, says: str) -> None:
    wrong = "wrong-" + secrets.token_hex(6)
    lab.write_secret("wrong", wrong)
    credentials = {
        "wrong community": lab.v2c(community="wrong"),
        "wrong auth key": lab.v3(auth="wrong"),
        "unknown user": lab.v3(user="nobody"),
        "wrong priv key": lab.v3(priv="wrong"),
        "wrong priv variant": lab.v3(user="m3", auth_protocol="SHA", priv_protocol="AES-256-C"),
        "priv for an auth-only user": lab.v3(user="authonly", auth_protocol="SHA"),
    }[mistake]
    collector = lab.collector(credentials, timeout_s=0.3, retries=1)
    started = time.monotonic()
    with pytest.raises(error) as info:
        await collector.collect(lab.target)
    assert time.monotonic() - started < 0.3 * 2 + 1.0
    assert type(info.value) is error and info.value.reason == reason
    assert says in str(info.value) and "vm1" in str(info.value)
    for secret in (wrong, COMMUNITY, AUTH_KEY, PRIV_KEY):
        assert secret not in str(info.value)


@pytest.mark.parametrize("version", ["v2c", "v3"])
async def test_a_stopped_agent_is_a_timeout_within_its_budget(lab: Lab, version: str) -> None:
    collector = lab.collector(lab.v2c() if version == "v2c" else lab.v3(), presets=["memory"], timeout_s=0.5,
                              retries=1)
    assert await collector.collect(lab.target)
    await lab.snmpd.stop()
    for _ in range(2):            # the next poll too (v3: it then starts with engine discovery)
        started = time.monotonic()
        with pytest.raises(CollectorTimeout) as info:
            await collector.collect(lab.target)
        assert time.monotonic() - started < 0.5 * 2 + 1.0
        assert info.value.reason == "timeout"


# ---- changing agents -------------------------------------------------------------------------------

@pytest.mark.parametrize(("wipe", "boots"), [
    pytest.param(True, 1, id="persistent state wiped: new engine ID"),
    pytest.param(False, 2, id="plain restart: same engine ID, boots + 1"),
])
async def test_v3_agent_restart_is_recovered_by_the_same_collector(lab: Lab, wipe: bool, boots: int) -> None:
    collector = lab.collector(lab.v3(), presets=["memory"], oids={"boots": {"oid": SNMP_ENGINE_BOOTS}})
    assert by_name(await collector.collect(lab.target))["boots"] == 1
    before = await engine_id(lab.port)
    await lab.snmpd.restart(wipe_persistent=wipe)
    assert (await engine_id(lab.port) != before) is wipe
    got: dict[str, float] = {}
    for _ in range(2):            # recovered within two polls (in practice: the first)
        try:
            got = by_name(await collector.collect(lab.target))
            break
        except CollectorError:
            continue
    assert got["boots"] == boots and "memory_used_percent" in got


def alive_snmpd(pid: int) -> bool:
    try:
        return "snmpd" in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False


async def engine_id(port: int) -> bytes:
    client = SnmpClient()
    try:
        agent = Agent(client, host="127.0.0.1", port=port, netns=None, timeout_s=1, retries=1,
                      security=V3Security(UsmUser("scaler", auth_protocol("SHA-256"), AUTH_KEY,
                                                  priv_protocol("AES-128"), PRIV_KEY)))
        await agent.request(Request(GET, [encode_oid(SNMP_ENGINE_BOOTS)]))
        assert agent.engine is not None
        return agent.engine.engine_id
    finally:
        await client.close()


@needs_root
async def test_target_in_a_network_namespace(tmp_path: Path) -> None:
    name = f"snmpt-{secrets.token_hex(3)}"
    lab = Lab(tmp_path)
    daemons: list[Snmpd] = []

    async def agent_in_namespace(directory: Path) -> Snmpd:
        await netns.run(["ip", "netns", "add", name])
        await netns.run(["ip", "-n", name, "link", "set", "lo", "up"])
        snmpd = Snmpd(agent_config(directory, "127.0.0.1:161", netns_name=name))
        daemons.append(snmpd)
        await snmpd.start()
        return snmpd

    try:
        first = await agent_in_namespace(tmp_path / "ns-snmpd-1")
        target = Target(key="ns-vm", url="udp://127.0.0.1:161", netns=name)
        v2c = lab.collector(lab.v2c(), presets=["memory", "interfaces"], interfaces={"exclude": []})
        v3 = lab.collector(lab.v3(), presets=["memory"], oids={"boots": {"oid": SNMP_ENGINE_BOOTS}})
        assert "memory_used_percent" in by_name(await v2c.collect(target))
        assert by_name(await v3.collect(target))["boots"] == 1
        await asyncio.sleep(1.1)
        got = by_name(await v2c.collect(target))
        # The namespace's agent: it sees only the namespace's own interface.
        assert sorted(k for k in got if k.startswith("rx_bytes_per_s")) == [
            "rx_bytes_per_s", "rx_bytes_per_s{interface=lo}"]
        # The namespace is deleted and made again under the same name with a new agent (a replaced
        # VM): both collectors reopen their socket in the new namespace, v3 finds the new engine.
        await first.stop()
        await netns.run(["ip", "netns", "del", name])
        await agent_in_namespace(tmp_path / "ns-snmpd-2")
        assert "memory_used_percent" in by_name(await v2c.collect(target))
        assert by_name(await v3.collect(target))["boots"] == 1
        # Forgetting the namespace's last target closes our socket there.
        v2c.forget("ns-vm")
        v3.forget("ns-vm")
    finally:
        for collector in lab.collectors:
            await collector.close()
        for snmpd in daemons:
            await snmpd.stop()
        if netns.exists(name):
            await netns.run(["ip", "netns", "del", name])
    assert not netns.exists(name) and not any(d.running() for d in daemons)


@needs_root
@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
async def test_lab_instances_serve_snmp() -> None:
    from actuators.lab.orchestrator import LabOrchestrator, lab_snmp_secrets, pids_in_netns
    from actuators.orchestrator import InstanceSpec
    from scaler.lab.network import LabConfig, lab_down, lab_namespaces, lab_up

    while True:
        cfg = LabConfig(name=f"sclt{secrets.token_hex(1)}")
        if not lab_namespaces(cfg) and not cfg.lab_dir.exists():
            break
    collectors: list[SnmpCollector] = []
    try:
        await lab_up(cfg)
        orch = LabOrchestrator(cfg.orchestrator_config(snmpd=True))
        instance = await orch.create(InstanceSpec(pool="web", vip=cfg.vip), "a")
        assert await orch.create(InstanceSpec(pool="web", vip=cfg.vip), "a") == instance      # idempotent
        assert instance.endpoints["netns"] == f"{cfg.name}-i-a"
        assert instance.endpoints["snmp_url"] == "udp://127.0.0.1:161"
        files = lab_snmp_secrets(cfg.lab_dir)
        assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in files.values())
        target = Target(key="a", url=instance.endpoints["snmp_url"], netns=instance.endpoints["netns"])
        for conf in ({"community": {"file": str(files["community"])}},
                     {"version": "v3", "user": "scaler", "auth_key": {"file": str(files["auth_key"])},
                      "priv_key": {"file": str(files["priv_key"])}}):
            collector = SnmpCollector(SnmpCollectorConfig.model_validate(conf | {"presets": ["memory", "load"]}))
            collectors.append(collector)
            assert {"memory_used_percent", "load1"} <= set(by_name(await collector.collect(target)))
        assert [i.status for i in await orch.list("web")] == ["active"]
        pids = pids_in_netns(instance.endpoints["netns"])
        assert len(pids) == 3                                   # haproxy, backend, snmpd
        await orch.delete("a")
        assert not netns.exists(instance.endpoints["netns"])
        assert not any(alive_snmpd(pid) for pid in pids)
    finally:
        for collector in collectors:
            await collector.close()
        await lab_down(cfg)
        assert lab_namespaces(cfg) == []
