"""Benchmark: client CPU of the `snmp` collector vs stock pysnmp, against a real snmpd on loopback.

Starts snmpd (net-snmp) with `actuators.lab.snmpd` on 127.0.0.1 (a v2c community and a v3 user with
SHA-256 + AES-128), then measures in the same run, on the same agent and the same 10 OIDs:

1. client CPU (process time, so snmpd's own work is not counted) per 10-OID GET, v2c and v3
   authPriv: stock pysnmp hlapi (`get_cmd`, `lookupMib=False`, one long-lived SnmpEngine, the
   ObjectTypes built once — the cheapest stock usage; also reported with ObjectTypes built per call)
   vs our `Agent.request` and our whole `SnmpCollector.collect` (generic OID map of the same 10 OIDs:
   request, decode, samples). Values are cross-checked between the two.
2. where the time goes (cProfile, self time grouped by package) for both;
3. members one core can poll every 10 s with the cpu+memory+load presets (one 17-OID GET per member
   and poll, polled concurrently, 100 members in flight), for v2c and v3, and the stock-pysnmp
   equivalent (the same 17-OID GET through hlapi).

Writes `<out>/snmp.json` and prints it. Loopback only; about 30-60 s.

    python bench/bench_snmp.py --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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

from actuators.lab.snmpd import Snmpd, SnmpdCommunity, SnmpdConfig, SnmpdUser
from collectors.base import Target
from collectors.snmp.ber import GET, Pdu, encode_oid
from collectors.snmp.client import Agent, Request, SnmpClient, V2cSecurity, V3Security
from collectors.snmp.collector import CPU_RAW, LOAD, MEMORY, SYS_UPTIME, SnmpCollector, SnmpCollectorConfig
from collectors.snmp.usm import UsmUser, auth_protocol, priv_protocol

COMMUNITY = "bench-community"
USER, AUTH_KEY, PRIV_KEY = "bench", "bench-auth-key", "bench-priv-key"
# Ten scalars every net-snmp agent has.
TEN_OIDS = [
    SYS_UPTIME,
    CPU_RAW["user"], CPU_RAW["system"], CPU_RAW["idle"],
    MEMORY["total"], MEMORY["avail"], MEMORY["buffer"], MEMORY["cached"],
    LOAD["load1"], LOAD["load5"],
]
PRESET_OIDS = [SYS_UPTIME, *CPU_RAW.values(), *MEMORY.values(), *LOAD.values()]
CONCURRENCY = 100
POLL_INTERVAL_S = 10.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def cpu_per_call(fn: Callable[[], Awaitable[object]], *, min_calls: int, budget_s: float) -> tuple[float, int]:
    """Median over 5 batches of client CPU seconds per call, and the number of calls."""
    for _ in range(20):          # warm-up: caches, templates, engine discovery
        await fn()
    per_batch: list[float] = []
    calls = 0
    batch = max(min_calls // 5, 20)
    began = time.monotonic()
    while len(per_batch) < 5 or (time.monotonic() - began < budget_s and len(per_batch) < 15):
        t0 = time.process_time()
        for _ in range(batch):
            await fn()
        per_batch.append((time.process_time() - t0) / batch)
        calls += batch
    return statistics.median(per_batch), calls


def group_of(filename: str) -> str:
    for marker, name in (("pyasn1", "pyasn1"), ("pysnmp", "pysnmp"), ("cryptography", "cryptography"),
                         ("/asyncio/", "asyncio"), ("/collectors/", "collectors (ours)"), ("hmac", "hmac"),
                         ("hashlib", "hashlib")):
        if marker in filename:
            return name
    if filename.startswith("~") or filename == "<built-in>":
        return "builtins"
    return "other"


async def profiled(fn: Callable[[], Awaitable[object]], calls: int) -> dict[str, float]:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        await fn()
    profiler.disable()
    stats = pstats.Stats(profiler)
    totals: dict[str, float] = {}
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        group = group_of(filename)
        totals[group] = totals.get(group, 0.0) + tottime
    whole = sum(totals.values()) or 1.0
    return {k: round(100 * v / whole, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


async def members_per_core(make: Callable[[int], Callable[[], Awaitable[object]]], *, members: int,
                           rounds: int) -> dict[str, float]:
    """Poll `members` targets concurrently (CONCURRENCY in flight), `rounds` times; CPU per poll."""
    polls = [make(i) for i in range(members)]
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def one(poll: Callable[[], Awaitable[object]]) -> None:
        async with semaphore:
            await poll()

    await asyncio.gather(*(one(p) for p in polls))       # warm-up (v3 discovery per target)
    t0, w0 = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(one(p) for p in polls))
    cpu = (time.process_time() - t0) / (rounds * members)
    wall = (time.perf_counter() - w0) / rounds
    return {"cpu_ms_per_poll": round(cpu * 1000, 4), "members_per_core_every_10s": int(POLL_INTERVAL_S / cpu),
            "wall_s_per_round": round(wall, 3), "members": members, "rounds": rounds}


def write_secrets(directory: Path) -> Path:
    directory.mkdir(mode=0o700)
    for name, value in (("community", COMMUNITY), ("auth", AUTH_KEY), ("priv", PRIV_KEY)):
        (directory / name).write_text(value + "\n")
    return directory


async def run(args: argparse.Namespace, version: str) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-snmp-"))
    port = free_udp_port()
    snmpd = Snmpd(SnmpdConfig(directory=workdir, listen=[f"127.0.0.1:{port}"], snmpd_bin=args.snmpd,
                              communities=[SnmpdCommunity(COMMUNITY)],
                              users=[SnmpdUser(USER, AUTH_KEY, PRIV_KEY, "SHA-256", "AES")]))
    await snmpd.start()
    try:
        return await measure(port, version, write_secrets(workdir / "secrets"))
    finally:
        await snmpd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def measure(port: int, version: str, secret_files: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    # -- stock pysnmp ------------------------------------------------------------------------------
    engine = SnmpEngine()
    transport = await UdpTransportTarget.create(("127.0.0.1", port), timeout=1, retries=1)
    stock_auth = {
        "v2c": CommunityData(COMMUNITY, mpModel=1),
        "v3": UsmUserData(USER, AUTH_KEY, PRIV_KEY, authProtocol=usmHMAC192SHA256AuthProtocol,
                          privProtocol=usmAesCfb128Protocol),
    }
    ten = [ObjectType(ObjectIdentity(oid)) for oid in TEN_OIDS]
    presets = [ObjectType(ObjectIdentity(oid)) for oid in PRESET_OIDS]

    def stock_get(version: str, objects: list[ObjectType], eng: SnmpEngine = engine) -> Callable[[], Awaitable[Any]]:
        async def call() -> Any:
            error, status, _, binds = await get_cmd(eng, stock_auth[version], transport, ContextData(), *objects,
                                                    lookupMib=False)
            if error or status:
                raise RuntimeError(f"stock pysnmp: {error or status}")
            return binds
        return call

    # -- ours --------------------------------------------------------------------------------------
    client = SnmpClient()
    securities: dict[str, V2cSecurity | V3Security] = {
        "v2c": V2cSecurity(COMMUNITY.encode()),
        "v3": V3Security(UsmUser(USER, auth_protocol("SHA-256"), AUTH_KEY, priv_protocol("AES-128"), PRIV_KEY)),
    }
    ten_request = Request(GET, [encode_oid(o) for o in TEN_OIDS])
    credentials: dict[str, dict[str, Any]] = {
        "v2c": {"community": {"file": str(secret_files / "community")}},
        "v3": {"version": "v3", "user": USER, "auth_key": {"file": str(secret_files / "auth")},
               "priv_key": {"file": str(secret_files / "priv")}},
    }
    url = f"udp://127.0.0.1:{port}"

    def agent(version: str) -> Agent:
        return Agent(client, host="127.0.0.1", port=port, netns=None, security=securities[version], timeout_s=1,
                     retries=1)

    def collector(version: str, **extra: Any) -> SnmpCollector:
        return SnmpCollector(SnmpCollectorConfig.model_validate(credentials[version] | extra), client=client)

    oid_map = {f"m{i}": {"oid": oid} for i, oid in enumerate(TEN_OIDS)}
    per_get: dict[str, Any] = {}
    profiles: dict[str, Any] = {}
    for v in ("v2c", "v3"):
        stock = stock_get(v, ten)
        ours_agent = agent(v)
        ours_collector = collector(v, presets=[], oids=oid_map)
        target = Target(key="bench", url=url)

        async def ours_request(a: Agent = ours_agent) -> Pdu:
            return await a.request(ten_request)

        async def ours_collect(c: SnmpCollector = ours_collector, t: Target = target) -> object:
            return await c.collect(t)

        # Same answer both ways (values that do not move between two reads).
        stock_binds = await stock()
        ours_pdu = await ours_request()
        # memTotalReal (index 4) does not move; every OID must come back in the same order.
        if (int(stock_binds[4][1]) != ours_pdu.varbinds[4][2]
                or [str(b[0]) for b in stock_binds] != TEN_OIDS):
            raise SystemExit(f"{v}: stock pysnmp and our decoder disagree")
        stock_cpu, stock_calls = await cpu_per_call(stock, min_calls=300, budget_s=4)

        async def stock_fresh(ver: str = v) -> object:
            # The usual way to call it: ObjectTypes built for every request.
            return await stock_get(ver, [ObjectType(ObjectIdentity(oid)) for oid in TEN_OIDS])()

        fresh_cpu, _ = await cpu_per_call(stock_fresh, min_calls=200, budget_s=2)
        agent_cpu, agent_calls = await cpu_per_call(ours_request, min_calls=2000, budget_s=3)
        collect_cpu, collect_calls = await cpu_per_call(ours_collect, min_calls=2000, budget_s=3)
        per_get[v] = {
            "stock_pysnmp_ms": round(stock_cpu * 1000, 4),
            "stock_pysnmp_objects_per_call_ms": round(fresh_cpu * 1000, 4),
            "ours_request_ms": round(agent_cpu * 1000, 4),
            "ours_collect_ms": round(collect_cpu * 1000, 4),
            "ratio_request": round(stock_cpu / agent_cpu, 1),
            "ratio_collect": round(stock_cpu / collect_cpu, 1),
            "calls": {"stock": stock_calls, "request": agent_calls, "collect": collect_calls},
        }
        profiles[v] = {"stock_pysnmp": await profiled(stock, 200), "ours_collect": await profiled(ours_collect, 1000)}
        await ours_collector.close()

    # -- members per core ----------------------------------------------------------------------------
    capacity: dict[str, Any] = {}
    members = 500
    for v in ("v2c", "v3"):
        ours = collector(v, presets=["cpu", "memory", "load"])

        def make_ours(i: int, c: SnmpCollector = ours) -> Callable[[], Awaitable[object]]:
            t = Target(key=f"m{i}", url=url)
            return lambda: c.collect(t)

        capacity[f"ours_{v}"] = await members_per_core(make_ours, members=members, rounds=6)
        await ours.close()
        # Stock: one engine for all members (what a long-running service would keep), same GET.
        stock_engine = SnmpEngine()

        def make_stock(i: int, e: SnmpEngine = stock_engine, ver: str = v) -> Callable[[], Awaitable[object]]:
            return stock_get(ver, presets, e)

        capacity[f"stock_pysnmp_{v}"] = await members_per_core(make_stock, members=100, rounds=3)
        stock_engine.close_dispatcher()
        capacity[f"ratio_{v}"] = round(capacity[f"ours_{v}"]["members_per_core_every_10s"]
                                       / capacity[f"stock_pysnmp_{v}"]["members_per_core_every_10s"], 1)
    engine.close_dispatcher()
    await client.close()

    result.update({
        "name": "snmp_get_client_cpu",
        "description": ("client CPU per 10-OID SNMP GET against a real snmpd on loopback (process time, "
                        "median of batches): our SnmpCollector.collect (generic map of 10 OIDs) vs stock "
                        "pysnmp hlapi get_cmd (lookupMib=False, one long-lived SnmpEngine), v2c"),
        "value": per_get["v2c"]["ours_collect_ms"],
        "unit": "ms/GET",
        "reference": per_get["v2c"]["stock_pysnmp_ms"],
        "reference_name": "pysnmp hlapi get_cmd, lookupMib=False, one SnmpEngine",
        "ratio": per_get["v2c"]["ratio_collect"],
        "per_get": per_get,
        "profile_self_time_percent": profiles,
        "capacity": {
            "description": (f"collect() with presets cpu+memory+load (one {len(PRESET_OIDS)}-OID GET per member), "
                            f"{CONCURRENCY} in flight, every {POLL_INTERVAL_S:g} s, one core"),
            **capacity,
        },
        "snmpd": version,
        "pysnmp": __import__("pysnmp").__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
    })
    return result


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--snmpd", default=shutil.which("snmpd") or "/usr/sbin/snmpd")
    args = parser.parse_args()
    if not os.access(args.snmpd, os.X_OK):
        print(f"snmpd not found at {args.snmpd}", file=sys.stderr)
        return 2
    began = time.monotonic()
    version = subprocess.run([args.snmpd, "-v"], capture_output=True, text=True).stdout.split("\n")[1].strip()
    result = asyncio.run(run(args, version))
    result["elapsed_s"] = round(time.monotonic() - began, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "snmp.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(summary(result))
    return 0


def summary(result: dict[str, Any]) -> str:
    lines = ["", "client CPU per 10-OID GET (ms)   stock pysnmp   ours: request   ours: collect()   ratio"]
    for v, row in result["per_get"].items():
        lines.append(f"  {v:<31}{row['stock_pysnmp_ms']:>12.3f}{row['ours_request_ms']:>16.3f}"
                     f"{row['ours_collect_ms']:>18.3f}{row['ratio_collect']:>8.1f}x")
    cap = result["capacity"]
    lines.append("members one core polls every 10 s (cpu+memory+load presets):")
    for v in ("v2c", "v3"):
        lines.append(f"  {v}: ours {cap[f'ours_{v}']['members_per_core_every_10s']:,}  "
                     f"stock pysnmp {cap[f'stock_pysnmp_{v}']['members_per_core_every_10s']:,}  "
                     f"({cap[f'ratio_{v}']}x)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
