"""The API's listeners for real (scaler.apiserver): HTTPS from a certificate made by the test and a
client that verifies it, the unix socket (mode 0660, trusted), and the start-up problems each named
in one ScalerError — served by uvicorn on loopback in this process, against a real store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from scaler.api import create_app
from scaler.apiserver import ApiServer
from scaler.config import ServiceConfig
from scaler.errors import ScalerError
from scaler.store import Store
from tests.support.api import NOW, OPS_TOKEN, READ_TOKEN, View, api_config, bearer, self_signed
from tests.support.wait import eventually

pytestmark = pytest.mark.integration


def service_config(tmp: Path, **api: Any) -> ServiceConfig:
    """A scaler.yaml in `tmp` whose api section has the two test credentials and `api`."""
    access = api_config(tmp, host="127.0.0.1", port=0, **api)
    cfg = ServiceConfig.model_validate(
        {"orchestrator": {"driver": "fake"}, "router": {"driver": "fake"}, "collectors": {"h": {"driver": "haproxy"}},
         "pools": {"web": {"vip": "198.19.0.1"}}}, context={"base_dir": tmp})
    return cfg.model_copy(update={"api": access, "source": tmp / "scaler.yaml"})


@pytest.fixture
def view(store: Store) -> View:
    store.ensure_pool("web", "198.19.0.1", NOW)
    return View(store)


@contextlib.asynccontextmanager
async def serving(view: View, cfg: ServiceConfig) -> AsyncIterator[tuple[ApiServer, int]]:
    """The API served as `scaler run` serves it; (server, TCP port)."""
    server = ApiServer.open(create_app(view, lambda: NOW, access=cfg.api), cfg)
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: all(s.started for s, _ in server.servers), timeout_s=10, interval_s=0.01,
                         what="the API listening")
        yield server, int(server.servers[0][1].getsockname()[1])
    finally:
        server.stop()
        await asyncio.wait_for(task, 10)
        server.close()


async def test_https_with_a_client_that_verifies_the_certificate(view: View, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    cert, _ = self_signed(tmp_path / "tls")
    cfg = service_config(tmp_path, tls={"cert": "tls/localhost.crt", "key": "tls/localhost.key"})
    trusting = ssl.create_default_context(cafile=str(cert))
    caplog.set_level(logging.INFO, logger="scaler.access")
    async with serving(view, cfg) as (server, port):
        assert server.description == f"https://127.0.0.1:{port}"
        for host in ("localhost", "127.0.0.1"):        # the certificate's DNS name and its IP address
            async with httpx.AsyncClient(base_url=f"https://{host}:{port}", verify=trusting, trust_env=False) as c:
                assert (await c.get("/healthz")).status_code == 200
                r = await c.get("/v1/pools/web", headers=bearer(READ_TOKEN))
                assert r.status_code == 200 and r.json()["name"] == "web"
                assert (await c.post("/v1/reload")).status_code == 401
                assert (await c.post("/v1/reload", headers=bearer(OPS_TOKEN))).status_code == 200
        # A client that does not trust this certificate refuses to talk (so would a man in the middle's).
        async with httpx.AsyncClient(verify=ssl.create_default_context(), trust_env=False) as c:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await c.get(f"https://localhost:{port}/healthz")
        # Plain HTTP gets no answer from the TLS port.
        async with httpx.AsyncClient(trust_env=False) as c:
            with pytest.raises(httpx.HTTPError):
                await c.get(f"http://127.0.0.1:{port}/healthz")
    assert view.reloads == ["api", "api"]
    logged = [r.getMessage() for r in caplog.records if r.name == "scaler.access"]
    assert len(logged) == 4 and logged[1].startswith("POST /v1/reload 200 credential=ops client=127.0.0.1:")


async def test_a_certificate_for_another_name_is_refused_by_the_client(view: View, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls", name="scaler.example", ip="192.0.2.1")
    cfg = service_config(tmp_path, tls={"cert": str(cert), "key": str(key)})
    trusting = ssl.create_default_context(cafile=str(cert))
    async with serving(view, cfg) as (_, port), httpx.AsyncClient(verify=trusting, trust_env=False) as c:
        with pytest.raises(httpx.ConnectError, match="match"):
            await c.get(f"https://127.0.0.1:{port}/healthz")


async def test_the_unix_socket_is_0660_trusted_and_removed_at_the_end(view: View, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "api.sock"
    cfg = service_config(tmp_path, socket="api.sock")
    caplog.set_level(logging.INFO, logger="scaler.access")
    async with serving(view, cfg) as (server, port):
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        assert server.description == f"http://127.0.0.1:{port} and unix:{path}"
        local = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(path)), base_url="http://scaler")
        async with local, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as tcp:
            assert (await tcp.post("/v1/reload")).status_code == 401
            assert (await local.post("/v1/reload")).status_code == 200
            assert (await local.get("/v1/pools/web")).json()["name"] == "web"
    assert view.reloads == ["api"] and not path.exists()
    assert [r.getMessage() for r in caplog.records if r.name == "scaler.access"][-1] == \
        "POST /v1/reload 200 credential=@unix-socket client=unix-socket"


async def test_a_stale_socket_file_is_replaced(view: View, tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with socket.socket(socket.AF_UNIX) as old:       # a scaler killed with SIGKILL leaves its file
        old.bind(str(path))
    local = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(path)), base_url="http://s")
    async with serving(view, service_config(tmp_path, socket=str(path))), local:
        assert (await local.get("/v1/cluster")).status_code == 200


def _problem(view: View, cfg: ServiceConfig) -> str:
    with pytest.raises(ScalerError) as err:
        ApiServer.open(create_app(view, lambda: NOW, access=cfg.api), cfg)
    return str(err.value)


def test_start_up_problems_are_one_line_each_and_leave_nothing_bound(view: View, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = service_config(tmp_path, socket="api.sock").model_copy()
        cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"port": port})})
        assert _problem(view, cfg) == (f"api: cannot listen on 127.0.0.1:{port}: the address is already in use "
                                       "(another scaler or another program listens there) (api.host, api.port in "
                                       "scaler.yaml)")
        assert not (tmp_path / "api.sock").exists()

    live = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(live))
        other.listen()
        assert _problem(view, service_config(tmp_path, socket="live.sock")) == \
            f"api.socket: another process serves {live} (another scaler?)"
        assert live.exists()
    (tmp_path / "file").write_text("")
    assert _problem(view, service_config(tmp_path, socket="file")) == \
        f"api.socket: {tmp_path}/file exists and is not a socket; remove it or choose another path"
    assert _problem(view, service_config(tmp_path, socket="nodir/api.sock")) == \
        f"api.socket: cannot create {tmp_path}/nodir/api.sock: its directory does not exist"
    assert _problem(view, service_config(tmp_path, socket="file/api.sock")) == \
        f"api.socket: cannot create {tmp_path}/file/api.sock: a part of the path is not a directory"
    long = "x" * 120
    assert "AF_UNIX path too long" in _problem(view, service_config(tmp_path, socket=long))

    # The TLS files are checked when scaler.yaml is loaded, and again at start (they may have changed).
    cert, key = self_signed(tmp_path / "tls")
    cfg = service_config(tmp_path, tls={"cert": str(cert), "key": str(key)})
    _, other_key = self_signed(tmp_path / "other", name="other")
    os.replace(other_key, key)
    assert _problem(view, cfg) == f"api.tls.key: {key} is not the key of the certificate in {cert}"
    cert.write_text("not a certificate\n")
    assert _problem(view, cfg) == f"api.tls.cert: {cert} holds no PEM certificate"
    cert.unlink()
    assert _problem(view, cfg) == f"api.tls.cert: cannot read {cert}: No such file or directory"
