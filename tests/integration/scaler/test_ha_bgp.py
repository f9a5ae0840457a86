"""Three `scaler run` processes on one real PostgreSQL with the `bgp` router driver. Each scaler speaks
from its own address in the lab's ctl namespace (LabConfig.speakers) and FRR lists all three as
neighbors, with graceful restart; only the leader runs ExaBGP. SIGKILL the leader, then SIGSTOP the
next one: a follower takes over each time and the router's FIB keeps every next hop throughout (polled
every 20 ms, and `ip monitor route`): FRR keeps the former leader's paths as stale and uses them next
to the new leader's until its graceful-restart time runs out. Nothing is created twice.

Then a member dies and the leader withdraws it. What else could keep it in the FIB was measured here:
- the frozen leader's ExaBGP, a separate process, keeps its session and announces the frozen state
  for as long as the freeze lasts (the dead member stayed in the FIB until the end of the test) — the
  API bridge's watchdog now SIGKILLs it when the scaler sends nothing for `watchdog_s`;
- a former leader's stale paths are used in ECMP until its `graceful_restart_s` has passed since its
  speaker died (FRR does not prefer the live paths): a withdraw takes effect only then. Hence the
  short graceful-restart time here (README, "High availability").
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from actuators.errors import RouterError
from actuators.kernel import netlink as nl
from actuators.lab.orchestrator import InstancePaths, LabOrchestrator, read_pidfile
from scaler.lab.demo import ServiceProcess, fib_next_hops
from scaler.lab.frr import FRR_BIN
from scaler.lab.network import LabConfig, lab_down, lab_namespaces, lab_up
from tests.support.bgp_net import RouteMonitor, fib_netlink
from tests.support.ha import own_scaler_config, role, settled
from tests.support.wait import eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
    pytest.mark.skipif(not (FRR_BIN / "bgpd").exists(), reason=f"FRR is not installed ({FRR_BIN}/bgpd)"),
]

SCALERS = 3
LEASE = "1s"
# Covers a takeover (~2 s with a 1 s lease, the new speaker's replay included) with room to spare,
# and is short enough for the test to see a former leader's stale paths go (the default, 120 s, is
# for a lone scaler that restarts). A frozen scaler's ExaBGP is killed after WATCHDOG_S.
GRACEFUL_RESTART_S = 6
WATCHDOG_S = 2

POLICY = """\
pools:
  web:
    min: 3
    max: 3
    inputs:
      sessions: {source: haproxy, metric: current_sessions, aggregate: avg}
    rules:
      - {name: busy, input: sessions, above: 100000, for: 1m, adjust: +1}
