"""The demo and the end-to-end scenarios: lab up, scaler started as a real process on the example
config, load through the VIP, timeline printed, lab down. `scale` (the default): the pool scales
1 → 2+ and back to 1. `health`: one of three members dies and is withdrawn and replaced.

`Scenario` records what it observed (every FIB check, load totals per phase, the timeline) without
judging it; `scaler demo` prints it and the integration tests assert on it. The FIB is read with
`ip -j` in the router namespace, independently of the scaler's own netlink code and of FRR.

The lab's router kind picks the router driver: `kernel` (a resilient nexthop group programmed over
netlink) or `bgp` (ExaBGP in the lab's ctl namespace announcing to FRR in the router). They differ
in what a change costs established flows (docs/lab.md): the kernel driver moves none, so its
scenario must not fail a single request; with BGP, plain ECMP rehashes about half of the flows
when a member is added and a withdraw resets what the removed member still carries, so its
scenario reports those failures (count and kind, per phase) instead of requiring zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from ruamel.yaml import YAML

from actuators.lab.orchestrator import InstancePaths, LabOrchestrator, lab_snmp_secrets, read_pidfile
from actuators.linux import netns
from scaler.lab.network import LabConfig, LoadRun, RouterKind, lab_down, lab_up

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
ROUTED = {"announcing", "in_service", "draining", "withdrawn"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fib_next_hops(router_ns: str, vip: str) -> set[str]:
    """The VIP's next hops as the router's kernel holds them (nexthop group or plain multipath)."""
    _, out, _ = await netns.run(["ip", "-j", "route", "show", "exact", f"{vip}/32"], ns=router_ns)
    routes = json.loads(out or "[]")
    hops: set[str] = set()
    for r in routes:
        if "nhid" in r:
            _, nh_out, _ = await netns.run(["ip", "-j", "nexthop", "show"], ns=router_ns)
            objs = {n["id"]: n for n in json.loads(nh_out or "[]")}
            group = objs.get(r["nhid"], {})
            for g in group.get("group", []):
                gw = objs.get(g["id"], {}).get("gateway")
                if gw:
                    hops.add(gw)
            if group.get("gateway"):
                hops.add(group["gateway"])
        for nh in r.get("nexthops", []):
            hops.add(nh["gateway"])
        if r.get("gateway"):
            hops.add(r["gateway"])
    return hops


def write_config(lab: LabConfig, port: int, *, policy: Path | None = None,
                 overrides: dict[str, Any] | None = None) -> Path:
    """The example config adapted to this lab: store, policies and API port in the lab directory.

    `overrides` maps dotted keys to values ("pools.web.drain_timeout": "30s").
    """
    d = lab.lab_dir / "scaler"
    (d / "policies").mkdir(parents=True, exist_ok=True)
    yaml = YAML(typ="rt")
    doc = yaml.load((EXAMPLES / "scaler.yaml").read_text())
    doc["store"]["url"] = f"sqlite:///{d}/scaler.db"
    doc["api"]["port"] = port
    opts = doc["orchestrator"]["options"]
    opts["lab"], opts["dir"], opts["backend_delay_ms"] = lab.name, str(lab.lab_dir), lab.backend_delay_ms
    opts["keepalive_timeout_s"] = lab.keepalive_timeout_s
    if lab.router == "bgp":
        doc["router"] = {"driver": "bgp", "options": lab.bgp_router_options()}
        # Members hand stray packets to the member that owns the connection (actuators/handoff.py),
        # so neither the scale-out's rehash nor the scale-in's withdraw resets a flow.
        # SCALER_DEMO_HANDOFF=0 shows the resets without it.
        if os.environ.get("SCALER_DEMO_HANDOFF", "1") == "1":
            opts["handoff"] = True
            opts["handoff_transport"] = os.environ.get("SCALER_DEMO_HANDOFF_TRANSPORT", "bridge")
    else:
        doc["router"]["options"]["netns"] = lab.router_ns
    snmp = doc["collectors"].get("snmp")
    if snmp is not None:
        for key, path in lab_snmp_secrets(lab.lab_dir).items():
            if key in snmp["options"]:
                snmp["options"][key] = {"file": str(path)}
    doc["pools"]["web"]["vip"] = str(lab.vip)
    for dotted, value in (overrides or {}).items():
        node = doc
        *parents, last = dotted.split(".")
        for k in parents:
            node = node[k]
        node[last] = value
    with (d / "scaler.yaml").open("w") as f:
        yaml.dump(doc, f)
    shutil.copy(policy or EXAMPLES / "policies" / "web.yaml", d / "policies" / "web.yaml")
    return d / "scaler.yaml"


class ServiceProcess:
    """`python -m scaler run` as a child process, its output in a log file."""

    def __init__(self, config: Path, port: int) -> None:
        self.config, self.port = config, port
        self.log = config.parent / "scaler.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.base = f"http://127.0.0.1:{port}"

    async def start(self, timeout_s: float = 30) -> None:
        out = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "scaler", "run", "-c", str(self.config), stdout=out, stderr=out,
                stdin=asyncio.subprocess.DEVNULL)
        finally:
            os.close(out)
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=1) as c:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"scaler exited {self.proc.returncode}:\n{self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await c.get(self.base + "/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"scaler did not become healthy in {timeout_s}s:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-n:])
        except OSError:
            return "(no log)"

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()

    async def get(self, path: str) -> Any:
        async with httpx.AsyncClient(timeout=5) as c:
            r = await c.get(self.base + path)
            r.raise_for_status()
            return r.json()


@dataclass
class Check:
    """One comparison of the router's FIB with the scaler's members."""

    t: float
    fib: set[str]
    serving: set[str]
    problem: str | None


@dataclass
class Scenario:
    lab: LabConfig
    service: ServiceProcess
    pool: str = "web"
    out: Callable[[str], None] = print
    t0: float = field(default_factory=time.monotonic)
    checks: list[Check] = field(default_factory=list)
    sizes: list[tuple[float, int]] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    alive: int = 0
    _event_id: int = 0
    _last_decision: tuple[str, float, int] | None = None

    def say(self, line: str) -> None:
        stamped = f"[{time.monotonic() - self.t0:6.1f}s] {line}"
        self.timeline.append(stamped)
        self.out(stamped)

    async def members(self) -> dict[str, tuple[str, str | None, str]]:
        pool = await self.service.get(f"/v1/pools/{self.pool}")
        return {m["instance"]: (m["state"], m["address"], m.get("health", "unknown")) for m in pool["members"]}

    async def check_fib(self) -> Check:
        """FIB hops must be routable members; every member in service (before and after) must be in it.

        The member list is read before and after the FIB, so a transition during the read is never
        a false problem: a hop is stray only if its member was in no routed state (announcing …
        withdrawn) in either list, and missing only if its member was in service (and not found down
        by its health checks) in both lists. This
        holds for both drivers because each reports a change in `status()` only once it is in the FIB:
        the kernel driver when netlink acknowledges it, the bgp driver `settle_s` (0.3 s) after ExaBGP
        acknowledged it, while FRR
        installs it ~80 ms after that acknowledgement. So `in_service` (set when status shows the
        hop) implies the hop is in the FIB, and `deleting` (set when status no longer shows it)
        implies it is gone. The withdraw itself is sent only after the member is stored as
        `withdrawn`, so a draining member's hop is never stray (it may or may not still be in the
        group: the resilient mode keeps it at weight 1, the conntrack mode takes it out at once).
        """
        before = await self.members()
        fib = await fib_next_hops(self.lab.router_ns, str(self.lab.vip))
        after = await self.members()
        addr_state: dict[str, set[str]] = {}
        for snap in (before, after):
            for state, addr, _ in snap.values():
                if addr:
                    addr_state.setdefault(addr, set()).add(state)
        stray = {a for a in fib if not addr_state.get(a, set()) & ROUTED}
        # A member that started draining between the two reads may be out of the VIP's group already
        # (the kernel driver's conntrack mode takes it out at once; its pinned flows use its own
        # table): only members in service in both reads must be in the group.
        must = {a for name, (s, a, h) in before.items() if s == "in_service" and a and h != "down"
                and after.get(name, ("", None, ""))[0] == "in_service"
                and after.get(name, ("", None, ""))[2] != "down"}
        missing = must - fib
        problem = None
        if stray or missing:
            problem = (f"FIB {sorted(fib)} vs members {before} / {after}: stray {sorted(stray)}, "
                       f"missing {sorted(missing)}")
        serving = {a for s, a, _ in after.values() if s == "in_service" and a}
        c = Check(time.monotonic() - self.t0, fib, serving, problem)
        self.checks.append(c)
        size = sum(1 for s, _, _ in after.values() if s in ("creating", "booting", "healthy", "announcing",
                                                         "in_service"))
        self.alive = len(after)     # members not deleted yet
        if not self.sizes or self.sizes[-1][1] != size:
            self.sizes.append((c.t, size))
        if problem:
            self.say(f"FIB CHECK FAILED: {problem}")
        return c

    async def print_news(self) -> None:
        for e in await self.service.get(f"/v1/events?pool={self.pool}&after={self._event_id}"):
            self._event_id = e["id"]
            self.say(f"{e['kind']:<12} {e['message']}")
        decisions = await self.service.get(f"/v1/pools/{self.pool}/decisions?limit=1")
        if not decisions:
            return
        d, now = decisions[0], time.monotonic()
        # Holds repeat every evaluation: print one when its kind changes, or every 10 s.
        key = f"{d['outcome']} {d['reason'].split(':')[0]}"
        last = self._last_decision
        if last is not None and last[2] == d["id"]:
            return
        if d["outcome"] != "hold" or last is None or last[0] != key or now - last[1] > 10:
            inputs = ", ".join(f"{k}={v:.1f}" if v is not None else f"{k}=none" for k, v in d["inputs"].items())
            self.say(f"decision     {d['outcome']} ({d['current']} → {d['desired']}) [{inputs}]: {d['reason']}")
            self._last_decision = (key, now, d["id"])

    async def watch_until(self, cond: Callable[[], bool], timeout_s: float, load: LoadRun | None = None,
                          what: str = "") -> bool:
        deadline = time.monotonic() + timeout_s
        last_load = 0
        while time.monotonic() < deadline:
            await self.check_fib()
            await self.print_news()
            if load is not None and len(load.ticks) >= last_load + 5:
                last_load = len(load.ticks)
                tot = load.totals()
                fails = f" {tot['failures']}" if tot["failures"] else ""
                self.say(f"load         {tot['ok']} ok, {tot['failed']} failed{fails}, by LB {tot['by_lb']}")
            if cond():
                return True
            await asyncio.sleep(0.5)
        self.say(f"gave up waiting for {what} after {timeout_s:.0f}s")
        return False

    def size(self) -> int:
        return self.sizes[-1][1] if self.sizes else 0


def describe_failures(phase: dict[str, Any]) -> str:
    """`12 failed (reset 9, eof 3)`, or `0 failed`."""
    kinds = ", ".join(f"{k} {v}" for k, v in sorted((phase.get("failures") or {}).items(), key=lambda kv: -kv[1]))
    return f"{phase.get('failed', 0)} failed" + (f" ({kinds})" if kinds else "")


@dataclass
class ScenarioResult:
    scaled_out_to: int
    final_size: int
    high: dict[str, Any]
    low: dict[str, Any]
    checks: list[Check]
    timeline: list[str]
    router: RouterKind = "kernel"
    # Seconds: first_in_service (scaler started → first member in service), scale_out (high load
    # on → a second member in service), scale_in (low load on → one member left, one FIB hop).
    times: dict[str, float] = field(default_factory=dict)

    @property
    def fib_problems(self) -> list[str]:
        return [c.problem for c in self.checks if c.problem]

    @property
    def failed_requests_allowed(self) -> bool:
        """With BGP, adding a member rehashes about half of the established flows and a withdraw resets
        the removed member's: failed requests are reported, not a failure of the scenario."""
        return self.router == "bgp"

    @property
    def ok(self) -> bool:
        scaled = self.scaled_out_to >= 2 and self.final_size == 1 and not self.fib_problems
        if self.failed_requests_allowed:
            return scaled
        return scaled and self.low.get("failed", 1) == 0 and self.high.get("failed", 1) == 0

    def summary(self) -> str:
        times = ", ".join(f"{k.replace('_', ' ')} {v:.1f}s" for k, v in self.times.items())
        return (f"router {self.router}: scaled out to {self.scaled_out_to}, back to {self.final_size}; "
                f"{len(self.checks)} FIB checks, {len(self.fib_problems)} problems; {times}\n"
                f"requests: high phase {self.high.get('ok', 0)} ok, {describe_failures(self.high)}; "
                f"scale-in phase {self.low.get('ok', 0)} ok, {describe_failures(self.low)}")


