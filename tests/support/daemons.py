"""Real daemons for integration tests and benchmarks: Prometheus, node_exporter and HAProxy as plain
processes on free loopback ports, with every file in a directory the caller owns.

Each launcher is a context manager that starts its daemon, waits (polling with a deadline, never a
fixed sleep) until it answers, yields a handle, and on exit stops every process it started **by PID**
(SIGTERM, then SIGKILL after a grace period) even when the body failed. Nothing here binds anything
but 127.0.0.1, uses system paths for state, or touches a process it did not start.

    with node_exporter(tmp_path / "ne") as ne, prometheus(tmp_path / "prom", targets={"node": [ne.address]}) as prom:
        prom.wait_for_series('up{job="node"} == 1')

Adding a daemon (Alertmanager, ...) = a `Daemon` subclass that knows its command line and readiness
check, plus a context-manager launcher like the ones below.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.support.wait import eventually_sync

__all__ = [
    "BASIC_AUTH_PASSWORD",
    "BASIC_AUTH_USER",
    "HAPROXY",
    "NODE_EXPORTER",
    "PROMETHEUS",
    "Daemon",
    "DaemonError",
    "HAProxy",
    "NodeExporter",
    "Prometheus",
    "free_port",
    "haproxy",
    "node_exporter",
    "prometheus",
    "short_socket_dir",
]

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

# Credentials for daemons started with basic auth (exporter-toolkit's `--web.config.file`). The hash is
# bcrypt with cost 4 (hashing per request at the default cost 10 would dominate every test request).
BASIC_AUTH_USER = "scaler"
BASIC_AUTH_PASSWORD = "scaler-test-password"
_BASIC_AUTH_HASH = "$2b$04$PXrHLNa7fpzDILPdCt8IPex48VXTtNAbtAl5hgdVMS8DL.qf9Va8a"

# Collectors node_exporter keeps when started here: cheap, unprivileged, and enough for load, CPU
# counters, memory and a boot-time marker. The rest (disk, filesystem, hwmon, ...) are slow or need
# privileges and add nothing to what the tests read.
NODE_COLLECTORS = ("loadavg", "cpu", "meminfo", "stat", "time")

T = TypeVar("T")


class DaemonError(RuntimeError):
    """A daemon did not start or did not become ready; the message carries the end of its log."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the daemon binds it moments later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def short_socket_dir(prefix: str = "sd-") -> Iterator[Path]:
    """A fresh directory under /tmp for unix sockets: sun_path holds 107 bytes, pytest's tmp_path
    plus a socket name can exceed it."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Daemon:
    """Processes of one daemon, all started by us and stopped by their PIDs."""

    name: str
    directory: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The newest process."""
        if not self.processes:
            raise DaemonError(f"{self.name} was never started")
        return self.processes[-1]

    @property
    def pid(self) -> int:
        return self.process.pid

    def spawn(self, args: Sequence[str], *, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            process = subprocess.Popen(
                list(args), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.directory, env=dict(env) if env is not None else None,
            )
        self.processes.append(process)
        return process

    def check_alive(self) -> None:
        """Raise DaemonError if the newest process exited."""
        code = self.process.poll()
        if code is not None:
            raise DaemonError(f"{self.name} exited with {code}:\n{self.log_tail()}")

    def when_alive(self, probe: Callable[[], T]) -> Callable[[], T]:
        """`probe` as a check for eventually_sync that first makes sure the daemon still runs
        (DaemonError if it exited: there is no point waiting for it)."""

        def check() -> T:
            self.check_alive()
            return probe()

        return check

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, *, grace_s: float = 5.0) -> None:
        """SIGTERM every process we started that still runs, SIGKILL what is left after `grace_s`."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        end = time.monotonic() + grace_s
        for process in self.processes:
            try:
                process.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL every process we started (a crash, not a shutdown)."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def _http_ok(url: str, *, auth: tuple[str, str] | None = None) -> bool | None:
    try:
        response = httpx.get(url, timeout=1.0, trust_env=False, auth=auth)
    except httpx.HTTPError:
        return None
    return True if response.status_code == 200 else None


def _write_web_config(path: Path) -> Path:
    # JSON is YAML: no YAML writer needed.
    path.write_text(json.dumps({"basic_auth_users": {BASIC_AUTH_USER: _BASIC_AUTH_HASH}}) + "\n")
    return path


# -- node_exporter ------------------------------------------------------------------------------------


@dataclass
class NodeExporter(Daemon):
    port: int = 0
    basic_auth: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    @property
    def auth(self) -> tuple[str, str] | None:
        return (BASIC_AUTH_USER, BASIC_AUTH_PASSWORD) if self.basic_auth else None

    def start(self, *, deadline_s: float = 10.0) -> None:
        args = [
            NODE_EXPORTER,
            f"--web.listen-address={self.address}",
            "--collector.disable-defaults",
            *(f"--collector.{name}" for name in NODE_COLLECTORS),
            "--log.level=warn",
        ]
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.basic_auth:
            args.append(f"--web.config.file={_write_web_config(self.directory / 'web.yml')}")
        self.spawn(args)
        eventually_sync(self.when_alive(lambda: _http_ok(self.url, auth=self.auth)), timeout_s=deadline_s,
                        what=f"node_exporter on {self.address}", detail=self.log_tail)


@contextlib.contextmanager
def node_exporter(directory: Path, *, basic_auth: bool = False) -> Iterator[NodeExporter]:
    """A node_exporter on a free loopback port, with only `NODE_COLLECTORS` enabled."""
    daemon = NodeExporter(name="node_exporter", directory=directory, port=free_port(), basic_auth=basic_auth)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


# -- Prometheus ---------------------------------------------------------------------------------------


@dataclass
class Prometheus(Daemon):
    port: int = 0
    scrape_interval_s: float = 1.0
    targets: Mapping[str, Sequence[str]] = field(default_factory=dict)
    basic_auth: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def auth(self) -> tuple[str, str] | None:
        return (BASIC_AUTH_USER, BASIC_AUTH_PASSWORD) if self.basic_auth else None

    def config(self) -> dict[str, Any]:
        interval = f"{int(self.scrape_interval_s * 1000)}ms"
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(addresses)}]}
                for job, addresses in self.targets.items()
            ],
        }

    def start(self, *, deadline_s: float = 20.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "prometheus.yml"
        config.write_text(json.dumps(self.config(), indent=2) + "\n")
        args = [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address={self.address}",
            # Debian's defaults point at /etc/prometheus; nothing here may read system config.
            f"--web.console.templates={self.directory / 'consoles'}",
            f"--web.console.libraries={self.directory / 'console_libraries'}",
            "--log.level=warn",
        ]
        if self.basic_auth:
            args.append(f"--web.config.file={_write_web_config(self.directory / 'web.yml')}")
        self.spawn(args)
        eventually_sync(self.when_alive(lambda: _http_ok(f"{self.url}/-/ready", auth=self.auth)),
                        timeout_s=deadline_s, what=f"prometheus on {self.address}", detail=self.log_tail)

    def query(self, expr: str, **params: str) -> dict[str, Any]:
        """One instant query (for test set-up and captures), the decoded JSON answer."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr, **params}, timeout=5.0,
                             trust_env=False, auth=self.auth)
        answer: dict[str, Any] = response.json()
        return answer

    def wait_for_series(self, expr: str, *, count: int = 1, deadline_s: float = 20.0) -> list[dict[str, Any]]:
        """Poll until `expr` returns at least `count` series (the first scrapes take a moment)."""

        def probe() -> list[dict[str, Any]] | None:
            try:
                answer = self.query(expr)
            except httpx.HTTPError:
                return None
            result = answer.get("data", {}).get("result", [])
            return result if answer.get("status") == "success" and len(result) >= count else None

        return eventually_sync(self.when_alive(probe), timeout_s=deadline_s, interval_s=0.1,
                               what=f"prometheus series {expr!r}")