"""


@pytest.fixture
async def lab() -> AsyncIterator[LabConfig]:
    while True:      # a name no other test's lab uses now (`sclq` is this file's prefix)
        cfg = LabConfig(name=f"sclq{secrets.token_hex(1)}", router="bgp", speakers=SCALERS)
        if not lab_namespaces(cfg) and not cfg.lab_dir.exists():
            break
    try:
        await lab_up(cfg)
        yield cfg
    finally:
        await lab_down(cfg)
        assert lab_namespaces(cfg) == []


def scaler_config(lab: LabConfig, db_url: str, i: int, policy: Path) -> tuple[Path, int]:
    """Scaler i: the lab's example config on PostgreSQL, the bgp driver speaking from speaker address i
    with its own ExaBGP directory, in its own directory with its own API port."""
    return own_scaler_config(lab, str(i), policy, {
        "intervals.reconcile": "300ms", "store.url": db_url, "ha": {"lease": LEASE},
        "router": {"driver": "bgp", "options": lab.bgp_router_options(i) | {
            "graceful_restart_s": GRACEFUL_RESTART_S, "watchdog_s": WATCHDOG_S}},
        "pools.web.health.replace_after": "60s"})


@dataclass
class FibWatch:
    """Reads the router's FIB every 10 ms in its own thread (one netlink dump, well under 1 ms; the
    test's event loop blocks now and then) and records each change of the VIP's next hops with its
    time; `gap_s` is the longest time between two reads."""

    lab: LabConfig
    seen: list[tuple[float, set[str]]] = field(default_factory=list)
    polls: int = 0
    gap_s: float = 0.0

    def start(self) -> None:
        self.client = nl.NetlinkClient(self.lab.router_ns)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last = time.monotonic()
        while not self.stopping.wait(0.01):
            try:
                hops = {str(h) for h in fib_netlink(self.client, self.lab.vip)}
            except RouterError:          # a dump interrupted by changes three times running: read again
                continue
            now = time.monotonic()
            self.polls += 1
            self.gap_s = max(self.gap_s, now - last)
            last = now
            if not self.seen or self.seen[-1][1] != hops:
                self.seen.append((now, hops))

    @property
    def now(self) -> set[str]:
        return self.seen[-1][1] if self.seen else set()

    def stop(self) -> list[tuple[float, set[str]]]:
        if hasattr(self, "thread") and self.thread.is_alive():
            self.stopping.set()
            self.thread.join(timeout=5)
            self.client.close()
        return self.seen


async def frr_paths(lab: LabConfig) -> list[tuple[str, str, bool]]:
    """The VIP's paths in FRR's BGP table: (peer, next hop, stale)."""
    data = await lab.frr().vtysh_json(f"show bgp ipv4 unicast {lab.vip}/32 json")
    out = []
    for p in data.get("paths", []):
        peer = str((p.get("peer") or {}).get("peerId", "?"))
        hop = str(((p.get("nexthops") or [{}])[0]).get("ip", "?"))
        out.append((peer, hop, bool(p.get("stale"))))
    return sorted(out)


async def test_bgp_takeover_keeps_every_path_and_a_frozen_leader_stops_announcing(
        lab: LabConfig, postgres_url: str) -> None:
    policy = lab.lab_dir / "ha-policies" / "web.yaml"
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text(POLICY)
    procs = [ServiceProcess(*scaler_config(lab, postgres_url, i, policy)) for i in range(SCALERS)]
    speaker = {id(p): str(lab.speaker_address(i)) for i, p in enumerate(procs)}
    watch = FibWatch(lab)
    t_start = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:6.2f}] {msg}")

    try:
        await asyncio.gather(*(p.start() for p in procs))
        await eventually(lambda: _one_leader(procs), timeout_s=20, interval_s=0.1, what="one leader",
                         detail=lambda: "\n".join(p.tail(10) for p in procs))
        first = await _leader(procs)
        members = await settled(first, 3)
        hops = {m["address"] for m in members}
        await eventually(lambda: _fib_is(lab, hops), timeout_s=10, what="the FIB has every member")
        orch = LabOrchestrator(lab.orchestrator_config())
        instances = {i.name for i in await orch.list("web")}
        assert len(instances) == 3
        # Only the leader speaks BGP: the followers run no ExaBGP.
        states = await lab.frr().neighbor_states()
        assert {a for a, st in states.items() if st == "Established"} == {speaker[id(first)]}, states

        with RouteMonitor(lab.router_ns) as monitor:
            watch.start()
            # 1. SIGKILL the leader: its ExaBGP dies with it (PDEATHSIG), FRR keeps its paths as stale.
            assert first.proc is not None
            t_kill = time.monotonic()
            first.proc.send_signal(signal.SIGKILL)
            await first.proc.wait()
            rest = [p for p in procs if p is not first]
            await eventually(lambda: _one_leader(rest), timeout_s=20, interval_s=0.05, what="takeover")
            second = await _leader(rest)
            say(f"takeover after SIGKILL: {time.monotonic() - t_kill:.2f} s")
            await eventually(lambda: _announced_by(lab, speaker[id(second)], hops), timeout_s=20,
                             what="the second leader's paths in FRR")
            say(f"the second leader's paths in FRR {time.monotonic() - t_kill:.2f} s after the SIGKILL; "
                f"the first's are stale: {await _stale_of(lab, speaker[id(first)])}")

            # 2. SIGSTOP the second leader. Its ExaBGP is another process and keeps its session until
            #    the bridge's watchdog (nothing from the scaler for watchdog_s) SIGKILLs it.
            assert second.proc is not None
            t_stop = time.monotonic()
            second.proc.send_signal(signal.SIGSTOP)
            third = next(p for p in rest if p is not second)
            await eventually(lambda: _is_leader(third), timeout_s=20, interval_s=0.05, what="takeover",
                             detail=third.tail)
            say(f"takeover after SIGSTOP: {time.monotonic() - t_stop:.2f} s")
            await eventually(lambda: _announced_by(lab, speaker[id(third)], hops), timeout_s=20,
                             what="the third leader's paths in FRR")
            say(f"the third leader's paths in FRR {time.monotonic() - t_stop:.2f} s after the SIGSTOP")
            await eventually(lambda: _not_established(lab, speaker[id(second)]), timeout_s=WATCHDOG_S + 10,
                             interval_s=0.05, what="the frozen leader's ExaBGP gone (watchdog)")
            say(f"the frozen leader's session is down {time.monotonic() - t_stop:.2f} s after the SIGSTOP "
                f"(watchdog {WATCHDOG_S} s); its paths are stale: {await _stale_of(lab, speaker[id(second)])}")

            # 3. A member dies: the leader withdraws it. Nobody else may keep it in the FIB — neither
            #    a frozen leader's speaker nor a former leader's stale paths beyond graceful_restart_s —
            #    while the dead member still exists (it is replaced only after replace_after).
            victim = next(m for m in members if m["address"] in hops)
            pid = read_pidfile(InstancePaths(lab.lab_dir, victim["instance"]).haproxy_pid)
            assert pid is not None
            t_dead = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            alive = hops - {victim["address"]}
            await eventually(lambda: watch.now == alive, timeout_s=GRACEFUL_RESTART_S + 10, interval_s=0.02,
                             what="the dead member's next hop out of the FIB", detail=lambda: _paths_text(lab))
            say(f"the dead member left the FIB {time.monotonic() - t_dead:.2f} s after its HAProxy died "
                f"({time.monotonic() - t_stop:.2f} s after the SIGSTOP, {time.monotonic() - t_kill:.2f} s "
                f"after the SIGKILL; graceful_restart_s {GRACEFUL_RESTART_S})")
            assert victim["instance"] in {i.name for i in await orch.list("web")}, \
                "the member was deleted: its link went, so this says nothing about stale paths"
            say(await _paths_text(lab))

            # 4. The frozen leader resumes: it knows it is not the leader and starts no speaker.
            starts = second.log.read_text().count("ExaBGP started")
            second.proc.send_signal(signal.SIGCONT)
            await eventually(lambda: _role_is(second, "follower"), timeout_s=20, interval_s=0.1,
                             what="the resumed leader knows it is not one", detail=second.tail)
            await asyncio.sleep(2)
            log = second.log.read_text()
            assert "this scaler stood still" in log, "the speaker was not held after the freeze"
            assert log.count("ExaBGP started") == starts, second.tail()
            states = await lab.frr().neighbor_states()
            assert {a for a, st in states.items() if st == "Established"} == {speaker[id(third)]}, states
            assert {i.name for i in await orch.list("web")} == instances, "an instance was created twice"
        seen = watch.stop()
        say(f"{watch.polls} FIB reads, at most {watch.gap_s * 1000:.0f} ms apart; changes: "
            f"{[(round(t - t_start, 2), sorted(h)) for t, h in seen]}")
        say(f"route events: {monitor.about(lab.vip)}")
        # The FIB changed once: for the dead member. Never fewer hops during the takeovers — in the
        # reads, and in the kernel's own events (a hop lost and regained between two reads would
        # show as two more route changes: FRR replaces the route with each new nexthop group).
        assert [h for _, h in seen] == [hops, alive], seen
        assert len(monitor.about(lab.vip)) == 1, monitor.about(lab.vip)
        assert watch.gap_s < 1, "the FIB reader stalled"
    finally:
        for p in procs:
            if p.proc is not None and p.proc.returncode is None:
                p.proc.send_signal(signal.SIGCONT)
            await p.stop()
        watch.stop()


async def _fib_is(lab: LabConfig, hops: set[str]) -> bool:
    return await fib_next_hops(lab.router_ns, str(lab.vip)) == hops


async def _announced_by(lab: LabConfig, peer: str, hops: set[str]) -> bool:
    return {h for p, h, stale in await frr_paths(lab) if p == peer and not stale} == hops


async def _not_established(lab: LabConfig, peer: str) -> bool:
    return (await lab.frr().neighbor_states()).get(peer) != "Established"


async def _stale_of(lab: LabConfig, peer: str) -> int:
    return sum(1 for p, _, stale in await frr_paths(lab) if p == peer and stale)


async def _paths_text(lab: LabConfig) -> str:
    return f"FRR paths {await frr_paths(lab)}, sessions {await lab.frr().neighbor_states()}"


async def _one_leader(procs: list[ServiceProcess]) -> bool:
    roles = [await role(p) for p in procs]
    return roles.count("leader") == 1 and roles.count("follower") == len(procs) - 1


async def _leader(procs: list[ServiceProcess]) -> ServiceProcess:
    roles = [await role(p) for p in procs]
    return procs[roles.index("leader")]


async def _is_leader(p: ServiceProcess) -> bool:
    return await role(p) == "leader"


async def _role_is(p: ServiceProcess, want: str) -> bool:
    return await role(p) == want


