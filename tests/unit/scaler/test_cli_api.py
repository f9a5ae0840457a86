"""The commands that ask the running service — status, why, router, cluster, breaker, reload, pause,
rollout — against the real API (scaler.api with its access rules) served by uvicorn on loopback, on a unix socket and
over TLS, with a store the real engine and lifecycle filled through the fake drivers (the View of
test_api.py): what they print, `--json`, the bearer token, and the exit codes."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import httpx
import pytest

from actuators.drainer import NoDrainer
from actuators.fake import FakeOrchestrator, FakeOrchestratorConfig, FakeRouter
from scaler.api import create_app
from scaler.auth import via_unix_socket
from scaler.breaker import LaunchBreakerConfig, breaker_state, record_launch_failure, reset_breaker
from scaler.cli import main
from scaler.config import ApiConfig, PoolConfig
from scaler.engine import Engine
from scaler.lifecycle import Lifecycle
from tests.support.daemons import free_port
from tests.support.daemons_alerting import serve_app
from tests.unit.scaler.test_api import View
from tests.unit.scaler.test_api import view as view  # the fixture, re-exported for this module's tests

OPS_TOKEN = "ops-token-0123456789abcdef"
VIEWER_TOKEN = "viewer-token-0123456789abcdef"


@dataclass
class Reloaded:
    ok: bool
    trigger: str
    at: float | None
    changed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Service(View):
    """test_api's View with a second pool (no policy) and a reload that answers."""

    reload_answer = Reloaded(True, "api", 0.0, ["web"])

    def reload_policies(self, trigger: str) -> Any:
        return self.reload_answer


@pytest.fixture
def tokens(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for name, token in (("ops", OPS_TOKEN), ("viewer", VIEWER_TOKEN), ("wrong", "not-a-known-token-0123456789")):
        files[name] = tmp_path / f"{name}.token"
        files[name].write_text(token + "\n")
    return files


@pytest.fixture
def access(tokens: dict[str, Path]) -> ApiConfig:
    return ApiConfig.model_validate({"credentials": [
        {"name": "ops", "token": {"file": str(tokens["ops"])}, "scopes": ["read", "operate"]},
        {"name": "viewer", "token": {"file": str(tokens["viewer"])}, "scopes": ["read"]}]})


async def fill(view: View) -> Service:
    """web: one member in service (scaled out from 0 by the engine, then a hold), its health down,
    its launch breaker open; api: a pool without a policy and without members."""
    service = Service(view.store, view.policies)
    service.pools["api"] = PoolConfig.model_validate({"vip": "198.19.0.2"})
    service.store.ensure_pool("api", "198.19.0.2", 0)
    engine = Engine(service.store, {}, {}, service.pools, service.policies, service.metrics)
    lc = Lifecycle(service.store, FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0)), FakeRouter(), NoDrainer(),
                   service.pools, service.metrics)
    engine.evaluate()
    for _ in range(3):
        await lc.reconcile()
    engine.evaluate()
    [member] = service.store.members("web")
    now = time.time()
    service.store.set_health(member.id, "down", now, "GET /health: HTTP 503")
    for n in range(3):
        record_launch_failure(service.store, "web", LaunchBreakerConfig(), f"web-x-{n}", "server in ERROR", now)
    return service


@pytest.fixture
async def service(view: View) -> Service:
    return await fill(view)


@pytest.fixture
def api(service: Service, access: ApiConfig) -> Iterator[str]:
    with serve_app(create_app(service, access=access)) as url:
        yield url


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`scaler ARGV`: exit code, stdout, stderr without the log lines of the server (it runs in this
    process: its access log goes to the handler the command installs)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, "".join(ln for ln in err.splitlines(keepends=True) if not LOG_LINE.match(ln))


