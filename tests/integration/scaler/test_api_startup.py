"""`scaler run` as operators run it, when the API cannot start: a port in use, a certificate that
cannot be read, a socket path that cannot be made — each ends the process with one line naming the
problem and a non-zero exit, before the service acts; and the unix socket of a running service."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from scaler.lab.demo import ServiceProcess, free_port

pytestmark = pytest.mark.integration

POLICY = """\
pools:
  web:
    min: 1
    max: 2
    inputs:
      sessions: {source: haproxy, metric: current_sessions}
    rules:
      - {name: busy, input: sessions, above: 12, adjust: +1}
"""

CONFIG = """\
store: {{url: "sqlite:///scaler.db"}}
api:
  host: 127.0.0.1
  port: {port}
{api}
policy_dir: policies
orchestrator: {{driver: fake, options: {{boot_probes: 0}}}}
router: {{driver: fake}}
collectors:
  haproxy:
    driver: haproxy
    target: {{url: "http://localhost/metrics", uds: "{tmp}/none/{{instance}}.sock"}}
pools:
  web: {{vip: 198.19.0.1, boot_timeout: 10s, drain_timeout: 1s}}
"""


def write(tmp: Path, port: int, api: str = "") -> Path:
    (tmp / "policies").mkdir(exist_ok=True)
    (tmp / "policies" / "web.yaml").write_text(POLICY)
    config = tmp / "scaler.yaml"
    config.write_text(CONFIG.format(port=port, api=api, tmp=tmp))
    return config


def run(config: Path) -> subprocess.CompletedProcess[str]:
    # From the config's directory's parent: `python -m` puts the working directory on sys.path.
    return subprocess.run([sys.executable, "-m", "scaler", "run", "-c", str(config)], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[3], stdin=subprocess.DEVNULL)


def problem_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in done.stderr, done.stderr
    assert "scaler started" not in done.stderr, done.stderr     # it stopped before acting
    return [line for line in done.stderr.splitlines() if not line[:4].isdigit()]    # not a log line


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(write(tmp_path, port))
    assert done.returncode != 0
    assert problem_lines(done) == [f"scaler: api: cannot listen on 127.0.0.1:{port}: the address is already in use "
                                   "(another scaler or another program listens there) (api.host, api.port in "
                                   "scaler.yaml)"]


def test_an_unreadable_certificate_is_named_with_its_line(tmp_path: Path) -> None:
    config = write(tmp_path, free_port(), "  tls: {cert: missing.crt, key: missing.key}")
    done = run(config)
    assert done.returncode != 0
    assert problem_lines(done) == ["configuration is invalid:", f"  {config}:5:3: api.tls: cert: cannot read "
                                   f"{tmp_path}/missing.crt: No such file or directory"]


def test_a_socket_path_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    done = run(write(tmp_path, free_port(), "  socket: run/scaler/api.sock"))
    assert done.returncode != 0
    assert problem_lines(done) == [f"scaler: api.socket: cannot create {tmp_path}/run/scaler/api.sock: its "
                                   "directory does not exist"]


async def test_a_running_service_serves_its_socket_and_removes_it_at_stop(tmp_path: Path) -> None:
    port = free_port()
    config = write(tmp_path, port, "  socket: api.sock")
    path = tmp_path / "api.sock"
    svc = ServiceProcess(config, port)
    try:
        await svc.start()
        local = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(path)), base_url="http://scaler")
        async with local, httpx.AsyncClient(base_url=svc.base, trust_env=False) as tcp:
            assert (await tcp.post("/v1/reload")).status_code == 401
            assert (await tcp.get("/v1/pools")).status_code == 401
            r = await local.post("/v1/reload")
            assert r.status_code == 200 and r.json()["trigger"] == "api", r.text
            assert (await local.get("/v1/pools/web")).json()["name"] == "web"
    finally:
        assert await svc.stop(signal.SIGTERM) == 0, svc.tail()
    assert not path.exists()
    log = svc.log.read_text()
    assert "scaler.access: POST /v1/reload 401 credential=- client=127.0.0.1:" in log
    assert "scaler.access: POST /v1/reload 200 credential=@unix-socket client=unix-socket" in log
