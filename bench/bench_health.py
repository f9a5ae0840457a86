"""Benchmark member health: the checker's CPU at scale, and failure → next hop out of the FIB in the lab.

1. `health_checker_cpu`: the real HealthChecker (store, rounds, SocketProber) checking 2,000 members
   every 0.5 s for --seconds, against one HAProxy answering its monitor-uri on every loopback address
   of a namespace made for the run (members 127.0.x.y, checked from inside that namespace). Value:
   the scaler process's CPU time per wall second (1.0 = one core), reference 1.0 (the aim: within one
   core). Also the checks done and how many failed.
2. `health_detection_<kind>[_bgp]`: the scaler process on the lab (kernel or bgp router, 3 members, 100 requests/s
   of short requests + 4 keep-alive clients), --failures failures of each kind — HAProxy killed,
   HAProxy frozen (SIGSTOP), the instance dropping everything with its link up (nftables) — each
   timed from the failure to the next hop gone from the router's FIB (polled every 5 ms); p50 and p99,
   with failed requests per failure. The pool is back to 3 (replacement in service) before the next.

Writes one JSON file per benchmark to --out. Only loopback and the lab's own addresses are used.

    python bench/bench_health.py --out bench/results [--failures 10] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchinfo import machine
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from scaler.config import PoolConfig
from scaler.health import HealthChecker
from scaler.store import MemberState, Store

MEMBERS = 2000
PORT = 8405


def write(out: Path, name: str, doc: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"name": name, **doc, "machine": machine()}
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


# --- 1. checker CPU ---------------------------------------------------------------------------------

def start_haproxy(ns: str, tmp: Path) -> subprocess.Popen[bytes]:
    """A namespace with lo up and one HAProxy answering /healthz on every loopback address."""
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(f"global\n    maxconn 8000\ndefaults\n    mode http\n    timeout connect 1s\n"
                   f"    timeout client 5s\n    timeout server 5s\nfrontend health\n    bind *:{PORT}\n"
                   f"    monitor-uri /healthz\n")
    return subprocess.Popen(["ip", "netns", "exec", ns, "haproxy", "-f", str(cfg), "-db"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_haproxy(ns: str, tmp: Path, haproxy: subprocess.Popen[bytes] | None) -> None:
    if haproxy is not None:
        haproxy.terminate()
        haproxy.wait(10)
    subprocess.run(["ip", "netns", "del", ns], check=False)
    subprocess.run(["rm", "-rf", str(tmp)], check=False)


async def checker_cpu(seconds: float, out: Path) -> None:
    ns = f"sclhb{secrets.token_hex(2)}"
    tmp = Path(tempfile.mkdtemp(prefix="scaler-health-bench-"))
    haproxy = None
    try:
        haproxy = start_haproxy(ns, tmp)
        store = Store(f"sqlite:///{tmp}/s.db")
        store.migrate()
        store.ensure_pool("web", "198.19.0.1", 0)
        op = store.start_scale_out("web", MEMBERS, 0, "bench", time.time())
        with store.session() as s:
            rows = s.exec(text("SELECT id FROM members WHERE op_id = :op").bindparams(op=op.id)).all()
            for i, (mid,) in enumerate(rows):
                addr = f"127.0.{1 + i // 250}.{1 + i % 250}"
                eps = json.dumps({"health_url": f"http://{addr}:{PORT}/healthz", "health_netns": ns})
                s.exec(text("UPDATE members SET state = :st, address = :a, endpoints = :e WHERE id = :id")
                       .bindparams(st=str(MemberState.IN_SERVICE), a=addr, e=eps, id=mid))
            s.commit()
        store.finish_operation(op.id, "done", time.time())  # type: ignore[arg-type]
        pool = PoolConfig.model_validate({"vip": "198.19.0.1", "health": {"interval": "500ms", "timeout": "500ms"}})
        registry = CollectorRegistry()

        async def reroute() -> None:
            return None

        checker = HealthChecker(store, {"web": pool}, registry, reroute=reroute, wake=lambda: None)
        await asyncio.sleep(0.5)                        # HAProxy up
        checker.start()
        await asyncio.sleep(2.0)                        # warm up: every member checked a few times
        ok0 = registry.get_sample_value("scaler_health_checks_total", {"pool": "web", "result": "ok"}) or 0
        cpu0, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, t1 = time.process_time(), time.monotonic()
        ok1 = registry.get_sample_value("scaler_health_checks_total", {"pool": "web", "result": "ok"}) or 0
        fail = registry.get_sample_value("scaler_health_checks_total", {"pool": "web", "result": "fail"}) or 0
        await checker.stop()
        store.close()
        cores = (cpu1 - cpu0) / (t1 - t0)
        write(out, "health_checker_cpu", {
            "value": round(cores, 3), "unit": "cores", "reference": 1.0, "ratio": round(cores / 1.0, 3),
            "members": MEMBERS, "interval_s": 0.5, "seconds": round(t1 - t0, 1),
            "checks_per_s": round((ok1 - ok0) / (t1 - t0)), "expected_checks_per_s": MEMBERS / 0.5,
            "failed_checks": fail,
            "note": "reference: the aim of one core; checks against one HAProxy on 2,000 loopback addresses"})
    finally:
        stop_haproxy(ns, tmp, haproxy)


# --- 2. detection in the lab -------------------------------------------------------------------------

POLICY = """\
pools:
  web:
    min: 3
    max: 3
    inputs:
      sessions: {source: haproxy, metric: current_sessions, aggregate: avg}
    rules:
      - {name: busy, input: sessions, above: 100000, for: 10s, adjust: +1}