def test_status_shows_every_pool_and_what_needs_attention(api: str, service: Service, tokens: dict[str, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "status", "--api", api, "--token-file", str(tokens["viewer"]))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "scaler: leader (epoch 1) — policies: valid"
    header, api_row, web_row = lines[1:4]
    assert header.split() == ["POOL", "SIZE/DESIRED", "BOUNDS", "MEMBERS", "HEALTH", "BREAKER", "LAST", "DECISION"]
    assert api_row.split()[:6] == ["api", "0/0", "no", "policy", "none", "ok"]
    assert api_row.endswith("none yet")
    assert web_row.split()[:7] == ["web", "1/1", "1-3", "in_service", "1", "down", "1"]
    assert " open " in web_row
    assert "hold at 1: missing data for input s: no sample yet (" in web_row
    # The columns line up.
    assert header.index("LAST DECISION") == web_row.index("hold at 1")
    [member] = service.store.members("web")
    assert lines[4] == ""
    assert lines[5].startswith("web: launch circuit breaker open since ")
    assert lines[6].startswith(f"web: {member.instance} (in_service) is down for ")
    assert lines[6].endswith(": GET /health: HTTP 503")
    assert len(lines) == 7


def test_json_prints_what_the_api_sent(api: str, tokens: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALER_TOKEN_FILE", str(tokens["viewer"]))
    auth = {"Authorization": f"Bearer {VIEWER_TOKEN}"}

    def sent(path: str) -> Any:
        r = httpx.get(api + path, headers=auth, trust_env=False)
        assert r.status_code == 200
        return stable(r.json())

    def stable(doc: Any) -> Any:
        """Without the breaker's summary: it says how long ago it opened."""
        for pool in doc if isinstance(doc, list) else [doc]:
            if isinstance(pool, dict):
                pool.get("launch_breaker", pool).pop("summary", None)
        return doc

    for argv, path in ((["status"], "/v1/pools"), (["why", "web", "-n", "2"], "/v1/pools/web/decisions?limit=2"),
                       (["router"], "/v1/router"), (["cluster"], "/v1/cluster")):
        code, out, err = run(capsys, *argv, "--json", "--api", api)
        assert (code, err) == (0, "")
        assert out.endswith("}\n") or out.endswith("]\n")
        assert stable(json.loads(out)) == sent(path), argv
    code, out, _ = run(capsys, "breaker", "show", "web", "--json", "--api", api)
    assert stable(json.loads(out)) == sent("/v1/pools/web")["launch_breaker"] and json.loads(out)["status"] == "open"
    code, out, _ = run(capsys, "why", "web", "-n", "1", "--api", api)
    assert code == 0 and out.startswith("web: launch circuit breaker open since ")        # GET …/why as it came
    assert "  hold  size 1\n  why:    missing data for input s: no sample yet\n" in out


def test_refused_requests_name_the_problem_exit_3_and_change_nothing(
        api: str, service: Service, tokens: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "status", "--api", api)
    assert (code, out) == (3, "")
    assert err.startswith("scaler: the API refused the request: no credential — pass --token-file FILE (or set "
                          "SCALER_TOKEN_FILE), or use --socket PATH on the scaler's host (HTTP 401: ")
    assert len(err.splitlines()) == 1
    code, _, err = run(capsys, "status", "--api", api, "--token-file", str(tokens["wrong"]))
    assert code == 3 and f"the token in {tokens['wrong']} is not valid (HTTP 401: invalid credential)" in err
    code, _, err = run(capsys, "breaker", "reset", "web", "--api", api, "--token-file", str(tokens["viewer"]))
    assert code == 3 and f"the token in {tokens['viewer']} does not allow this" in err and "HTTP 403" in err
    assert breaker_state(service.store, "web", time.time()).open
    code, out, err = run(capsys, "breaker", "reset", "web", "--api", api, "--token-file", str(tokens["ops"]))
    assert (code, out, err) == (0, "launch circuit breaker closed\n", "")
    assert not breaker_state(service.store, "web", time.time()).open


def test_reload_exit_codes_and_json(api: str, service: Service, tokens: dict[str, Path],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    ops = ("--api", api, "--token-file", str(tokens["ops"]))
    assert run(capsys, "reload", *ops) == (0, "reloaded; changed pools: web\n", "")
    service.reload_answer = Reloaded(False, "api", 0.0, problems=["web.yaml:3:5: pools.web.min: not a number"])
    code, out, err = run(capsys, "reload", *ops)
    assert (code, out) == (1, "")
    assert err.splitlines() == ["policy reload rejected; the previous policies keep running:",
                                "  web.yaml:3:5: pools.web.min: not a number"]
    code, out, _ = run(capsys, "reload", "--json", *ops)
    assert code == 1 and json.loads(out)["problems"] == ["web.yaml:3:5: pools.web.min: not a number"]


def test_wrong_input_exits_1_and_an_unreachable_api_3(api: str, tokens: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    ops = ("--api", api, "--token-file", str(tokens["ops"]))
    code, _, err = run(capsys, "why", "nope", *ops)
    assert (code, err) == (1, "scaler: unknown pool 'nope'; pools: api, web\n")
    code, _, err = run(capsys, "breaker", "show", "nope", *ops)
    assert code == 1 and "unknown pool 'nope'" in err
    missing = tmp_path / "no-such.token"
    code, _, err = run(capsys, "status", "--api", api, "--token-file", str(missing))
    assert (code, err) == (1, f"scaler: --token-file {missing}: cannot read it: No such file or directory\n")
    (tmp_path / "empty.token").write_text("\n")
    code, _, err = run(capsys, "status", "--api", api, "--token-file", str(tmp_path / "empty.token"))
    assert code == 1 and "the file is empty" in err
    code, _, err = run(capsys, "status", "--api", "ftp://x")
    assert code == 1 and "--api ftp://x: not an http:// or https:// URL" in err
    gone = f"http://127.0.0.1:{free_port()}"     # nothing listens there
    code, _, err = run(capsys, "status", "--api", gone)
    assert code == 3 and err.startswith(f"scaler: cannot reach the scaler API at {gone}: ")


def test_the_unix_socket_needs_no_token(service: Service, access: ApiConfig, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    sock = tmp_path / "api.sock"
    with serve_app(via_unix_socket(create_app(service, access=access)), uds=str(sock)):
        code, out, err = run(capsys, "status", "--socket", str(sock))
        assert (code, err) == (0, "") and out.splitlines()[3].startswith("web ")
        code, out, _ = run(capsys, "breaker", "reset", "web", "--socket", str(sock))
        assert (code, out) == (0, "launch circuit breaker closed\n")
        monkeypatch.setenv("SCALER_SOCKET", str(sock))
        code, out, _ = run(capsys, "cluster", "-c", str(tmp_path / "not-read.yaml"))
        assert (code, out) == (0, "this scaler (?): leader, epoch 1, leader unknown\n")
    code, _, err = run(capsys, "cluster")
    assert code == 3 and err.startswith(f"scaler: cannot reach the scaler API at unix socket {sock}: ")


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scaler test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "api.crt", tmp_path / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_with_the_ca_given(service: Service, access: ApiConfig, tokens: dict[str, Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = self_signed(tmp_path)
    with serve_app(create_app(service, access=access), ssl_certfile=str(cert), ssl_keyfile=str(key)) as url:
        https = url.replace("http://", "https://")
        code, out, err = run(capsys, "cluster", "--api", https, "--token-file", str(tokens["viewer"]),
                             "--cacert", str(cert))
        assert (code, out, err) == (0, "this scaler (?): leader, epoch 1, leader unknown\n", "")
        code, _, err = run(capsys, "cluster", "--api", https, "--token-file", str(tokens["viewer"]))
        assert code == 3 and "CERTIFICATE_VERIFY_FAILED" in err and "pass the CA with --cacert FILE" in err


def test_pause_and_resume(api: str, tokens: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    ops = ("--api", api, "--token-file", str(tokens["ops"]))
    code, _, err = run(capsys, "pause", "web", "--api", api, "--token-file", str(tokens["viewer"]))
    assert code == 3 and "does not allow this" in err
    code, out, err = run(capsys, "pause", "web", "--reason", "maintenance", *ops)
    assert (code, err) == (0, "")
    assert re.fullmatch(r"web: paused by api \(ops\) (just now|\d+s ago): maintenance — decisions start nothing "
                        r"\(`scaler resume web`\)\n", out), out
    code, out, _ = run(capsys, "status", *ops)
    lines = out.splitlines()
    assert lines[1].split()[6] == "PAUSED" and lines[2].split()[-3:] == ["no", "none", "yet"]
    assert " open     yes     hold at 1" in lines[3]
    assert [ln for ln in lines if ln.startswith("web: paused by api (ops)")]
    code, out, _ = run(capsys, "resume", "web", "--json", *ops)
    assert code == 0 and json.loads(out)["paused"] is None
    assert run(capsys, "resume", "web", *ops) == (0, "web: not paused: decisions act\n", "")
    assert "PAUSED" not in run(capsys, "status", *ops)[1]


def test_rollout_refused_started_and_its_progress(api: str, service: Service, tokens: dict[str, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ops = ("--api", api, "--token-file", str(tokens["ops"]))
    viewer = ("--api", api, "--token-file", str(tokens["viewer"]))
    assert run(capsys, "rollout", "web", "--status", *viewer) == (0, "web: no rollout yet\n", "")
    assert run(capsys, "rollout", "web", "--status", "--json", *viewer) == (0, "null\n", "")
    code, out, err = run(capsys, "rollout", "web", *ops)        # every member is on the pool's template
    assert (code, out) == (3, "")
    assert "answered HTTP 409 to POST /v1/pools/web/rollout: pool web: every member is on the current template" in err
    [old] = service.store.members("web")
    # The operator edits the pool's instance: options (a new image): its member is outdated.
    service.pools["web"] = PoolConfig.model_validate({"vip": "198.19.0.1", "instance": {"version": "2"}})
    template = service.pools["web"].instance_template()
    assert old.template != template
    code, out, err = run(capsys, "rollout", "web", *viewer)
    assert (code, out) == (3, "") and "does not allow this" in err and "HTTP 403" in err
    assert service.store.running_operation("web") is None
    assert run(capsys, "rollout", "web", "--status", *viewer)[1] == "web: no rollout yet\n"
    code, out, err = run(capsys, "rollout", "web", "--surge", "0", *ops)
    assert (code, out, err) == (1, "", "scaler: --surge 0: members replaced at a time, 1 to 100\n")
    code, _, err = run(capsys, "rollout", "nope", *ops)
    assert code == 1 and "unknown pool 'nope'" in err
    assert service.store.running_operation("web") is None

    code, out, err = run(capsys, "rollout", "web", "--surge", "2", *ops)
    assert (code, err) == (0, "")
    op = service.store.running_operation("web")
    assert op is not None and op.kind == "rollout"
    assert out == (f"web: rollout {op.id} started to template {template}: 1 outdated member to replace, surge 2 "
                   "(`scaler rollout web --status`)\n")
    code, out, err = run(capsys, "rollout", "web", *ops)        # one at a time
    assert (code, out) == (3, "")
    assert f"HTTP 409 to POST /v1/pools/web/rollout: pool web: operation {op.id} (rollout) is still running" in err

    code, out, err = run(capsys, "rollout", "web", "--status", *viewer)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert re.fullmatch(rf"web: rollout {op.id} to template {template}, surge 2: running for \S+", lines[0]), lines[0]
    assert lines[1:] == ["  replaced 0, outdated left 1, new in service 0", "  in flight 0, draining 0",
                         "  failed launches 0 of 4 (it stops at the limit or when the launch breaker opens)"]
    code, out, _ = run(capsys, "rollout", "web", "--status", "--json", *viewer)
    doc = json.loads(out)
    assert (doc["operation"], doc["state"], doc["outdated"], doc["surge"]) == (op.id, "running", [old.instance], 2)
    code, out, _ = run(capsys, "rollout", "web", "--status", "--surge", "3", *viewer)
    assert code == 1

    code, out, _ = run(capsys, "status", *viewer)
    notes = [ln for ln in out.splitlines() if ln.startswith("web: ")]
    assert [ln for ln in notes if ln.startswith(f"web: operation {op.id} rollout 1 → 1 running for ")
            and ln.endswith("(`scaler rollout web --status`)")]
    assert f"web: 1 member on another instance template than the pool's ({template})" in notes
    run(capsys, "pause", "web", *ops)
    assert "  paused with the pool: what is in flight finishes, nothing new starts (`scaler resume web`)" in \
        run(capsys, "rollout", "web", "--status", *viewer)[1].splitlines()


async def test_status_shows_standby_members_ready_and_wanted(service: Service, access: ApiConfig,
                                                             tokens: dict[str, Path],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    service.policies["web"] = service.policies["web"].model_copy(update={"standby": 1})
    reset_breaker(service.store, "web", time.time(), by="test")     # the engine boots no standby while it is open
    engine = Engine(service.store, {}, {}, service.pools, service.policies, service.metrics)
    lc = Lifecycle(service.store, FakeOrchestrator(FakeOrchestratorConfig(boot_probes=0)), FakeRouter(), NoDrainer(),
                   service.pools, service.metrics)
    engine.evaluate()
    for _ in range(4):
        await lc.reconcile()
    assert sorted(m.state for m in service.store.members("web")) == ["in_service", "standby"]
    with serve_app(create_app(service, access=access)) as url:
        code, out, err = run(capsys, "status", "--api", url, "--token-file", str(tokens["viewer"]))
    assert (code, err) == (0, "")
    header, api_row, web_row = out.splitlines()[1:4]
    assert header.split()[6] == "STANDBY"
    assert api_row.split()[6:8] == ["closed", "0/-"]
    assert web_row.split()[3:10] == ["in_service", "1,", "standby", "1", "down", "1", "closed"]
    assert web_row.split()[10] == "1/1"
    assert "outdated" not in out and "instance template" not in out
