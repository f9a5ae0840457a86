"""Reads VM signals (and any numeric OID) from SNMP agents, v2c or v3 authPriv, many at once.

Presets turn standard MIB objects into the signals the policies use:

    cpu         cpu_percent            from the UCD ssCpuRaw* tick counters (busy share of all ticks
                                       between two polls); hrProcessorLoad averaged when the agent
                                       has no raw counters
    memory      memory_used_percent    memTotalReal minus MemAvailable (memSysAvail), or minus
                                       memAvailReal + memBuffer + memCached on agents without it
    load        load1, load5, load15   laLoad.1-3 (strings such as "0.45")
    interfaces  rx_bytes_per_s,        ifHCInOctets / ifHCOutOctets (Counter64, bulk walk) per
                tx_bytes_per_s         interface (label `interface` = ifName), plus their sum without
                                       labels; interfaces chosen by ifName globs

and `oids:` adds operator-defined gauges and counters (a counter becomes a per-second rate). Every
scalar goes out in one GET together with sysUpTime.0, whose value gives each poll the agent's start
time: counters are turned into rates through `RateTracker` with that marker (an agent restart, a
Counter32 wrap, a gap) so a rate is never negative or absurd. A metric the agent cannot give yet
(noSuchInstance for ~60 s after snmpd starts, a first reading) is absent — never 0 — and
`missing(key)` says why.

A pool's collector, in YAML (credentials are file or environment references, never inline):

    snmp:
      version: v3                        # or v2c with `community: {file: ...}`
      user: scaler
      auth_protocol: SHA-256             # MD5 SHA SHA-224 SHA-256 SHA-384 SHA-512
      auth_key: {file: /etc/scaler/snmp-auth-key}
      priv_protocol: AES-128             # DES 3DES AES-128 AES-192 AES-256 AES-192-C AES-256-C none
      priv_key: {env: SCALER_SNMP_PRIV_KEY}
      timeout_s: 1                       # per attempt; retries: 1 -> at most ~2 s for a dead agent
      presets: [cpu, memory, load, interfaces]
      interfaces: {include: ["eth*", "ens*"]}
      oids:
        haproxy_sessions: {oid: 1.3.6.1.4.1.8072.1.3.2.3.1.1.7.104.97.112.114.111.120.121}  # extend "haproxy"
        requests: {oid: 1.3.6.1.4.1.99999.1.2.0, type: counter}

Targets: `Target.url` is `udp://HOST[:PORT][?timeout_s=S&retries=N]` (HOST an IPv4 address,
`[IPv6]` or a DNS name; port 161 by default; the query overrides the collector's timeout and retries
for that target; a bare `HOST[:PORT]` is accepted too). `Target.netns` names a network namespace the
UDP socket is opened in. The wire work is `collectors.snmp.client` (hand-encoded BER, pysnmp's USM crypto).
It must not log or raise a credential, block the event loop, or act on the agent.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Self
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator, model_validator

from collectors.base import Sample, Target
from collectors.errors import CollectorError, CollectorParseError
from collectors.rates import COUNTER32, COUNTER64, RateTracker
from collectors.secrets import Secret
from collectors.snmp.ber import COUNTER32 as TAG_COUNTER32
from collectors.snmp.ber import COUNTER64 as TAG_COUNTER64
from collectors.snmp.ber import (
    END_OF_MIB_VIEW,
    EXCEPTION_NAMES,
    GAUGE32,
    GET,
    GETBULK,
    INTEGER,
    NO_SUCH_OBJECT,
    OCTET_STRING,
    OPAQUE,
    TIMETICKS,
    BerError,
    Pdu,
    decode_arcs,
    encode_oid,
    oid_text,
    opaque_float,
)
from collectors.snmp.client import Agent, Request, SnmpClient, V2cSecurity, V3Security
from collectors.snmp.usm import UsmUser, auth_protocol, priv_protocol

__all__ = [
    "METRIC_NAMES",
    "PRESETS",
    "OidSpec",
    "SnmpCollector",
    "SnmpCollectorConfig",
    "TargetAddress",
    "parse_target_url",
]

Preset = Literal["cpu", "memory", "load", "interfaces"]
PRESETS: tuple[Preset, ...] = ("cpu", "memory", "load", "interfaces")

SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
# UCD-SNMP-MIB systemStats raw CPU ticks (Counter32, 1/100 s per CPU). Guest time is already part of
# user time on Linux, and ssCpuRawKernel is 0 there: both are left out so nothing counts twice.
CPU_RAW = {
    "user": "1.3.6.1.4.1.2021.11.50.0",
    "nice": "1.3.6.1.4.1.2021.11.51.0",
    "system": "1.3.6.1.4.1.2021.11.52.0",
    "idle": "1.3.6.1.4.1.2021.11.53.0",
    "wait": "1.3.6.1.4.1.2021.11.54.0",
    "interrupt": "1.3.6.1.4.1.2021.11.56.0",
    "softirq": "1.3.6.1.4.1.2021.11.61.0",
    "steal": "1.3.6.1.4.1.2021.11.64.0",
}
CPU_REQUIRED = ("user", "system", "idle")
CPU_NOT_BUSY = ("idle", "wait")        # I/O wait is idle time with an excuse, not load
HR_PROCESSOR_LOAD = "1.3.6.1.2.1.25.3.3.1.2"
MEMORY = {
    "total": "1.3.6.1.4.1.2021.4.5.0",       # memTotalReal, kB
    "avail": "1.3.6.1.4.1.2021.4.6.0",       # memAvailReal (free), kB
    "buffer": "1.3.6.1.4.1.2021.4.14.0",     # memBuffer, kB
    "cached": "1.3.6.1.4.1.2021.4.15.0",     # memCached, kB
    "sysavail": "1.3.6.1.4.1.2021.4.27.0",   # memSysAvail = MemAvailable (net-snmp >= 5.9), kB
}
LOAD = {
    "load1": "1.3.6.1.4.1.2021.10.1.3.1",
    "load5": "1.3.6.1.4.1.2021.10.1.3.2",
    "load15": "1.3.6.1.4.1.2021.10.1.3.3",
}
IF_NAME = "1.3.6.1.2.1.31.1.1.1.1"
IF_HC_IN_OCTETS = "1.3.6.1.2.1.31.1.1.1.6"
IF_HC_OUT_OCTETS = "1.3.6.1.2.1.31.1.1.1.10"
_IF_COLUMNS = (encode_oid(IF_NAME), encode_oid(IF_HC_IN_OCTETS), encode_oid(IF_HC_OUT_OCTETS))
_HR_COLUMN = encode_oid(HR_PROCESSOR_LOAD)

PRESET_METRICS: dict[Preset, tuple[str, ...]] = {
    "cpu": ("cpu_percent",),
    "memory": ("memory_used_percent",),
    "load": ("load1", "load5", "load15"),
    "interfaces": ("rx_bytes_per_s", "tx_bytes_per_s"),
}
METRIC_NAMES = frozenset(m for names in PRESET_METRICS.values() for m in names)
_METRIC_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_MAX_WALK_PAGES = 64


class OidSpec(BaseModel):
    """One operator-defined metric. `type: counter` turns the value into a per-second rate (wraps by
    the value's SNMP type, resets by the agent's uptime); `max_rate` drops a rate above it (a reset
    a Counter32 cannot show). `walk: true` reads every row under `oid` (a table column): one sample
    per row, labelled `index` with the row's index. `scale` multiplies the value (e.g. 1024 for kB)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    oid: str
    type: Literal["gauge", "counter"] = "gauge"
    walk: bool = False
    scale: FiniteFloat = 1.0
    max_rate: FiniteFloat | None = Field(default=None, gt=0)

    @field_validator("oid")
    @classmethod
    def _numeric(cls, value: str) -> str:
        try:
            encode_oid(value)
        except BerError as exc:
            raise ValueError(f"{exc} (numeric OIDs only, no MIB names)") from None
        return value.removeprefix(".")


