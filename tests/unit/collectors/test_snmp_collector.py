"""The snmp collector against a scripted in-process v2c agent on loopback (real UDP, our own process):
config validation, target URLs, every preset, rates across Counter32 wraps / agent restarts / gaps,
"no data" never read as 0, errors and their reasons, secrets never printed, and a replay of two real
snmpd polls captured in tests/fixtures/snmp/captured.json. No daemon, no root."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from collectors import CollectorError, CollectorParseError, CollectorTimeout, Sample, Target, build
from collectors.snmp.ber import (
    COUNTER32,
    COUNTER64,
    END_OF_MIB_VIEW,
    GET,
    GETBULK,
    INTEGER,
    NO_SUCH_INSTANCE,
    NO_SUCH_OBJECT,
    OCTET_STRING,
    RESPONSE,
    SEQUENCE,
    TIMETICKS,
    decode_oid,
    encode_int,
    encode_oid,
    parse_v2c,
    tlv,
    v2c_message,
)
from collectors.snmp.collector import (
    CPU_RAW,
    HR_PROCESSOR_LOAD,
    IF_HC_IN_OCTETS,
    IF_HC_OUT_OCTETS,
    IF_NAME,
    LOAD,
    MEMORY,
    SYS_UPTIME,
    SnmpCollector,
    SnmpCollectorConfig,
    TargetAddress,
    parse_target_url,
)
from tests.support.clock import ManualClock

CAPTURED: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "fixtures" / "snmp" / "captured.json").read_text())
COMMUNITY = "unit-test-community"


# ---- a scripted agent --------------------------------------------------------------------------

def encode_value(tag: int, value: object) -> bytes:
    if value is None:
        return bytes((tag, 0))
    if isinstance(value, int):
        return tlv(tag, encode_int(value))
    assert isinstance(value, bytes)
    return tlv(tag, value)


def arcs(oid: str) -> tuple[int, ...]:
    return tuple(int(a) for a in oid.split("."))


class FakeAgent(asyncio.DatagramProtocol):
    """Answers v2c GET and GETBULK from `values` (OID text -> (tag, value)); silent when `silent` or
    for another community. `replay` (a list of captured answers) is served instead, in order."""

    def __init__(self) -> None:
        self.community = COMMUNITY.encode()
        self.values: dict[str, tuple[int, object]] = {}
        self.silent = False
        self.error_status = 0
        self.swap_answer_oids = False
        self.replay: list[bytes] = []
        self.requests: list[int] = []          # PDU tags received
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        _, community, request = parse_v2c(data)
        self.requests.append(request.tag)
        if self.silent or community != self.community:
            return
        assert self.transport is not None
        if self.replay:
            # A captured answer with its request-id (always 4 octets) set to this request's.
            answer = bytearray(self.replay.pop(0))
            old = CAPTURED_REQUEST_IDS[bytes(answer)].to_bytes(4, "big")
            at = answer.index(b"\x02\x04" + old)
            answer[at + 2:at + 6] = request.request_id.to_bytes(4, "big")
            self.transport.sendto(bytes(answer), addr)
            return
        table = sorted((arcs(k), v) for k, v in self.values.items())

        def after(start: tuple[int, ...]) -> tuple[tuple[int, ...], int, object]:
            for key, (tag, value) in table:
                if key > start:
                    return key, tag, value
            return start, END_OF_MIB_VIEW, None

        out: list[tuple[tuple[int, ...], int, object]] = []
        asked = [decode_oid(o) for o, _, _ in request.varbinds]
        if request.tag == GET:
            for oid in asked:
                tag, value = self.values.get(".".join(map(str, oid)), (NO_SUCH_OBJECT, None))
                out.append((oid, tag, value))
        else:
            assert request.tag == GETBULK
            non_repeaters, repetitions = request.error_status, request.error_index
            out += [after(oid) for oid in asked[:non_repeaters]]
            cursors = asked[non_repeaters:]
            for _ in range(repetitions):
                for i, cursor in enumerate(cursors):
                    row = after(cursor)
                    out.append(row)
                    cursors[i] = row[0]
        if self.swap_answer_oids and len(out) > 1:
            out[0], out[1] = out[1], out[0]
        binds = b"".join(tlv(SEQUENCE, tlv(0x06, encode_oid(o)) + encode_value(t, v)) for o, t, v in out)
        body = (tlv(INTEGER, encode_int(request.request_id)) + tlv(INTEGER, encode_int(self.error_status))
                + tlv(INTEGER, encode_int(1 if self.error_status else 0)) + tlv(SEQUENCE, binds))
        self.transport.sendto(v2c_message(community, tlv(RESPONSE, body)), addr)

    # scripting helpers

    def vm(self, *, uptime_s: float, cpu: dict[str, int] | None = None, mem: dict[str, int] | None = None,
           load: tuple[bytes, bytes, bytes] = (b"0.45", b"0.30", b"0.20")) -> None:
        self.values[SYS_UPTIME] = (TIMETICKS, int(uptime_s * 100))
        for name, oid in CPU_RAW.items():
            self.values[oid] = (COUNTER32, (cpu or {}).get(name, 0))
        memory = {"total": 1000, "avail": 100, "buffer": 50, "cached": 250} | (mem or {})
        for name, oid in MEMORY.items():
            if name in memory:
                self.values[oid] = (COUNTER64 if name == "sysavail" else INTEGER, memory[name])
            else:
                self.values.pop(oid, None)
        for oid, value in zip(LOAD.values(), load, strict=True):
            self.values[oid] = (OCTET_STRING, value)

    def interfaces(self, rows: dict[int, tuple[str, int, int]]) -> None:
        for column in (IF_NAME, IF_HC_IN_OCTETS, IF_HC_OUT_OCTETS):
            for key in [k for k in self.values if k.startswith(column + ".")]:
                del self.values[key]
        for index, (name, rx, tx) in rows.items():
            self.values[f"{IF_NAME}.{index}"] = (OCTET_STRING, name.encode())
            self.values[f"{IF_HC_IN_OCTETS}.{index}"] = (COUNTER64, rx)
            self.values[f"{IF_HC_OUT_OCTETS}.{index}"] = (COUNTER64, tx)


CAPTURED_REQUEST_IDS: dict[bytes, int] = {}


@pytest.fixture
async def agent() -> AsyncIterator[FakeAgent]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(FakeAgent, local_addr=("127.0.0.1", 0))
    protocol.port = transport.get_extra_info("sockname")[1]
    try:
        yield protocol
    finally:
        transport.close()


@pytest.fixture
def community_file(tmp_path: Path) -> Path:
    path = tmp_path / "community"
    path.write_text(COMMUNITY + "\n")
    return path


@pytest.fixture
def captured_community_file(tmp_path: Path) -> Path:
    path = tmp_path / "captured-community"
    path.write_text(CAPTURED["community"] + "\n")
    return path


class Poller:
    def __init__(self, agent: FakeAgent, community_file: Path, **config: Any) -> None:
        self.agent = agent
        self.clock = ManualClock(mono=5000.0)
        self.uptime = 100.0
        settings = {"community": {"file": str(community_file)}, "timeout_s": 0.3, "retries": 0} | config
        self.collector = SnmpCollector(SnmpCollectorConfig.model_validate(settings), monotonic=self.clock.monotonic)
        self.target = Target(key="vm1", url=f"udp://127.0.0.1:{agent.port}")

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.uptime += seconds
        self.agent.values[SYS_UPTIME] = (TIMETICKS, int(self.uptime * 100))

    async def poll(self) -> dict[str, float]:
        samples = await self.collector.collect(self.target)
        return {metric_key(s): s.value for s in samples}

    def missing(self) -> dict[str, str]:
        return self.collector.missing(self.target.key)


def metric_key(sample: Sample) -> str:
    if not sample.labels:
        return sample.metric
    return sample.metric + "{" + ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())) + "}"


@pytest.fixture
async def poller(agent: FakeAgent, community_file: Path) -> AsyncIterator[Poller]:
    p = Poller(agent, community_file, presets=["cpu", "memory", "load"])
    try:
        yield p
    finally:
        await p.collector.close()


# ---- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize(("config", "message"), [
    pytest.param({}, "v2c needs 'community'", id="v2c without community"),
    pytest.param({"community": "public"}, "not inline", id="inline community refused"),
    pytest.param({"version": "v3", "user": "u"}, "v3 needs 'auth_key'", id="v3 without auth key"),
    pytest.param({"version": "v3", "user": "u", "auth_key": {"env": "SNMP_UNIT_AUTH"}},
                 "needs 'priv_key'", id="v3 authPriv without priv key"),
    pytest.param({"version": "v3", "auth_key": {"env": "SNMP_UNIT_AUTH"}, "priv_protocol": "none"},
                 "v3 needs 'user'", id="v3 without user"),
    pytest.param({"version": "v3", "user": "u", "auth_key": {"env": "SNMP_UNIT_SHORT"}, "priv_protocol": "none"},
                 "at least 8 characters", id="short passphrase"),
    pytest.param({"version": "v3", "user": "u", "auth_key": {"env": "SNMP_UNIT_AUTH"}, "auth_protocol": "SHA-3",
                  "priv_protocol": "none"}, "unknown auth protocol", id="unknown auth protocol"),
    pytest.param({"version": "v3", "user": "u", "auth_key": {"env": "SNMP_UNIT_AUTH"},
                  "priv_key": {"env": "SNMP_UNIT_AUTH"}, "priv_protocol": "RC4"}, "unknown priv protocol",
                 id="unknown priv protocol"),
    pytest.param({"community": {"env": "SNMP_UNIT_AUTH"}, "user": "u"}, "are for v3", id="v3 fields on v2c"),
    pytest.param({"community": {"env": "SNMP_UNIT_AUTH"}, "oids": {"x": {"oid": "ifInOctets"}}},
                 "numeric OIDs only", id="MIB name instead of OID"),
    pytest.param({"community": {"env": "SNMP_UNIT_AUTH"}, "oids": {"load1": {"oid": "1.3.6.1"}}},
                 "is a preset's", id="metric name taken by a preset"),
    pytest.param({"community": {"env": "SNMP_UNIT_AUTH"}, "oids": {"bad-name": {"oid": "1.3.6.1"}}},
                 "must match", id="metric name with a dash"),
    pytest.param({"community": {"env": "SNMP_UNIT_AUTH"}, "presets": ["cpu", "cpu"]}, "listed twice",
                 id="preset twice"),
    pytest.param({"community": {"env": "SNMP_UNIT_AUTH"}, "presets": [], "oids": {}}, "nothing to read",
                 id="nothing to read"),
    pytest.param({"community": {"env": "SNMP_UNIT_AUTH"}, "bogus": 1}, "Extra inputs", id="unknown key"),
    pytest.param({"community": {"env": "SNMP_UNIT_AUTH"}, "timeout_s": 0}, "greater than 0", id="zero timeout"),
])
def test_bad_configs_are_refused(config: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNMP_UNIT_AUTH", "long-enough-secret")
    monkeypatch.setenv("SNMP_UNIT_SHORT", "short")
    with pytest.raises(ValidationError, match=message):
        SnmpCollectorConfig.model_validate(config)


def test_defaults_and_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNMP_UNIT_AUTH", "long-enough-secret")
    config = SnmpCollectorConfig.model_validate({"version": "v3", "user": "u", "auth_key": {"env": "SNMP_UNIT_AUTH"},
                                                 "priv_key": {"env": "SNMP_UNIT_AUTH"}, "priv_protocol": "aes"})
    assert (config.auth_protocol, config.priv_protocol, config.timeout_s, config.retries) == \
        ("SHA-256", "AES-128", 1.0, 1)
    assert config.presets == ("cpu", "memory", "load")
    collector = build("snmp", {"community": {"env": "SNMP_UNIT_AUTH"}})
    assert isinstance(collector, SnmpCollector) and collector.name == "snmp"


@pytest.mark.parametrize(("url", "expected"), [
    pytest.param("udp://10.0.0.5", TargetAddress("10.0.0.5", 161), id="default port"),
    pytest.param("udp://10.0.0.5:1161", TargetAddress("10.0.0.5", 1161), id="explicit port"),
    pytest.param("10.0.0.5:1161", TargetAddress("10.0.0.5", 1161), id="bare host and port"),
    pytest.param("udp://[2001:db8::1]:161", TargetAddress("2001:db8::1", 161), id="IPv6"),
    pytest.param("udp://vm1.example:161/", TargetAddress("vm1.example", 161), id="DNS name"),
    pytest.param("udp://10.0.0.5?timeout_s=0.5&retries=3", TargetAddress("10.0.0.5", 161, 0.5, 3),
                 id="per-target timeout and retries"),
])
def test_target_urls(url: str, expected: TargetAddress) -> None:
    assert parse_target_url(url) == expected


@pytest.mark.parametrize("url", [
    pytest.param("http://10.0.0.5", id="wrong scheme"),
    pytest.param("udp://public@10.0.0.5", id="credentials in URL"),
    pytest.param("udp://10.0.0.5/mib", id="path"),
    pytest.param("udp://10.0.0.5:99999", id="bad port"),
    pytest.param("udp://10.0.0.5?timeout_s=0", id="zero timeout"),
    pytest.param("udp://10.0.0.5?retries=9", id="too many retries"),
    pytest.param("udp://10.0.0.5?community=x", id="unknown option"),
    pytest.param("udp://", id="no host"),
])
def test_bad_target_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_target_url(url)


# ---- presets ---------------------------------------------------------------------------------------

CPU0 = {"user": 1000, "nice": 10, "system": 500, "idle": 8000, "wait": 100, "interrupt": 5, "softirq": 20,
        "steal": 0}


def plus(base: dict[str, int], **delta: int) -> dict[str, int]:
    return {k: (v + delta.get(k, 0)) % 2**32 for k, v in base.items()}


async def test_cpu_is_the_busy_share_of_tick_deltas(poller: Poller) -> None:
    poller.agent.vm(uptime_s=poller.uptime, cpu=CPU0)
    first = await poller.poll()
    assert "cpu_percent" not in first
    assert poller.missing()["cpu_percent"] == "ssCpuRaw* counters: first reading"
    poller.advance(10)
    # 1000 ticks: 150 busy (user 100 + system 50), 800 idle, 50 iowait (not busy).
    poller.agent.vm(uptime_s=poller.uptime, cpu=plus(CPU0, user=100, system=50, idle=800, wait=50))
    assert (await poller.poll())["cpu_percent"] == pytest.approx(15.0)
    assert "cpu_percent" not in poller.missing()


async def test_cpu_across_a_counter32_wrap(poller: Poller) -> None:
    near_wrap = CPU0 | {"user": 2**32 - 40}
    poller.agent.vm(uptime_s=poller.uptime, cpu=near_wrap)
    await poller.poll()
    poller.advance(10)
    poller.agent.vm(uptime_s=poller.uptime, cpu=plus(near_wrap, user=100, idle=300))     # user wraps to 60
    assert (await poller.poll())["cpu_percent"] == pytest.approx(25.0)


@pytest.mark.parametrize(("step", "reason"), [
    pytest.param("restart", "reset", id="agent restarted: sysUpTime went back"),
    pytest.param("gap", "gap", id="previous reading older than max_rate_gap_s"),
    pytest.param("decrease", "reset", id="counter went down without a plausible wrap"),
])
async def test_no_cpu_rate_across_an_untrusted_interval(poller: Poller, step: str, reason: str) -> None:
    poller.agent.vm(uptime_s=poller.uptime, cpu=CPU0)
    await poller.poll()
    if step == "restart":
        poller.clock.advance(10)
        poller.uptime = 3.0                                   # snmpd started 3 s ago
        cpu = plus(CPU0, user=100, idle=900)
    elif step == "gap":
        poller.advance(120)
        cpu = plus(CPU0, user=100, idle=900)
    else:
        poller.advance(10)
        cpu = CPU0 | {"user": 10}
    poller.agent.vm(uptime_s=poller.uptime, cpu=cpu)
    got = await poller.poll()
    assert "cpu_percent" not in got
    assert reason in poller.missing()["cpu_percent"]
    # Re-baselined: the next interval counts again.
    poller.advance(10)
    poller.agent.vm(uptime_s=poller.uptime, cpu=plus(cpu, user=50, idle=950))
    assert (await poller.poll())["cpu_percent"] == pytest.approx(5.0)


async def test_zero_ticks_at_agent_start_are_no_data_not_a_baseline(poller: Poller) -> None:
    poller.agent.vm(uptime_s=poller.uptime, cpu={})          # snmpd just started: every counter 0
    got = await poller.poll()
    assert "cpu_percent" not in got and "no CPU sample yet" in poller.missing()["cpu_percent"]
    poller.advance(10)
    poller.agent.vm(uptime_s=poller.uptime, cpu=CPU0)        # the totals since boot appear
    assert "cpu_percent" not in await poller.poll()           # a first reading, not "everything since boot"
    assert poller.missing()["cpu_percent"] == "ssCpuRaw* counters: first reading"


async def test_no_tick_between_two_polls_is_no_data(poller: Poller) -> None:
    poller.agent.vm(uptime_s=poller.uptime, cpu=CPU0)
    await poller.poll()
    poller.advance(1)
    assert "cpu_percent" not in await poller.poll()          # snmpd refreshes its counters every ~5 s
    assert "no CPU tick" in poller.missing()["cpu_percent"]


async def test_cpu_falls_back_to_hr_processor_load(poller: Poller) -> None:
    poller.agent.vm(uptime_s=poller.uptime)
    for oid in CPU_RAW.values():
        poller.agent.values[oid] = (NO_SUCH_OBJECT, None)
    got = await poller.poll()
    assert "cpu_percent" not in got and "hrProcessorLoad" in poller.missing()["cpu_percent"]
    poller.agent.values[f"{HR_PROCESSOR_LOAD}.196608"] = (INTEGER, 10)
    poller.agent.values[f"{HR_PROCESSOR_LOAD}.196609"] = (INTEGER, 30)
    assert (await poller.poll())["cpu_percent"] == pytest.approx(20.0)
    assert GETBULK in poller.agent.requests


@pytest.mark.parametrize(("mem", "expected"), [
    pytest.param({"sysavail": 600}, 40.0, id="MemAvailable when the agent has memSysAvail"),
    pytest.param({}, 60.0, id="avail + buffer + cached otherwise"),
    pytest.param({"buffer": None, "cached": None}, 90.0, id="memAvailReal alone"),
])
async def test_memory_used_percent(poller: Poller, mem: dict[str, int | None], expected: float) -> None:
    poller.agent.vm(uptime_s=poller.uptime, mem={k: v for k, v in mem.items() if v is not None})
    for name, value in mem.items():
        if value is None:
            poller.agent.values[MEMORY[name]] = (NO_SUCH_OBJECT, None)
    assert (await poller.poll())["memory_used_percent"] == pytest.approx(expected)


async def test_load_strings(poller: Poller) -> None:
    poller.agent.vm(uptime_s=poller.uptime, load=(b"1.50", b" 0.75", b"nan?"))
    got = await poller.poll()
    assert (got["load1"], got["load5"]) == (1.5, 0.75)
    assert "load15" not in got and "not a number" in poller.missing()["load15"]


async def test_missing_objects_are_absent_and_explained_never_zero(poller: Poller) -> None:
    poller.agent.values = {SYS_UPTIME: (TIMETICKS, 100)}
    for oid in [*MEMORY.values(), *LOAD.values()]:
        poller.agent.values[oid] = (NO_SUCH_INSTANCE, None)
    for oid in CPU_RAW.values():
        poller.agent.values[oid] = (NO_SUCH_INSTANCE, None)
    assert await poller.poll() == {}
    missing = poller.missing()
    assert set(missing) == {"cpu_percent", "memory_used_percent", "load1", "load5", "load15"}
    assert missing["load1"] == f"{LOAD['load1']}: noSuchInstance"
    assert missing["memory_used_percent"] == f"{MEMORY['total']}: noSuchInstance"
    assert missing["cpu_percent"] == f"{CPU_RAW['user']}: noSuchInstance"


async def test_interface_rates_per_interface_and_total(agent: FakeAgent, community_file: Path) -> None:
    p = Poller(agent, community_file, presets=["interfaces"], max_repetitions=2)
    try:
        agent.vm(uptime_s=p.uptime)
        rows = {1: ("lo", 10**9, 10**9), 2: ("eth0", 1000, 2000), 3: ("eth1", 2**64 - 500, 0)}
        agent.interfaces(rows)
        assert await p.poll() == {}
        assert p.missing()["rx_bytes_per_s{interface=eth0}"] == "first reading"
        p.advance(10)
        agent.interfaces({1: ("lo", 2 * 10**9, 2 * 10**9), 2: ("eth0", 11000, 2500),
                          3: ("eth1", 500, 100)})                       # eth1's Counter64 really wrapped
        got = await p.poll()
        assert got == {
            "rx_bytes_per_s{interface=eth0}": 1000.0, "tx_bytes_per_s{interface=eth0}": 50.0,
            "rx_bytes_per_s{interface=eth1}": 100.0, "tx_bytes_per_s{interface=eth1}": 10.0,
            "rx_bytes_per_s": 1100.0, "tx_bytes_per_s": 60.0,            # lo is excluded by default
        }
        assert GETBULK in agent.requests                                  # a walk, several pages (max_rep 2)
        # An interface counter that goes back: no rate for it, and no total that would understate.
        p.advance(10)
        agent.interfaces({1: ("lo", 0, 0), 2: ("eth0", 5, 2600), 3: ("eth1", 600, 200)})
        got = await p.poll()
        assert "rx_bytes_per_s{interface=eth0}" not in got and "rx_bytes_per_s" not in got
        assert got["tx_bytes_per_s"] == pytest.approx(20.0)
        assert p.missing()["rx_bytes_per_s{interface=eth0}"] == "reset reading"
    finally:
        await p.collector.close()


async def test_interface_filter(agent: FakeAgent, community_file: Path) -> None:
    p = Poller(agent, community_file, presets=["interfaces"], interfaces={"include": ["eth*"], "exclude": ["eth1"]})
    try:
        agent.vm(uptime_s=p.uptime)
        agent.interfaces({1: ("lo", 0, 0), 2: ("eth0", 0, 0), 3: ("eth1", 0, 0), 4: ("ens3", 0, 0)})
        await p.poll()
        p.advance(1)
        got = await p.poll()
        assert sorted(got) == ["rx_bytes_per_s", "rx_bytes_per_s{interface=eth0}", "tx_bytes_per_s",
                               "tx_bytes_per_s{interface=eth0}"]
        agent.interfaces({1: ("lo", 0, 0)})
        assert await p.poll() == {}
        assert p.missing()["rx_bytes_per_s"] == "no interface matches the interfaces filter"
    finally:
        await p.collector.close()


async def test_generic_oids(agent: FakeAgent, community_file: Path) -> None:
    oids = {
        "sessions": {"oid": "1.3.6.1.4.1.99.1.0"},
        "ratio": {"oid": "1.3.6.1.4.1.99.2.0", "scale": 100},
        "requests": {"oid": "1.3.6.1.4.1.99.3.0", "type": "counter"},
        "bytes": {"oid": "1.3.6.1.4.1.99.4.0", "type": "counter", "max_rate": 1000},
        "gone": {"oid": "1.3.6.1.4.1.99.5.0"},
        "per_backend": {"oid": "1.3.6.1.4.1.99.6.1", "walk": True, "type": "counter"},
    }
    p = Poller(agent, community_file, presets=[], oids=oids)
    try:
        agent.values = {SYS_UPTIME: (TIMETICKS, int(p.uptime * 100)),
                        "1.3.6.1.4.1.99.1.0": (0x42, 12),                 # Gauge32
                        "1.3.6.1.4.1.99.2.0": (OCTET_STRING, b"0.25"),
                        "1.3.6.1.4.1.99.3.0": (COUNTER32, 2**32 - 10),
                        "1.3.6.1.4.1.99.4.0": (COUNTER32, 0),
                        "1.3.6.1.4.1.99.6.1.1.1": (COUNTER64, 100),
                        "1.3.6.1.4.1.99.6.1.2.7": (COUNTER64, 200),
                        "1.3.6.1.4.1.99.7.0": (INTEGER, 1)}             # the next column: not walked
        got = await p.poll()
        assert got == {"sessions": 12.0, "ratio": 25.0}
        assert p.missing()["gone"] == "1.3.6.1.4.1.99.5.0: noSuchObject"
        p.advance(10)
        agent.values["1.3.6.1.4.1.99.3.0"] = (COUNTER32, 90)             # wrapped: +100
        agent.values["1.3.6.1.4.1.99.4.0"] = (COUNTER32, 2**31 - 1)       # a "rate" no link could do
        agent.values["1.3.6.1.4.1.99.6.1.1.1"] = (COUNTER64, 150)
        agent.values["1.3.6.1.4.1.99.6.1.2.7"] = (COUNTER64, 300)
        got = await p.poll()
        assert got["requests"] == pytest.approx(10.0)
        assert "bytes" not in got and "above max_rate" in p.missing()["bytes"]
        assert got["per_backend{index=1.1}"] == pytest.approx(5.0)
        assert got["per_backend{index=2.7}"] == pytest.approx(10.0)
    finally:
        await p.collector.close()


# ---- errors ------------------------------------------------------------------------------------------

async def test_a_silent_agent_is_a_timeout_within_its_budget(agent: FakeAgent, community_file: Path) -> None:
    p = Poller(agent, community_file, timeout_s=0.2, retries=1)
    try:
        agent.silent = True
        started = time.monotonic()
        with pytest.raises(CollectorTimeout) as info:
            await p.poll()
        elapsed = time.monotonic() - started
        assert 0.38 < elapsed < 0.2 * 2 + 0.3
        assert info.value.reason == "timeout"
        assert "vm1" in str(info.value) and "wrong community or agent down" in str(info.value)
        assert agent.requests.count(GET) == 2                            # the first try and one retry
    finally:
        await p.collector.close()


async def test_target_url_overrides_timeout_and_retries(agent: FakeAgent, community_file: Path) -> None:
    p = Poller(agent, community_file, timeout_s=5, retries=3)
    try:
        agent.silent = True
        p.target = Target(key="vm1", url=f"udp://127.0.0.1:{agent.port}?timeout_s=0.1&retries=0")
        started = time.monotonic()
        with pytest.raises(CollectorTimeout):
            await p.poll()
        assert time.monotonic() - started < 0.5
        assert agent.requests.count(GET) == 1
    finally:
        await p.collector.close()


async def test_wrong_community_never_leaks_the_secret(agent: FakeAgent, tmp_path: Path) -> None:
    secret = tmp_path / "community"
    secret.write_text("the-wrong-and-secret-community\n")
    collector = SnmpCollector(SnmpCollectorConfig.model_validate(
        {"community": {"file": str(secret)}, "timeout_s": 0.1, "retries": 0}))
    try:
        with pytest.raises(CollectorTimeout) as info:
            await collector.collect(Target(key="vm1", url=f"udp://127.0.0.1:{agent.port}"))
        texts = [str(info.value), repr(info.value), repr(collector.config), str(collector.config),
                 repr(collector._security), repr(collector._targets)]
        assert all("the-wrong-and-secret-community" not in text for text in texts)
        assert "**********" in repr(collector.config)
    finally:
        await collector.close()


async def test_error_status_and_mismatched_answers(poller: Poller) -> None:
    poller.agent.vm(uptime_s=poller.uptime)
    poller.agent.error_status = 5
    with pytest.raises(CollectorError) as info:
        await poller.poll()
    assert info.value.reason == "snmp_genErr" and "sysUpTime" not in str(info.value)
    assert "1.3.6.1.2.1.1.3.0" in str(info.value)
    poller.agent.error_status = 0
    poller.agent.swap_answer_oids = True
    with pytest.raises(CollectorParseError, match="answered for"):
        await poller.poll()


@pytest.mark.parametrize(("target", "reason"), [
    pytest.param(Target(key="x", url="udp://127.0.0.1:161", uds="/run/x.sock"), "config", id="unix socket"),
    pytest.param(Target(key="x", url="tcp://127.0.0.1:161"), "config", id="bad URL"),
    pytest.param(Target(key="x", url="udp://127.0.0.1:161", netns="no-such-ns-for-snmp-unit"), "netns",
                 id="missing namespace"),
    pytest.param(Target(key="x", url="udp://name.invalid:161"), "resolve", id="unresolvable name"),
])
async def test_unusable_targets(poller: Poller, target: Target, reason: str) -> None:
    with pytest.raises(CollectorError) as info:
        await poller.collector.collect(target)
    assert info.value.reason == reason
    assert "snmp x (" in str(info.value)


async def test_forget_drops_rates_and_state(poller: Poller) -> None:
    poller.agent.vm(uptime_s=poller.uptime, cpu=CPU0)
    await poller.poll()
    poller.collector.forget("vm1")
    assert poller.collector.missing("vm1") == {}
    poller.advance(10)
    poller.agent.vm(uptime_s=poller.uptime, cpu=plus(CPU0, user=100, idle=900))
    assert "cpu_percent" not in await poller.poll()                    # a first reading again


async def test_many_targets_concurrently(agent: FakeAgent, community_file: Path) -> None:
    p = Poller(agent, community_file, max_in_flight=50)
    try:
        agent.vm(uptime_s=p.uptime, cpu=CPU0)
        targets = [Target(key=f"vm{i}", url=f"udp://127.0.0.1:{agent.port}") for i in range(300)]
        results = await asyncio.gather(*(p.collector.collect(t) for t in targets))
        assert all({s.metric for s in r} == {"memory_used_percent", "load1", "load5", "load15"} for r in results)
    finally:
        await p.collector.close()


async def test_replay_of_two_real_snmpd_polls(agent: FakeAgent, captured_community_file: Path) -> None:
    """Two captured answers of net-snmp, 6 s apart: cpu_percent is the busy share of their tick deltas."""
    polls = CAPTURED["v2c_polls"]
    answers = [bytes.fromhex(p["response"]) for p in polls]
    for poll, answer in zip(polls, answers, strict=True):
        CAPTURED_REQUEST_IDS[answer] = poll["request_id"]
    agent.community = CAPTURED["community"].encode()
    p = Poller(agent, captured_community_file)
    try:
        agent.replay = list(answers)
        await p.poll()
        p.clock.advance(polls[1]["seconds"])
        got = await p.poll()
    finally:
        await p.collector.close()
    ticks = []
    for answer in answers:
        _, _, parsed = parse_v2c(answer)
        ticks.append({name: parsed.varbinds[1 + i][2] for i, name in enumerate(CPU_RAW)})
    delta = {name: ticks[1][name] - ticks[0][name] for name in CPU_RAW}    # type: ignore[operator]
    total = sum(delta.values())
    expected = 100 * (total - delta["idle"] - delta["wait"]) / total
    assert got["cpu_percent"] == pytest.approx(expected)
    _, _, second = parse_v2c(answers[1])
    mem: dict[str, Any] = {name: second.varbinds[9 + i][2] for i, name in enumerate(MEMORY)}
    assert got["memory_used_percent"] == pytest.approx(100 * (mem["total"] - mem["sysavail"]) / mem["total"])
    assert got["load1"] == float(second.varbinds[14][2])                    # type: ignore[arg-type]


def _has_ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_target(community_file: Path) -> None:
    loop = asyncio.get_running_loop()
    transport, fake = await loop.create_datagram_endpoint(FakeAgent, local_addr=("::1", 0))
    port = transport.get_extra_info("sockname")[1]
    collector = SnmpCollector(SnmpCollectorConfig.model_validate(
        {"community": {"file": str(community_file)}, "presets": ["memory"], "timeout_s": 0.5}))
    try:
        fake.vm(uptime_s=10)
        samples = await collector.collect(Target(key="v6", url=f"udp://[::1]:{port}"))
        assert [s.metric for s in samples] == ["memory_used_percent"]
    finally:
        await collector.close()
        transport.close()