@contextlib.contextmanager
def prometheus(
    directory: Path, *, targets: Mapping[str, Sequence[str]], scrape_interval_s: float = 1.0,
    basic_auth: bool = False,
) -> Iterator[Prometheus]:
    """A Prometheus server on a free loopback port scraping `targets` ({job: [host:port, ...]}),
    its TSDB in `directory`."""
    daemon = Prometheus(name="prometheus", directory=directory, port=free_port(), targets=targets,
                        scrape_interval_s=scrape_interval_s, basic_auth=basic_auth)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


# -- HAProxy ------------------------------------------------------------------------------------------


@dataclass
class HAProxy(Daemon):
    """HAProxy in the foreground. `config` is the configuration text; `{stats_socket}` and
    `{metrics_socket}` in it are replaced by socket paths in `socket_dir`."""

    socket_dir: Path = Path("/nonexistent")
    config_text: str = ""

    @property
    def stats_socket(self) -> Path:
        return self.socket_dir / "stats.sock"

    @property
    def metrics_socket(self) -> Path:
        return self.socket_dir / "metrics.sock"

    @property
    def config_file(self) -> Path:
        return self.directory / "haproxy.cfg"

    def write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        text = self.config_text.replace("{stats_socket}", str(self.stats_socket))
        self.config_file.write_text(text.replace("{metrics_socket}", str(self.metrics_socket)))

    def start(self, *, replacing: int | None = None, deadline_s: float = 10.0) -> subprocess.Popen[bytes]:
        """Start a process (with `-sf replacing`: a seamless reload); wait until the stats socket
        answers with the new process's PID."""
        self.write_config()
        args = [HAPROXY, "-f", str(self.config_file), "-p", str(self.directory / "haproxy.pid")]
        if replacing is not None:
            args += ["-sf", str(replacing)]
        process = self.spawn(args)
        eventually_sync(self.when_alive(lambda: self.show("show info").get("Pid") == str(process.pid)),
                        timeout_s=deadline_s, what=f"haproxy pid {process.pid} on {self.stats_socket}",
                        detail=self.log_tail)
        return process

    def reload(self, *, deadline_s: float = 10.0) -> subprocess.Popen[bytes]:
        """Seamless reload: a new process takes over the listeners (`-sf`); wait for the old one to exit."""
        old = self.process
        new = self.start(replacing=old.pid, deadline_s=deadline_s)
        old.wait(timeout=deadline_s)
        return new

    def command(self, line: str, *, timeout_s: float = 2.0) -> str | None:
        """One runtime API command over the stats socket; None if the socket does not answer."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout_s)
                sock.connect(str(self.stats_socket))
                sock.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError:
            return None
        return b"".join(chunks).decode()

    def show(self, line: str) -> dict[str, str]:
        """`show info`-style answer as a dict (empty if no answer)."""
        text = self.command(line) or ""
        pairs = (ln.partition(":") for ln in text.splitlines())
        return {k.strip(): v.strip() for k, sep, v in pairs if sep}


@contextlib.contextmanager
def haproxy(directory: Path, config: str) -> Iterator[HAProxy]:
    """A HAProxy running `config` (see `HAProxy`); its sockets live in a short directory under /tmp.
    The configuration must declare `stats socket {stats_socket}`."""
    with short_socket_dir("hx-") as socket_dir:
        daemon = HAProxy(name="haproxy", directory=directory, socket_dir=socket_dir, config_text=config)
        try:
            daemon.start()
            yield daemon
        finally:
            # SIGTERM is HAProxy's hard stop; it exits at once.
            daemon.stop()