class InterfaceFilter(BaseModel):
    """Which interfaces the `interfaces` preset reports, by ifName globs (fnmatch). An empty
    `include` means all; `exclude` wins."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ("lo",)

    def selects(self, name: str) -> bool:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.exclude):
            return False
        return not self.include or any(fnmatch.fnmatchcase(name, pattern) for pattern in self.include)


class SnmpCollectorConfig(BaseModel):
    """Settings of the `snmp` collector (one per pool: every member shares the credentials).

    v2c needs `community`; v3 needs `user` and `auth_key`, and `priv_key` unless `priv_protocol` is
    "none" (authNoPriv). Credentials are `{file: PATH}` or `{env: VAR}` references, never inline.
    `timeout_s` x (`retries` + 1) bounds an unanswered poll (pysnmp's own default would be 6 s).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal["v2c", "v3"] = "v2c"
    community: Secret | None = None
    user: str | None = Field(default=None, min_length=1, max_length=32)
    auth_protocol: str = "SHA-256"
    auth_key: Secret | None = None
    priv_protocol: str = "AES-128"
    priv_key: Secret | None = None
    context: str = ""
    port: int = Field(default=161, ge=1, le=65535)
    timeout_s: float = Field(default=1.0, gt=0, le=30)
    retries: int = Field(default=1, ge=0, le=5)
    presets: tuple[Preset, ...] = ("cpu", "memory", "load")
    interfaces: InterfaceFilter = InterfaceFilter()
    oids: dict[str, OidSpec] = Field(default_factory=dict)
    max_rate_gap_s: FiniteFloat = Field(default=60.0, gt=0)
    # How far `now - sysUpTime` may move between polls and still be the same agent run: polling
    # latency and the 10 ms tick make it jitter a little; an agent restart moves it by its uptime.
    start_tolerance_s: FiniteFloat = Field(default=5.0, gt=0)
    max_repetitions: int = Field(default=16, ge=1, le=200)
    max_oids_per_get: int = Field(default=40, ge=1, le=200)
    max_in_flight: int = Field(default=256, ge=1)

    @field_validator("auth_protocol")
    @classmethod
    def _auth_name(cls, value: str) -> str:
        return auth_protocol(value).name

    @field_validator("priv_protocol")
    @classmethod
    def _priv_name(cls, value: str) -> str:
        return "none" if value.strip().lower() == "none" else priv_protocol(value).name

    @field_validator("presets")
    @classmethod
    def _unique_presets(cls, value: tuple[Preset, ...]) -> tuple[Preset, ...]:
        if len(set(value)) != len(value):
            raise ValueError("a preset is listed twice")
        return value

    @field_validator("oids")
    @classmethod
    def _metric_names(cls, value: dict[str, OidSpec]) -> dict[str, OidSpec]:
        for name in value:
            if not _METRIC_NAME.match(name):
                raise ValueError(f"metric name {name!r} must match {_METRIC_NAME.pattern}")
            if name in METRIC_NAMES:
                raise ValueError(f"metric name {name!r} is a preset's")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        problems = []
        if self.version == "v2c":
            if self.community is None:
                problems.append("v2c needs 'community'")
            if self.user is not None or self.auth_key is not None or self.priv_key is not None:
                problems.append("user/auth_key/priv_key are for v3")
        else:
            if self.community is not None:
                problems.append("'community' is for v2c")
            if self.user is None:
                problems.append("v3 needs 'user'")
            if self.auth_key is None:
                problems.append("v3 needs 'auth_key' (authNoPriv or authPriv)")
            if self.priv_protocol == "none" and self.priv_key is not None:
                problems.append("priv_key is set but priv_protocol is none")
            if self.priv_protocol != "none" and self.priv_key is None:
                problems.append(f"priv_protocol {self.priv_protocol} needs 'priv_key' (or priv_protocol: none)")
        for key in (self.auth_key, self.priv_key):
            if key is not None and len(key.get_secret_value()) < 8:
                problems.append("USM passphrases must be at least 8 characters (RFC 3414 11.2)")
                break
        if not self.presets and not self.oids:
            problems.append("nothing to read: give 'presets' or 'oids'")
        if problems:
            raise ValueError("; ".join(problems))
        return self


@dataclass(frozen=True, slots=True)
class TargetAddress:
    host: str
    port: int
    timeout_s: float | None = None
    retries: int | None = None


def parse_target_url(url: str, default_port: int = 161) -> TargetAddress:
    """`udp://HOST[:PORT][?timeout_s=S&retries=N]` (or bare `HOST[:PORT]`). ValueError if malformed."""
    text = url.strip()
    if "://" not in text:
        text = f"udp://{text}"
    parts = urlsplit(text)
    if parts.scheme != "udp":
        raise ValueError(f"scheme must be udp, not {parts.scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials do not belong in the target URL")
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError("a path or fragment means nothing for an SNMP target")
    host = parts.hostname
    if not host:
        raise ValueError("no host")
    port = parts.port or default_port       # .port raises ValueError for a bad port
    timeout_s: float | None = None
    retries: int | None = None
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)):
        if key == "timeout_s":
            timeout_s = float(value)
            if not 0 < timeout_s <= 30:
                raise ValueError("timeout_s must be in (0, 30]")
        elif key == "retries":
            retries = int(value)
            if not 0 <= retries <= 5:
                raise ValueError("retries must be in [0, 5]")
        else:
            raise ValueError(f"unknown option {key!r} (timeout_s, retries)")
    return TargetAddress(host, port, timeout_s, retries)


