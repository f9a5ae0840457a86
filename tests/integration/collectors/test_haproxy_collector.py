"""The haproxy collector against a real HAProxy 2.6 on loopback: exporter on a unix socket and on TCP,
a frontend that answers by itself (real traffic with known counts), a slow backend (real queue), a
seamless reload (`-sf`) that resets every counter, and a killed process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from collectors import CollectorError, Sample, Target
from collectors.haproxy import HAProxyCollector, HAProxyCollectorConfig
from tests.support.clock import ManualClock
from tests.support.wait import eventually, eventually_sync

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.access(HAPROXY, os.X_OK), reason="haproxy is not installed"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class HAProxyLab:
    """One real haproxy in the foreground (we hold every PID we start), configured in `directory`."""

    directory: Path
    socket_dir: Path
    metrics_port: int = field(default_factory=free_port)
    web_port: int = field(default_factory=free_port)
    app_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # A server that completes TCP handshakes (kernel backlog) but never answers: with
        # `maxconn 1` on it, further requests wait in the backend queue.
        self.slow_server = socket.socket()
        self.slow_server.bind(("127.0.0.1", 0))
        self.slow_server.listen(64)
        self.config = self.directory / "haproxy.cfg"
        self.pidfile = self.directory / "haproxy.pid"
        self.log = self.directory / "haproxy.log"
        self.metrics_socket = self.socket_dir / "metrics.sock"
        slow_port = self.slow_server.getsockname()[1]
        self.config.write_text(
            f"""\
global
    maxconn 1000
defaults
    mode http
    timeout connect 2s
    timeout client 20s
    timeout server 20s
    timeout queue 20s
frontend metrics
    bind 127.0.0.1:{self.metrics_port}
    bind unix@{self.metrics_socket}
    http-request use-service prometheus-exporter if {{ path /metrics }}
    http-request return status 404
frontend web
    bind 127.0.0.1:{self.web_port}
    http-request return status 200 content-type text/plain string ok
frontend app
    bind 127.0.0.1:{self.app_port}
    default_backend slow
backend slow
    server s1 127.0.0.1:{slow_port} maxconn 1
"""
        )

    @property
    def uds_target(self) -> Target:
        return Target(key="lb1", url="http://lb1/metrics", uds=str(self.metrics_socket))

    @property
    def tcp_target(self) -> Target:
        return Target(key="lb1-tcp", url=f"http://127.0.0.1:{self.metrics_port}/metrics")

    def start(self, *, replacing: int | None = None) -> subprocess.Popen[bytes]:
        args = [HAPROXY, "-f", str(self.config), "-p", str(self.pidfile)]
        if replacing is not None:
            args += ["-sf", str(replacing)]
        with self.log.open("ab") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    def start_time(self) -> float | None:
        """The exporter's process start time over TCP, or None while nothing answers."""
        try:
            text = httpx.get(
                f"http://127.0.0.1:{self.metrics_port}/metrics?scope=global", timeout=1, trust_env=False
            ).text
        except httpx.HTTPError:
            return None
        for line in text.splitlines():
            if line.startswith("haproxy_process_start_time_seconds "):
                return float(line.split()[1])
        return None

    def wait_ready(self, *, not_start_time: float | None = None, deadline_s: float = 10.0) -> float:
        def ready() -> float | None:
            if self.processes[-1].poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log.read_text()}")
            started = self.start_time()
            if started is not None and started != not_start_time and self.metrics_socket.exists():
                return started
            return None

        return eventually_sync(ready, timeout_s=deadline_s, what="haproxy ready", detail=self.log.read_text)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        self.slow_server.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[HAProxyLab]:
    # sun_path holds 107 bytes; long test names can push tmp_path past it.
    socket_dir = tmp_path
    short_dir: str | None = None
    if len(str(tmp_path / "metrics.sock")) > 100:
        short_dir = tempfile.mkdtemp(prefix="hx-", dir="/tmp")
        socket_dir = Path(short_dir)
    lab = HAProxyLab(directory=tmp_path, socket_dir=socket_dir)
    try:
        lab.start()
        lab.wait_ready()
        yield lab
    finally:
        lab.stop_all()
        if short_dir is not None:
            shutil.rmtree(short_dir, ignore_errors=True)


def collector_for(clock: ManualClock, **config: object) -> HAProxyCollector:
    return HAProxyCollector(HAProxyCollectorConfig.model_validate(config), monotonic=clock.monotonic)


def values(samples: list[Sample]) -> dict[str, float]:
    return {s.metric: s.value for s in samples}


async def send_requests(port: int, count: int, *, keep_alive: bool) -> None:
    limits = httpx.Limits(max_keepalive_connections=1 if keep_alive else 0)
    async with httpx.AsyncClient(limits=limits, trust_env=False, timeout=5) as client:
        for _ in range(count):
            response = await client.get(f"http://127.0.0.1:{port}/")
            assert response.status_code == 200 and response.text == "ok"