"""


async def detection(failures: int, out: Path, router: str = "kernel") -> None:
    from actuators.lab.orchestrator import InstancePaths, instance_ns, read_pidfile
    from actuators.linux import netns
    from scaler.lab.demo import ServiceProcess, fib_next_hops, free_port, write_config
    from scaler.lab.network import LabConfig, LoadRun, lab_down, lab_up

    lab = LabConfig(name=f"sclb{secrets.token_hex(1)}", backend_delay_ms=5, router=router)  # type: ignore[arg-type]
    await lab_down(lab)
    await lab_up(lab)
    svc = None
    try:
        policy = lab.lab_dir / "bench-policy.yaml"
        policy.write_text(POLICY)
        port = free_port()
        health = {"interval": "200ms", "timeout": "200ms", "fall": 3, "rise": 2, "replace_after": "500ms"}
        config = write_config(lab, port, policy=policy, overrides={"intervals.reconcile": "300ms",
                                                                   "pools.web.health": health})
        svc = ServiceProcess(config, port)
        await svc.start()

        async def settled() -> list[dict[str, Any]]:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                pool = await svc.get("/v1/pools/web")
                ms = pool["members"]
                if pool["operation"] is None and [m["state"] for m in ms] == ["in_service"] * 3:
                    fib = await fib_next_hops(lab.router_ns, str(lab.vip))
                    if fib == {m["address"] for m in ms}:
                        return list(ms)
                await asyncio.sleep(0.2)
            raise RuntimeError(f"pool did not settle:\n{svc.tail()}")

        load = await LoadRun(lab, short_rps=100, keepalive_clients=4, keepalive_pause_ms=100,
                             max_seconds=3600, timeout_s=1.0, retry=False).start()
        try:
            for kind in ("kill", "freeze", "drop"):
                times: list[float] = []
                failed: list[int] = []
                for _ in range(failures):
                    members = await settled()
                    await asyncio.sleep(1.5)
                    before = (await load.next_tick() or {}).get("total", {}).get("failed", 0)
                    victim = members[0]
                    pid = read_pidfile(InstancePaths(lab.lab_dir, victim["instance"]).haproxy_pid)
                    assert pid
                    t0 = time.monotonic()
                    if kind == "kill":
                        os.kill(pid, signal.SIGKILL)
                    elif kind == "freeze":
                        os.kill(pid, signal.SIGSTOP)
                    else:
                        rules = ("table inet dead {\n  chain in { type filter hook input priority 0; policy drop; }\n"
                                 "  chain out { type filter hook output priority 0; policy drop; }\n}\n")
                        await netns.run(["nft", "-f", "-"], ns=instance_ns(lab.name, victim["instance"]),
                                        stdin=rules.encode())
                    while victim["address"] in await fib_next_hops(lab.router_ns, str(lab.vip)):
                        if time.monotonic() - t0 > 10:
                            raise RuntimeError(f"{kind}: not withdrawn in 10 s:\n{svc.tail()}")
                        await asyncio.sleep(0.005)
                    times.append(time.monotonic() - t0)
                    await asyncio.sleep(2.5)            # in-flight requests time out (1 s client timeout)
                    after = (await load.next_tick() or {}).get("total", {}).get("failed", 0)
                    failed.append(after - before)
                    if kind == "freeze":                # only now: a resumed HAProxy would still answer
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGCONT)
                    print(f"{kind}: {times[-1] * 1000:.0f} ms, {failed[-1]} failed requests", flush=True)
                qs = statistics.quantiles(times, n=100, method="inclusive")
                name = f"health_detection_{kind}" + ("" if router == "kernel" else f"_{router}")
                write(out, name, {"router": router,
                    "value": round(statistics.median(times), 3), "unit": "s",
                    "p50_s": round(statistics.median(times), 3),
                    "p99_s": round(qs[98], 3), "max_s": round(max(times), 3), "failures": len(times),
                    "failed_requests_per_failure": failed, "failed_requests_median": statistics.median(failed),
                    "load": "100 short requests/s + 4 keep-alive clients, 1 s client timeout",
                    "health": health, "detection_bound_s": 0.2 * 3 + 0.2,
                    "aim": "p50 <= 1 s, p99 <= 1.5 s (kernel router); p50 <= 1.5 s (bgp)"})
        finally:
            await load.stop()
    finally:
        if svc is not None:
            await svc.stop()
        for pidfile in lab.lab_dir.rglob("haproxy.pid"):
            pid = read_pidfile(pidfile)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        await lab_down(lab)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--failures", type=int, default=10, help="failures of each kind")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds of the CPU benchmark")
    ap.add_argument("--only", choices=["cpu", "detection"])
    ap.add_argument("--router", choices=["kernel", "bgp", "both"], default="both",
                    help="router driver(s) of the detection benchmark")
    args = ap.parse_args()
    if args.only in (None, "cpu"):
        await checker_cpu(args.seconds, args.out)
    if args.only in (None, "detection"):
        for router in (["kernel", "bgp"] if args.router == "both" else [args.router]):
            await detection(args.failures, args.out, router)


if __name__ == "__main__":
    asyncio.run(main())