# ---- per target state ---------------------------------------------------------------------------

_Answer = tuple[int, object]             # (tag, value)


@dataclass(slots=True)
class _TargetState:
    url: str
    netns: str | None
    agent: Agent
    resolved_at: float
    literal: bool
    missing: dict[str, str] = field(default_factory=dict)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


_INTEGRAL_TAGS = frozenset({INTEGER, TIMETICKS, TAG_COUNTER32, TAG_COUNTER64, GAUGE32})


def _number(tag: int, value: object) -> float | None:
    if tag in _INTEGRAL_TAGS:
        assert isinstance(value, int)
        return float(value)
    if tag == OCTET_STRING and isinstance(value, bytes):
        try:
            return float(value.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            return None
    if tag == OPAQUE and isinstance(value, bytes):
        return opaque_float(value)
    return None


_MODULUS = {TAG_COUNTER32: COUNTER32, TAG_COUNTER64: COUNTER64}


def _why(oid: bytes, tag: int) -> str:
    if tag in EXCEPTION_NAMES:
        return f"{oid_text(oid)}: {EXCEPTION_NAMES[tag]}"
    return f"{oid_text(oid)}: not a number (tag 0x{tag:02x})"


class SnmpCollector:
    """The `snmp` collector. One instance polls every target of a pool concurrently; per-target state
    (address, v3 engine, rate baselines, why metrics are missing) is kept by `target.key`.

    `client` owns the UDP sockets (pass one to share sockets between collectors); `clock` stamps
    samples (epoch seconds); `monotonic` measures rate intervals and ages DNS answers.
    """

    name = "snmp"

    def __init__(
        self,
        config: SnmpCollectorConfig,
        *,
        client: SnmpClient | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        resolve_ttl_s: float = 60.0,
    ) -> None:
        self.config = config
        self._client = client or SnmpClient()
        self._owns_client = client is None
        self._clock = clock
        self._monotonic = monotonic
        self._resolve_ttl_s = resolve_ttl_s
        self._rates = RateTracker(max_gap_s=config.max_rate_gap_s, start_tolerance_s=config.start_tolerance_s)
        self._targets: dict[str, _TargetState] = {}
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._security = self._make_security(config)
        presets = set(config.presets)
        self._cpu = "cpu" in presets
        self._memory = "memory" in presets
        self._load = "load" in presets
        self._interfaces = "interfaces" in presets

        # Every scalar of every poll, in one ordered list: sysUpTime.0 first.
        slots: list[tuple[str, bytes]] = [("uptime", encode_oid(SYS_UPTIME))]
        if self._cpu:
            slots += [(f"cpu.{name}", encode_oid(oid)) for name, oid in CPU_RAW.items()]
        if self._memory:
            slots += [(f"mem.{name}", encode_oid(oid)) for name, oid in MEMORY.items()]
        if self._load:
            slots += [(f"load.{name}", encode_oid(oid)) for name, oid in LOAD.items()]
        self._scalar_metrics = {name: spec for name, spec in config.oids.items() if not spec.walk}
        self._walk_metrics = {name: spec for name, spec in config.oids.items() if spec.walk}
        self._walk_columns = [encode_oid(spec.oid) for spec in self._walk_metrics.values()]
        slots += [(f"oid.{name}", encode_oid(spec.oid)) for name, spec in self._scalar_metrics.items()]
        size = config.max_oids_per_get
        self._gets = [
            (tuple(name for name, _ in chunk), Request(GET, [oid for _, oid in chunk]))
            for chunk in (slots[i:i + size] for i in range(0, len(slots), size))
        ]
        self._walk_requests: dict[tuple[bytes, ...], Request] = {}

    # -- the Collector interface ------------------------------------------------------------------

    async def collect(self, target: Target) -> list[Sample]:
        where = f"{target.key} ({target.url}{f' in netns {target.netns}' if target.netns else ''})"
        try:
            async with self._slots:
                state = await self._target_state(target)
                return await self._poll(target.key, state)
        except CollectorError as exc:
            raise type(exc)(f"snmp {where}: {exc}", reason=exc.reason) from exc

    def missing(self, key: str) -> dict[str, str]:
        """Why metrics were absent from the last successful `collect` of `key`: metric -> reason."""
        state = self._targets.get(key)
        return dict(state.missing) if state is not None else {}

    def forget(self, key: str) -> None:
        self._rates.forget(key)
        state = self._targets.pop(key, None)
        if state is not None and state.netns is not None and not any(
                other.netns == state.netns for other in self._targets.values()):
            # The last member in that namespace left: our socket must not keep the namespace alive.
            self._client.close_netns(state.netns)

    async def close(self) -> None:
        self._targets.clear()
        if self._owns_client:
            await self._client.close()

    # -- targets ----------------------------------------------------------------------------------

    @staticmethod
    def _make_security(config: SnmpCollectorConfig) -> V2cSecurity | V3Security:
        if config.version == "v2c":
            assert config.community is not None
            return V2cSecurity(config.community.get_secret_value().encode())
        assert config.user is not None and config.auth_key is not None
        priv = None if config.priv_protocol == "none" else priv_protocol(config.priv_protocol)
        user = UsmUser(config.user, auth_protocol(config.auth_protocol), config.auth_key.get_secret_value(),
                       priv, config.priv_key.get_secret_value() if priv is not None and config.priv_key else None)
        return V3Security(user, config.context.encode())

    async def _target_state(self, target: Target) -> _TargetState:
        if target.uds is not None:
            raise CollectorError("SNMP is UDP: a unix socket target is not supported (use netns)", reason="config")
        state = self._targets.get(target.key)
        now = self._monotonic()
        if (state is not None and state.url == target.url and state.netns == target.netns
                and (state.literal or now - state.resolved_at < self._resolve_ttl_s)):
            return state
        try:
            address = parse_target_url(target.url, self.config.port)
        except ValueError as exc:
            raise CollectorError(f"bad target URL: {exc}", reason="config") from None
        host = address.host
        literal = _is_ip(host)
        if not literal:
            host = await self._resolve(host, address.port)
        if (state is not None and state.url == target.url and state.netns == target.netns
                and state.agent.host == host):
            state.resolved_at = now
            return state
        if state is not None:
            # Another address under the same key: another agent, whose counters share nothing.
            self._rates.forget(target.key)
        agent = Agent(
            self._client, host=host, port=address.port, netns=target.netns, security=self._security,
            timeout_s=address.timeout_s if address.timeout_s is not None else self.config.timeout_s,
            retries=address.retries if address.retries is not None else self.config.retries,
        )
        state = _TargetState(target.url, target.netns, agent, now, literal)
        self._targets[target.key] = state
        return state

    async def _resolve(self, host: str, port: int) -> str:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.timeout_s):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except (OSError, TimeoutError) as exc:
            raise CollectorError(f"cannot resolve {host!r}: {exc}", reason="resolve") from exc
        if not infos:
            raise CollectorError(f"cannot resolve {host!r}", reason="resolve")
        return str(infos[0][4][0])

    # -- one poll ---------------------------------------------------------------------------------

    async def _poll(self, key: str, state: _TargetState) -> list[Sample]:
        agent = state.agent
        # The first GET alone (it also discovers a v3 engine), the rest together.
        answers = self._check_get(self._gets[0], await agent.request(self._gets[0][1]))
        now = self._clock()
        mono = self._monotonic()
        if len(self._gets) > 1:
            for chunk, answer in zip(self._gets[1:], await asyncio.gather(
                    *(agent.request(request) for _, request in self._gets[1:])), strict=True):
                answers.update(self._check_get(chunk, answer))

        missing: dict[str, str] = {}
        out: list[Sample] = []
        uptime = answers["uptime"]
        start: float | None = None
        if uptime[0] == TIMETICKS:
            assert isinstance(uptime[1], int)
            start = mono - uptime[1] / 100.0

        need_hr = False
        if self._cpu:
            need_hr = self._cpu_from_raw(key, answers, mono, start, now, out, missing)
        columns: list[bytes] = []
        if self._interfaces:
            columns += _IF_COLUMNS
        if need_hr:
            columns.append(_HR_COLUMN)
        columns += self._walk_columns
        table: dict[bytes, dict[bytes, _Answer]] = {}
        if columns:
            table = await self._walk(agent, columns)

        if need_hr:
            self._cpu_from_hr(table[_HR_COLUMN], now, out, missing)
        if self._memory:
            self._memory_used(answers, now, out, missing)
        if self._load:
            for metric in LOAD:
                tag, value = answers[f"load.{metric}"]
                number = _number(tag, value)
                if number is None:
                    missing[metric] = _why(encode_oid(LOAD[metric]), tag)
                else:
                    out.append(Sample(metric, number, now))
        if self._interfaces:
            self._interface_rates(key, table, mono, start, now, out, missing)
        for metric, spec in self._scalar_metrics.items():
            tag, value = answers[f"oid.{metric}"]
            self._generic(key, metric, spec, None, tag, value, mono, start, now, out, missing)
        for (metric, spec), column in zip(self._walk_metrics.items(), self._walk_columns, strict=True):
            rows = table[column]
            if not rows:
                missing[metric] = f"{spec.oid}: no rows"
            for suffix, (tag, value) in rows.items():
                index = ".".join(map(str, decode_arcs(suffix)))
                self._generic(key, metric, spec, index, tag, value, mono, start, now, out, missing)
        state.missing = missing
        return out

    def _check_get(self, chunk: tuple[tuple[str, ...], Request], answer: Pdu) -> dict[str, _Answer]:
        names, request = chunk
        if answer.error_status:
            raise _error_status(answer, request)
        if len(answer.varbinds) != len(names):
            raise CollectorParseError(f"GET of {len(names)} OIDs answered with {len(answer.varbinds)}")
        out: dict[str, _Answer] = {}
        for name, oid, (got, tag, value) in zip(names, request.oids, answer.varbinds, strict=True):
            if got != oid:
                raise CollectorParseError(f"GET {oid_text(oid)} answered for {oid_text(got)}")
            out[name] = (tag, value)
        return out

    async def _walk(self, agent: Agent, columns: Sequence[bytes]) -> dict[bytes, dict[bytes, _Answer]]:
        """Every row under each column, by GETBULK pages that advance all columns together."""
        rows: dict[bytes, dict[bytes, _Answer]] = {column: {} for column in columns}
        cursor = {column: column for column in columns}
        active = list(dict.fromkeys(columns))
        first = self._walk_requests.get(tuple(active))
        if first is None:
            first = self._walk_requests[tuple(active)] = Request(
                GETBULK, active, max_repetitions=self.config.max_repetitions)
        request = first
        for _ in range(_MAX_WALK_PAGES):
            answer = await agent.request(request)
            if answer.error_status:
                raise _error_status(answer, request)
            if not answer.varbinds:
                raise CollectorParseError("empty GETBULK answer")
            width = len(active)
            open_ = [True] * width
            last: list[bytes | None] = [None] * width
            for k, (oid, tag, value) in enumerate(answer.varbinds):
                i = k % width
                if not open_[i]:
                    continue
                column = active[i]
                if tag == END_OF_MIB_VIEW or len(oid) <= len(column) or not oid.startswith(column):
                    open_[i] = False
                    continue
                suffix = oid[len(column):]
                if suffix in rows[column]:        # the agent went backwards: stop, do not loop
                    open_[i] = False
                    continue
                rows[column][suffix] = (tag, value)
                last[i] = oid
            still: list[bytes] = []
            for i, column in enumerate(active):
                if open_[i]:
                    cursor[column] = last[i] or cursor[column]
                    still.append(column)
            if not still:
                return rows
            active = still
            request = Request(GETBULK, [cursor[column] for column in active],
                              max_repetitions=self.config.max_repetitions, reusable=False)
        raise CollectorError(f"walk did not end after {_MAX_WALK_PAGES} pages", reason="walk")

    # -- presets ----------------------------------------------------------------------------------

    def _cpu_from_raw(self, key: str, answers: Mapping[str, _Answer], mono: float, start: float | None,
                      now: float, out: list[Sample], missing: dict[str, str]) -> bool:
        """cpu_percent from tick counters; True if the agent has none (fall back to hrProcessorLoad)."""
        ticks: dict[str, int] = {}
        for name in CPU_RAW:
            tag, value = answers[f"cpu.{name}"]
            if tag == TAG_COUNTER32 and isinstance(value, int):
                ticks[name] = value
            elif name in CPU_REQUIRED:
                if tag == NO_SUCH_OBJECT:
                    return True
                missing["cpu_percent"] = _why(encode_oid(CPU_RAW[name]), tag)
                return False
        if not any(ticks.values()):
            # snmpd answers 0 for every counter until its first CPU sample: a baseline of zeros would
            # make the next interval look like everything since boot.
            missing["cpu_percent"] = "the agent has no CPU sample yet (all ssCpuRaw* are 0)"
            return False
        rates: dict[str, float] = {}
        statuses: set[str] = set()
        for name, value in ticks.items():
            # Every series is updated, even after one gave no rate, so all re-baseline together.
            result = self._rates.update(key, ("cpu", name), value, mono, start=start, modulus=COUNTER32)
            if result.rate is None:
                statuses.add(result.status)
            else:
                rates[name] = result.rate
        if statuses:
            missing["cpu_percent"] = f"ssCpuRaw* counters: {'/'.join(sorted(statuses))} reading"
            return False
        total = sum(rates.values())
        if total <= 0:
            missing["cpu_percent"] = "no CPU tick counted since the previous poll (the agent refreshes them every ~5 s)"
            return False
        idle = sum(rates.get(name, 0.0) for name in CPU_NOT_BUSY)
        out.append(Sample("cpu_percent", min(100.0, max(0.0, 100.0 * (total - idle) / total)), now))
        return False

    @staticmethod
    def _cpu_from_hr(rows: Mapping[bytes, _Answer], now: float, out: list[Sample], missing: dict[str, str]) -> None:
        loads = [float(value) for tag, value in rows.values() if tag == INTEGER and isinstance(value, int)]
        if not loads:
            missing["cpu_percent"] = ("no ssCpuRaw* counters and no hrProcessorLoad rows "
                                      "(snmpd fills hrProcessorLoad ~60 s after it starts)")
            return
        out.append(Sample("cpu_percent", min(100.0, max(0.0, sum(loads) / len(loads))), now))

    @staticmethod
    def _memory_used(answers: Mapping[str, _Answer], now: float, out: list[Sample],
                     missing: dict[str, str]) -> None:
        values: dict[str, float] = {}
        for name in MEMORY:
            tag, value = answers[f"mem.{name}"]
            if tag in (INTEGER, TAG_COUNTER64, GAUGE32) and isinstance(value, int):
                values[name] = float(value)
        total = values.get("total")
        if not total or total <= 0:
            tag = answers["mem.total"][0]
            missing["memory_used_percent"] = _why(encode_oid(MEMORY["total"]), tag)
            return
        if "sysavail" in values:
            available = values["sysavail"]
        elif "avail" in values:
            available = values["avail"] + values.get("buffer", 0.0) + values.get("cached", 0.0)
        else:
            missing["memory_used_percent"] = _why(encode_oid(MEMORY["avail"]), answers["mem.avail"][0])
            return
        used = 100.0 * (total - available) / total
        out.append(Sample("memory_used_percent", min(100.0, max(0.0, used)), now))

    def _interface_rates(self, key: str, table: Mapping[bytes, Mapping[bytes, _Answer]], mono: float,
                         start: float | None, now: float, out: list[Sample], missing: dict[str, str]) -> None:
        names = table[_IF_COLUMNS[0]]
        counters = {"rx_bytes_per_s": table[_IF_COLUMNS[1]], "tx_bytes_per_s": table[_IF_COLUMNS[2]]}
        chosen: list[tuple[bytes, str]] = []
        for index, (tag, value) in names.items():
            name = value.decode("utf-8", "replace") if tag == OCTET_STRING and isinstance(value, bytes) else None
            if name is not None and self.config.interfaces.selects(name):
                chosen.append((index, name))
        if not chosen:
            for metric in counters:
                missing[metric] = "no interface matches the interfaces filter" if names else "no ifName rows"
            return
        for metric, column in counters.items():
            total = 0.0
            complete = True
            for index, name in chosen:
                tag, value = column.get(index, (END_OF_MIB_VIEW, None))
                if tag != TAG_COUNTER64 or not isinstance(value, int):
                    missing[f"{metric}{{interface={name}}}"] = "no ifHC*Octets for it"
                    complete = False
                    continue
                result = self._rates.update(key, (metric, name), value, mono, start=start, modulus=COUNTER64)
                if result.rate is None:
                    missing[f"{metric}{{interface={name}}}"] = f"{result.status} reading"
                    complete = False
                    continue
                total += result.rate
                out.append(Sample(metric, result.rate, now, {"interface": name}))
            if complete:
                out.append(Sample(metric, total, now))
            else:
                missing[metric] = "total left out: some interfaces have no rate this poll"

    def _generic(self, key: str, metric: str, spec: OidSpec, index: str | None, tag: int, value: object, mono: float,
                 start: float | None, now: float, out: list[Sample], missing: dict[str, str]) -> None:
        label = f"{metric}{{index={index}}}" if index is not None else metric
        labels = {"index": index} if index is not None else {}
        number = _number(tag, value)
        if number is None:
            missing[label] = f"{spec.oid}{'.' + index if index else ''}: " + (
                EXCEPTION_NAMES.get(tag) or f"not a number (tag 0x{tag:02x})")
            return
        if spec.type == "gauge":
            out.append(Sample(metric, number * spec.scale, now, labels))
            return
        result = self._rates.update(key, ("oid", metric, index), number, mono, start=start, modulus=_MODULUS.get(tag))
        if result.rate is None:
            missing[label] = f"{result.status} reading"
            return
        rate = result.rate * spec.scale
        if spec.max_rate is not None and rate > spec.max_rate:
            missing[label] = f"rate {rate:g}/s above max_rate {spec.max_rate:g}: taken as a counter reset"
            return
        out.append(Sample(metric, rate, now, labels))


_ERROR_STATUS = {1: "tooBig", 2: "noSuchName", 3: "badValue", 4: "readOnly", 5: "genErr", 6: "noAccess",
                 16: "authorizationError"}


def _error_status(answer: Pdu, request: Request) -> CollectorError:
    name = _ERROR_STATUS.get(answer.error_status, str(answer.error_status))
    where = ""
    if 0 < answer.error_index <= len(request.oids):
        where = f" at {oid_text(request.oids[answer.error_index - 1])}"
    if name == "authorizationError":
        return CollectorError(f"agent refuses access{where} (authorizationError): the user's view is too narrow",
                              reason="authorization")
    return CollectorError(f"agent answered error-status {name}{where}", reason=f"snmp_{name}")