async def collect_until(collector: HAProxyCollector, target: Target, metric: str, value: float) -> dict[str, float]:
    """Collect until `metric` reads `value` (HAProxy accepts and closes asynchronously)."""
    got: dict[str, float] = {}

    async def reads() -> dict[str, float] | None:
        nonlocal got
        got = values(await collector.collect(target))
        return got if got.get(metric) == value else None

    return await eventually(reads, timeout_s=5.0, what=f"{metric} reading {value:g}", detail=lambda: f"last {got}")


async def test_sessions_and_rates_follow_real_traffic(lab: HAProxyLab) -> None:
    clock = ManualClock()
    collector = collector_for(clock, frontend="web")
    try:
        for target in (lab.uds_target, lab.tcp_target):
            first = values(await collector.collect(target))
            assert first["current_sessions"] == 0
            assert first["current_connections"] >= 1  # the scrape itself
            assert "session_rate" not in first and "request_rate" not in first

        # 20 requests on 20 connections: 20 sessions, 20 requests.
        await send_requests(lab.web_port, 20, keep_alive=False)
        clock.advance(10.0)
        got = values(await collector.collect(lab.uds_target))
        assert got["session_rate"] == pytest.approx(2.0)
        assert got["request_rate"] == pytest.approx(2.0)

        # 30 requests on one kept-alive connection: 1 session, 30 requests.
        await send_requests(lab.web_port, 30, keep_alive=True)
        clock.advance(10.0)
        got = values(await collector.collect(lab.uds_target))
        assert got["session_rate"] == pytest.approx(0.1)
        assert got["request_rate"] == pytest.approx(3.0)
        # The TCP target is another member as far as rates go: both deltas since its own first read.
        tcp = values(await collector.collect(lab.tcp_target))
        assert tcp["session_rate"] == pytest.approx(21 / 20)
        assert tcp["request_rate"] == pytest.approx(50 / 20)

        # Three open, idle client connections are three current sessions on the frontend.
        held = [socket.create_connection(("127.0.0.1", lab.web_port)) for _ in range(3)]
        try:
            got = await collect_until(collector, lab.uds_target, "current_sessions", 3)
            assert got["current_connections"] >= 4
        finally:
            for sock in held:
                sock.close()
        await collect_until(collector, lab.uds_target, "current_sessions", 0)
    finally:
        await collector.close()


async def test_real_backend_queue(lab: HAProxyLab) -> None:
    collector = collector_for(ManualClock())
    async with httpx.AsyncClient(trust_env=False, timeout=20) as client:
        # One request holds the slow server's only slot, the next two wait in the backend queue.
        pending = [asyncio.create_task(client.get(f"http://127.0.0.1:{lab.app_port}/")) for _ in range(3)]
        try:
            got = await collect_until(collector, lab.uds_target, "queue", 2)
            assert got["current_sessions"] >= 3  # all frontends: app's three, plus the scrape
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await collector.close()


async def test_reload_resets_counters_without_negative_or_huge_rates(lab: HAProxyLab) -> None:
    clock = ManualClock()
    collector = collector_for(clock, frontend="web")
    try:
        await collector.collect(lab.uds_target)
        await send_requests(lab.web_port, 40, keep_alive=False)
        clock.advance(5.0)
        before = values(await collector.collect(lab.uds_target))
        assert before["session_rate"] == pytest.approx(8.0)

        # The start time has 1 s resolution: make sure the new process gets a different one.
        old_start = lab.start_time()
        assert old_start is not None
        await asyncio.sleep(max(0.0, old_start + 1.05 - time.time()))
        old_pid = lab.processes[-1].pid
        lab.start(replacing=old_pid)
        new_start = await asyncio.to_thread(lab.wait_ready, not_start_time=old_start)
        assert new_start > old_start
        lab.processes[0].wait(timeout=10)  # the old process left after `-sf`

        # Counters are back near 0 (40 -> a handful): no rate for that interval, never a negative one.
        await send_requests(lab.web_port, 3, keep_alive=False)
        clock.advance(5.0)
        after = values(await collector.collect(lab.uds_target))
        assert "session_rate" not in after and "request_rate" not in after
        # Gauges are still read after a reload (its value may include a closing connection: racy).
        assert "current_sessions" in after and "queue" in after

        # Re-baselined on the new process: the next interval is exact again.
        await send_requests(lab.web_port, 10, keep_alive=False)
        clock.advance(5.0)
        again = values(await collector.collect(lab.uds_target))
        assert again["session_rate"] == pytest.approx(2.0)
        assert again["request_rate"] == pytest.approx(2.0)
    finally:
        await collector.close()


async def test_dead_haproxy_is_a_connect_error_within_the_timeout(lab: HAProxyLab) -> None:
    collector = collector_for(ManualClock(), timeout_s=1.0)
    try:
        await collector.collect(lab.uds_target)
        for process in lab.processes:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        for target in (lab.uds_target, lab.tcp_target):
            started = time.monotonic()
            with pytest.raises(CollectorError) as info:
                await collector.collect(target)
            assert time.monotonic() - started < 1.0
            assert info.value.reason == "connect"
            assert target.key in str(info.value)
    finally:
        await collector.close()
