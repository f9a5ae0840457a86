"""Alerting daemons for integration tests and benchmarks: Alertmanager, a Prometheus that evaluates
alerting rules and sends to it, and an ASGI app served by uvicorn in a thread — all on free
loopback ports, with every file in a directory the caller owns.

Built on tests/support/daemons.py (its `Daemon`, `Prometheus`, `free_port`) and tests/support/wait.py:
each launcher starts its daemon, waits (polling with a deadline) until it answers, and on exit stops every
process it started by PID, even when the body failed. Alertmanager runs without clustering
(`--cluster.listen-address=`), so it binds nothing but its loopback web port.

    with serve_app(app) as url, \\
            alertmanager(tmp / "am", webhook_url=f"{url}/v1/alerts/alertmanager", bearer_file=token) as am, \\
            prometheus_with_rules(tmp / "prom", targets={"load": [url.removeprefix("http://")]},
                                  rules=[HIGH_LOAD], alertmanager=am) as prom:
        ...
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tests.support.daemons import Daemon, DaemonError, Prometheus, free_port
from tests.support.wait import eventually_sync

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager") \
    or "/usr/bin/prometheus-alertmanager"

__all__ = ["ALERTMANAGER", "Alertmanager", "RulingPrometheus", "alertmanager", "prometheus_with_rules",
           "serve_app"]


@dataclass
class Alertmanager(Daemon):
    """Alertmanager with one route to one webhook receiver. Timings are short so that grouping,
    repeats and resolution happen within seconds."""

    port: int = 0
    webhook_url: str = ""
    bearer_file: Path | None = None
    group_by: Sequence[str] = ("alertname", "pool")
    group_wait: str = "1s"
    group_interval: str = "2s"
    repeat_interval: str = "4s"
    max_alerts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def config(self) -> dict[str, Any]:
        webhook: dict[str, Any] = {"url": self.webhook_url, "send_resolved": True, "max_alerts": self.max_alerts}
        if self.bearer_file is not None:
            # What docs/alerts.md tells operators to write: the token in a file, never in the config.
            webhook["http_config"] = {"authorization": {"type": "Bearer",
                                                        "credentials_file": str(self.bearer_file)}}
        return {
            "route": {"receiver": "scaler", "group_by": list(self.group_by), "group_wait": self.group_wait,
                      "group_interval": self.group_interval, "repeat_interval": self.repeat_interval},
            "receivers": [{"name": "scaler", "webhook_configs": [webhook]}],
        }

    def start(self, *, deadline_s: float = 20.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "alertmanager.yml"
        config.write_text(json.dumps(self.config(), indent=2) + "\n")   # JSON is YAML
        self.spawn([
            ALERTMANAGER,
            f"--config.file={config}",
            f"--storage.path={self.directory / 'data'}",
            f"--web.listen-address={self.address}",
            "--cluster.listen-address=",      # no gossip port on 0.0.0.0
            "--log.level=warn",
        ])
        eventually_sync(self.when_alive(lambda: _ok(f"{self.url}/-/ready")), timeout_s=deadline_s,
                        what=f"alertmanager on {self.address}", detail=self.log_tail)

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds now (API v2)."""
        answer: list[dict[str, Any]] = httpx.get(f"{self.url}/api/v2/alerts", timeout=5.0, trust_env=False).json()
        return answer


@contextlib.contextmanager
def alertmanager(directory: Path, *, webhook_url: str, bearer_file: Path | None = None,
                 **timings: Any) -> Iterator[Alertmanager]:
    """An Alertmanager on a free loopback port delivering every alert to `webhook_url`."""
    daemon = Alertmanager(name="alertmanager", directory=directory, port=free_port(), webhook_url=webhook_url,
                          bearer_file=bearer_file, **timings)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@dataclass
class RulingPrometheus(Prometheus):
    """A Prometheus (tests/support/daemons.py) that also evaluates alerting `rules` and sends to Alertmanager."""

    rules: Sequence[Mapping[str, Any]] = field(default_factory=list)
    alertmanager_address: str = ""

    @property
    def rules_file(self) -> Path:
        return self.directory / "rules.yml"

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["rule_files"] = [str(self.rules_file)]
        cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [self.alertmanager_address]}]}]}
        return cfg

    def start(self, *, deadline_s: float = 20.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rules_file.write_text(json.dumps({"groups": [{"name": "scaler-test", "rules": list(self.rules)}]}) + "\n")
        super().start(deadline_s=deadline_s)


@contextlib.contextmanager
def prometheus_with_rules(directory: Path, *, targets: Mapping[str, Sequence[str]],
                          rules: Sequence[Mapping[str, Any]], alertmanager: Alertmanager,
                          scrape_interval_s: float = 1.0) -> Iterator[RulingPrometheus]:
    """A Prometheus scraping `targets` every `scrape_interval_s`, evaluating `rules` as often, and
    sending alerts to `alertmanager`."""
    daemon = RulingPrometheus(name="prometheus", directory=directory, port=free_port(), targets=targets,
                              scrape_interval_s=scrape_interval_s, rules=rules,
                              alertmanager_address=alertmanager.address)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


def _ok(url: str) -> bool | None:
    try:
        return True if httpx.get(url, timeout=1.0, trust_env=False).status_code == 200 else None
    except httpx.HTTPError:
        return None


@contextlib.contextmanager
def serve_app(app: Any, *, deadline_s: float = 10.0, **options: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port, in a thread with its own event loop
    (so a blocking test body never stalls it). Yields the base URL; stops the server on exit."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                            lifespan="off", ws="none", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            raise DaemonError(f"uvicorn on 127.0.0.1:{port} stopped (see the log above)")
        return server.started

    try:
        eventually_sync(started, timeout_s=deadline_s, what=f"uvicorn on 127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=deadline_s)