def _phase(total: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """The counts of `total` since `before` (both cumulative)."""
    out: dict[str, Any] = {k: total.get(k, 0) - before.get(k, 0) for k in ("ok", "failed", "retried")}
    earlier = before.get("failures", {})
    out["failures"] = {k: v - earlier.get(k, 0) for k, v in total.get("failures", {}).items()
                       if v - earlier.get(k, 0)}
    return out


async def run_scenario(lab: LabConfig, *, out: Callable[[str], None] = print, high_rps: float = 100,
                       high_keepalive: int = 16, low_rps: float = 20, low_keepalive: int = 4,
                       timeout_s: float = 150) -> ScenarioResult:
    """Scale out under high load, then scale in under continuing low load (short + keep-alive)."""
    port = free_port()
    service = ServiceProcess(write_config(lab, port), port)
    sc = Scenario(lab, service, out=out)
    await service.start()
    sc.say(f"scaler running (pid {service.proc.pid if service.proc else '?'}, API {service.base}, "
           f"router {lab.router}, log {service.log})")
    high: dict[str, Any] = {}
    low: dict[str, Any] = {}
    times: dict[str, float] = {}
    peak = 0
    try:
        t = time.monotonic()
        if await sc.watch_until(lambda: bool(sc.checks and len(sc.checks[-1].serving) == 1), 60,
                                what="the first member in service"):
            times["first_in_service"] = time.monotonic() - t
        sc.say(f"load         HIGH: {high_rps:g} new connections/s + {high_keepalive} keep-alive clients")
        load = LoadRun(lab, short_rps=high_rps, keepalive_clients=high_keepalive, max_seconds=2 * timeout_s + 60,
                       retry=False)
        await load.start()
        try:
            t = time.monotonic()
            if await sc.watch_until(lambda: bool(sc.checks and len(sc.checks[-1].serving) >= 2), timeout_s,
                                    load, "scale-out"):
                times["scale_out"] = time.monotonic() - t
            peak = max(n for _, n in sc.sizes)
            # What the new member's arrival costs (BGP: the rehash resets moved flows) shows in the
            # next stats lines: count it in the high phase.
            for _ in range(2):
                with contextlib.suppress(TimeoutError):
                    await load.next_tick()
            high = load.totals()
            sc.say(f"load         LOW: {low_rps:g} new connections/s + {low_keepalive} keep-alive clients "
                   f"(high phase: {high['ok']} ok, {describe_failures(high)})")
            await load.set(short_rps=low_rps, keepalive_clients=low_keepalive)
            t = time.monotonic()
            if await sc.watch_until(lambda: sc.size() == 1 and sc.alive == 1 and bool(sc.checks)
                                    and len(sc.checks[-1].fib) == 1, timeout_s, load, "scale-in"):
                times["scale_in"] = time.monotonic() - t
            peak = max(peak, *(n for _, n in sc.sizes))
        finally:
            summary = await load.stop()
        total = summary if summary.get("type") == "summary" else load.totals()
        low = _phase(total, high)
        sc.say(f"load         stopped: {total.get('ok')} ok, {total.get('failed')} failed in all; "
               f"scale-in phase {low['ok']} ok, {describe_failures(low)}")
        await sc.print_news()
    finally:
        await service.stop()
    return ScenarioResult(peak, sc.size(), high, low, sc.checks, sc.timeline, router=lab.router, times=times)


HEALTH_POLICY = """\
# The health demo's policy: a fixed size of 3, so the only change is the replacement of a dead member.
pools:
  web:
    min: 3
    max: 3
    inputs:
      sessions: {source: haproxy, metric: current_sessions, aggregate: avg}
    rules:
      - {name: busy, input: sessions, above: 100000, for: 1m, adjust: +1}
"""


@dataclass
class HealthResult:
    """What the health scenario saw: the dead member's next hop leaving the FIB, and the pool back."""

    victim: str
    withdrawn_after_s: float | None
    detection_s: float
    back_to: int
    deleted: bool
    load: dict[str, Any]
    checks: list[Check]
    timeline: list[str]

    @property
    def fib_problems(self) -> list[str]:
        return [c.problem for c in self.checks if c.problem]

    @property
    def ok(self) -> bool:
        return (self.withdrawn_after_s is not None and self.back_to == 3 and self.deleted
                and not self.fib_problems)

    def summary(self) -> str:
        took = f"{self.withdrawn_after_s * 1000:.0f} ms" if self.withdrawn_after_s is not None else "never"
        return (f"HAProxy of {self.victim} killed: its next hop left the FIB after {took} (detection "
                f"{self.detection_s * 1000:.0f} ms = interval x fall + timeout), pool back to {self.back_to}, "
                f"dead instance {'deleted' if self.deleted else 'NOT deleted'}; {len(self.checks)} FIB checks, "
                f"{len(self.fib_problems)} problems; requests {self.load.get('ok', 0)} ok, "
                f"{describe_failures(self.load)} (the dead member's flows, before its withdrawal)")


async def run_health_scenario(lab: LabConfig, *, out: Callable[[str], None] = print,
                              timeout_s: float = 90) -> HealthResult:
    """Three members under load; one HAProxy is killed; its next hop leaves the FIB, a replacement
    comes into service and the dead instance is deleted. Every event is printed as it happens."""
    policy = lab.lab_dir / "health-demo-policy.yaml"
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text(HEALTH_POLICY)
    health = {"interval": "200ms", "timeout": "200ms", "fall": 3, "rise": 2, "replace_after": "2s"}
    port = free_port()
    service = ServiceProcess(write_config(lab, port, policy=policy, overrides={
        "intervals.reconcile": "500ms", "pools.web.health": health}), port)
    sc = Scenario(lab, service, out=out)
    await service.start()
    sc.say(f"scaler running (pid {service.proc.pid if service.proc else '?'}, API {service.base}, "
           f"router {lab.router}, health checks every 200ms, fall 3, replace after 2s)")
    victim, took, deleted = "", None, False
    load_totals: dict[str, Any] = {}
    try:
        await sc.watch_until(lambda: bool(sc.checks and len(sc.checks[-1].serving) == 3), timeout_s,
                             what="three members in service")
        load = LoadRun(lab, short_rps=50, keepalive_clients=4, max_seconds=2 * timeout_s, timeout_s=1.0,
                       retry=False)
        await load.start()
        try:
            members = await sc.members()
            victim, (_, address, _) = next(iter(sorted(members.items())))
            pid = read_pidfile(InstancePaths(lab.lab_dir, victim).haproxy_pid)
            sc.say(f"failure      {victim}: HAProxy killed (SIGKILL, pid {pid}); its next hop {address} is "
                   f"still in the FIB")
            if pid:
                os.kill(pid, signal.SIGKILL)
            t = time.monotonic()
            while address in await fib_next_hops(lab.router_ns, str(lab.vip)):
                if time.monotonic() - t > 10:
                    break
                await asyncio.sleep(0.01)
            else:
                took = time.monotonic() - t
                sc.say(f"fib          {address} gone from the router's FIB {took * 1000:.0f} ms after the kill")
            await sc.watch_until(lambda: sc.size() == 3 and sc.alive == 3 and bool(sc.checks)
                                 and len(sc.checks[-1].fib) == 3, timeout_s, load, "the replacement")
        finally:
            summary = await load.stop()
        load_totals = summary if summary.get("type") == "summary" else load.totals()
        await sc.print_news()
        deleted = victim not in {i.name for i in await LabOrchestrator(lab.orchestrator_config()).list("web")}
    finally:
        await service.stop()
    return HealthResult(victim, took, 0.2 * 3 + 0.2, sc.size(), deleted, load_totals, sc.checks, sc.timeline)


async def demo(router: RouterKind = "kernel", keep: bool = False, name: str = "scl",
               scenario: Literal["scale", "health"] = "scale") -> int:
    if os.geteuid() != 0:
        print("scaler demo needs root (network namespaces)", file=sys.stderr)
        return 2
    lab = LabConfig(name=name, backend_delay_ms=20, router=router)
    await lab_down(lab)                 # whatever a crashed earlier run left behind
    await lab_up(lab)
    where = (f"the scaler's ExaBGP in {lab.ctl_ns} announces the VIP to FRR in {lab.router_ns}"
             if router == "bgp" else f"a resilient nexthop group in {lab.router_ns}")
    print(f"lab {lab.name} up: client → router → LB namespaces, VIP {lab.vip}; router: {where}")
    result: ScenarioResult | HealthResult | None = None
    try:
        result = await (run_health_scenario(lab) if scenario == "health" else run_scenario(lab))
    finally:
        if not keep:
            report = await lab_down(lab)
            print(f"lab down: {report}")
    print()
    print(result.summary())
    if isinstance(result, ScenarioResult) and result.failed_requests_allowed and (
            result.high.get("failed") or result.low.get("failed")):
        print("(BGP has no weights: adding a member rehashes about half of the established flows and a "
              "withdraw resets the connections left on the removed one; the kernel driver breaks none)")
    print("DEMO OK" if result.ok else "DEMO FAILED")
    return 0 if result.ok else 1
