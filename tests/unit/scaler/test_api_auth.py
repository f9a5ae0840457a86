"""Who may use the API (scaler.auth): every state change needs a credential with scope `operate`,
every read `read` (or `anonymous_read`); a refused request changes nothing and every state change
is logged with the credential. The routes are taken from the API's own OpenAPI document, so a new
state-changing route is covered here without being listed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from scaler.alerts import AlertsConfig
from scaler.api import create_app
from scaler.auth import Operator, require_scope, via_unix_socket
from scaler.breaker import LaunchBreakerConfig, breaker_state, record_launch_failure
from scaler.config import ApiConfig, load_config
from scaler.errors import ConfigError
from scaler.service import REGISTRIES
from scaler.store import Store
from tests.support.api import NOW, OPS_TOKEN, READ_TOKEN, WRONG_TOKEN, View, api_config, bearer
from tests.support.examples import copy_examples


@pytest.fixture
def view(store: Store) -> View:
    store.ensure_pool("web", "198.19.0.1", NOW)
    # An open launch breaker: a refused reset must leave it open.
    record_launch_failure(store, "web", LaunchBreakerConfig(failures=1, cool_off=0), "web-1", "boot failed", NOW)
    return View(store)


def app_for(view: View, access: ApiConfig) -> FastAPI:
    return create_app(view, lambda: NOW, access=access)


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


async def operations(app: FastAPI, scope: str) -> list[tuple[str, str]]:
    """(method, path with the pool filled in) of every operation that needs `scope`."""
    async with client(app) as c:
        doc = (await c.get("/openapi.json")).json()
    found = [(method.upper(), path.replace("{pool}", "web"))
             for path, ops in doc["paths"].items() for method, op in ops.items()
             if any(scope in req.get("apiToken", []) for req in op.get("security", []))]
    return sorted(found)


async def snapshot(app: FastAPI, view: View) -> Any:
    """Everything a state change could have changed, read with the ops credential."""
    async with client(app) as c:
        pool = (await c.get("/v1/pools/web", headers=bearer(OPS_TOKEN))).json()
        events = (await c.get("/v1/events", headers=bearer(OPS_TOKEN))).json()
        policies = (await c.get("/v1/policies", headers=bearer(OPS_TOKEN))).json()
    return pool, events, policies, list(view.reloads)


async def test_the_state_changing_routes_are_the_known_ones_and_need_operate(view: View, tmp_path: Path) -> None:
    app = app_for(view, api_config(tmp_path))
    changes = await operations(app, "operate")
    assert {("POST", "/v1/reload"), ("POST", "/v1/pools/web/breaker/reset")} <= set(changes)
    assert all(method != "GET" for method, _ in changes)
    # Every non-GET route is either a state change of the API or an alert receiver (its own auth).
    async with client(app) as c:
        doc = (await c.get("/openapi.json")).json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method != "get" and (method.upper(), path.replace("{pool}", "web")) not in changes:
                assert "alerts" in op.get("tags", []), (method, path)


@pytest.mark.parametrize(("headers", "status", "challenge", "detail"), [
    pytest.param({}, 401, 'Bearer realm="scaler"', "needs a credential with scope 'operate'", id="no credential"),
    pytest.param(bearer(WRONG_TOKEN), 401, 'error="invalid_token"', "invalid credential", id="wrong token"),
    pytest.param({"Authorization": f"Basic {OPS_TOKEN}"}, 401, 'error="invalid_request"', "Bearer <token>",
                 id="not a bearer token"),
    pytest.param({"Authorization": "Bearer "}, 401, 'error="invalid_request"', "Bearer <token>", id="empty token"),
    pytest.param(bearer(OPS_TOKEN + "x"), 401, 'error="invalid_token"', "invalid credential",
                 id="the right token with a byte more"),
    pytest.param(bearer(READ_TOKEN), 403, 'error="insufficient_scope", scope="operate"', "credential 'reader' "
                 "lacks scope 'operate'", id="read-only credential"),
])
async def test_every_state_change_is_refused_without_operate_and_changes_nothing(
        view: View, tmp_path: Path, caplog: pytest.LogCaptureFixture, headers: dict[str, str], status: int,
        challenge: str, detail: str) -> None:
    app = app_for(view, api_config(tmp_path))
    before = await snapshot(app, view)
    assert before[0]["launch_breaker"]["status"] == "open"
    changes = await operations(app, "operate")
    caplog.set_level(logging.INFO, logger="scaler.access")
    async with client(app) as c:
        for method, path in changes:
            r = await c.request(method, path, headers=headers)
            assert r.status_code == status, (method, path, r.text)
            assert challenge in r.headers["www-authenticate"] and detail in r.json()["detail"], (path, r.headers)
            if status == 403:
                assert f"which {method} {path} needs" in r.json()["detail"]
    assert await snapshot(app, view) == before
    assert view.reloads == [] and breaker_state(view.store, "web", NOW).status == "open"
    logged = [r.getMessage() for r in caplog.records if r.name == "scaler.access"]
    who = "reader" if status == 403 else "-"
    assert logged == [f"{method} {path} {status} credential={who} client=127.0.0.1:123" for method, path in changes]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "scaler.access")


async def test_an_operate_credential_changes_state_and_the_access_log_names_it(
        view: View, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = app_for(view, api_config(tmp_path))
    caplog.set_level(logging.INFO, logger="scaler.access")
    async with client(app) as c:
        r = await c.post("/v1/pools/web/breaker/reset", headers=bearer(OPS_TOKEN))
        assert r.status_code == 200 and r.json()["status"] == "closed"
        r = await c.post("/v1/reload", headers=bearer(OPS_TOKEN))
        assert r.status_code == 200 and r.json()["trigger"] == "api"
        # Reads are not access-logged.
        assert (await c.get("/v1/pools/web", headers=bearer(OPS_TOKEN))).status_code == 200
    assert view.reloads == ["api"] and breaker_state(view.store, "web", NOW).status == "closed"
    assert any("reset by api (ops)" in e.message for e in view.store.events("web"))
    records = [r for r in caplog.records if r.name == "scaler.access"]
    assert [r.getMessage() for r in records] == [
        "POST /v1/pools/web/breaker/reset 200 credential=ops client=127.0.0.1:123",
        "POST /v1/reload 200 credential=ops client=127.0.0.1:123"]
    # The fields, for a structured (JSON) log format.
    assert records[1].access == {"method": "POST", "path": "/v1/reload", "status": 200,  # type: ignore[attr-defined]
                                 "credential": "ops", "client": "127.0.0.1:123"}


async def test_the_read_scope_reads_everything_and_nothing_reads_without_it(view: View, tmp_path: Path) -> None:
    (tmp_path / "op-only").write_text("operate-only-token-0123456789\n")
    access = api_config(tmp_path)
    access = access.model_copy(update={"credentials": [*access.credentials, ApiConfig.model_validate(
        {"credentials": [{"name": "op-only", "token": {"file": str(tmp_path / "op-only")}, "scopes": ["operate"]}]}
    ).credentials[0]]})
    app = app_for(view, access)
    reads = await operations(app, "read")
    assert {("GET", "/metrics"), ("GET", "/v1/pools"), ("GET", "/v1/pools/web/why"), ("GET", "/v1/events"),
            ("GET", "/v1/pools/web/alarms"), ("GET", "/v1/policies"), ("GET", "/v1/cluster")} <= set(reads)
    assert all(method == "GET" for method, _ in reads)
    async with client(app) as c:
        for _, path in reads:
            assert (await c.get(path, headers=bearer(READ_TOKEN))).status_code == 200, path
            assert (await c.get(path, headers=bearer(OPS_TOKEN))).status_code == 200, path
            assert (await c.get(path)).status_code == 401, path
            assert (await c.get(path, headers=bearer(WRONG_TOKEN))).status_code == 401, path
            r = await c.get(path, headers={"Authorization": "Bearer operate-only-token-0123456789"})
            assert r.status_code == 403 and "lacks scope 'read'" in r.json()["detail"], path
        # Open without a credential: health checks (load balancers, systemd), the documentation.
        for path in ("/healthz", "/openapi.json", "/docs"):
            assert (await c.get(path)).status_code == 200, path


async def test_anonymous_read_allows_reads_only(view: View, tmp_path: Path) -> None:
    app = app_for(view, api_config(tmp_path, anonymous_read=True))
    async with client(app) as c:
        for _, path in await operations(app, "read"):
            assert (await c.get(path)).status_code == 200, path
            # A credential that is presented must be valid: no silent fallback to anonymous.
            assert (await c.get(path, headers=bearer(WRONG_TOKEN))).status_code == 401, path
        for method, path in await operations(app, "operate"):
            assert (await c.request(method, path)).status_code == 401, path
    assert view.reloads == [] and breaker_state(view.store, "web", NOW).status == "open"


async def test_with_no_credential_configured_everything_but_health_is_refused_with_how_to_configure(
        view: View) -> None:
    app = app_for(view, ApiConfig())
    async with client(app) as c:
        r = await c.post("/v1/reload")
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="scaler"'
        assert "no API credential is configured" in r.json()["detail"]
        assert "api.credentials in scaler.yaml" in r.json()["detail"] and "api.socket" in r.json()["detail"]
        r = await c.get("/v1/pools")
        assert r.status_code == 401 and "api.anonymous_read: true" in r.json()["detail"]
        assert (await c.post("/v1/reload", headers=bearer(OPS_TOKEN))).status_code == 401
        assert (await c.get("/healthz")).status_code == 200
    assert view.reloads == []


async def test_requests_over_the_unix_socket_are_trusted(view: View, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    app = app_for(view, api_config(tmp_path))
    caplog.set_level(logging.INFO, logger="scaler.access")
    async with client(via_unix_socket(app)) as local, client(app) as tcp:
        assert (await tcp.post("/v1/reload")).status_code == 401
        assert (await local.get("/v1/pools")).status_code == 200
        r = await local.post("/v1/pools/web/breaker/reset")
        assert r.status_code == 200 and r.json()["status"] == "closed"
        # A token sent over the socket is checked like anywhere else (and names who acted).
        assert (await local.post("/v1/reload", headers=bearer(WRONG_TOKEN))).status_code == 401
        assert (await local.post("/v1/reload", headers=bearer(READ_TOKEN))).status_code == 403
        assert (await local.post("/v1/reload", headers=bearer(OPS_TOKEN))).status_code == 200
    assert view.reloads == ["api"]
    assert any("reset by api (@unix-socket)" in e.message for e in view.store.events("web"))
    assert [r.getMessage() for r in caplog.records if r.name == "scaler.access"] == [
        "POST /v1/reload 401 credential=- client=127.0.0.1:123",
        "POST /v1/pools/web/breaker/reset 200 credential=@unix-socket client=unix-socket",
        "POST /v1/reload 401 credential=- client=unix-socket",
        "POST /v1/reload 403 credential=reader client=unix-socket",
        "POST /v1/reload 200 credential=ops client=unix-socket"]


async def test_a_new_route_declares_its_scope_with_the_dependency(view: View, tmp_path: Path) -> None:
    """What later endpoints (pause, resume, …) do: the scope, 401/403 and the OpenAPI entry follow."""
    app = app_for(view, api_config(tmp_path))
    acted: list[str] = []

    @app.post("/v1/pools/{pool}/frobnicate", dependencies=[Depends(require_scope("operate"))])
    def frobnicate(pool: str) -> dict[str, str]:
        acted.append(pool)
        return {"pool": pool}

    @app.post("/v1/pools/{pool}/twiddle")
    def twiddle(pool: str, who: Operator) -> dict[str, str]:
        acted.append(who.name)
        return {"by": who.name}

    async with client(app) as c:
        for path in ("/v1/pools/web/frobnicate", "/v1/pools/web/twiddle"):
            assert (await c.post(path)).status_code == 401
            assert (await c.post(path, headers=bearer(READ_TOKEN))).status_code == 403
            assert (await c.post(path, headers=bearer(OPS_TOKEN))).status_code == 200
        doc = (await c.get("/openapi.json")).json()
    assert acted == ["web", "ops"]
    for path in ("/v1/pools/{pool}/frobnicate", "/v1/pools/{pool}/twiddle"):
        op = doc["paths"][path]["post"]
        assert op["security"] == [{"apiToken": ["operate"]}] and {"401", "403"} <= set(op["responses"])
    with pytest.raises(ValueError, match="unknown scope 'admin'"):
        require_scope("admin")  # type: ignore[arg-type]


@pytest.mark.parametrize("anonymous_read", [False, True])
async def test_the_openapi_document_declares_the_scheme_and_each_routes_scope(
        view: View, tmp_path: Path, anonymous_read: bool) -> None:
    app = app_for(view, api_config(tmp_path, anonymous_read=anonymous_read))
    async with client(app) as c:
        doc = (await c.get("/openapi.json")).json()
    scheme = doc["components"]["securitySchemes"]["apiToken"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer" and "api.credentials" in scheme["description"]
    paths = doc["paths"]
    assert paths["/v1/reload"]["post"]["security"] == [{"apiToken": ["operate"]}]
    assert paths["/v1/pools/{pool}/breaker/reset"]["post"]["security"] == [{"apiToken": ["operate"]}]
    read = [{"apiToken": ["read"]}] + ([{}] if anonymous_read else [])
    assert paths["/v1/pools"]["get"]["security"] == read and paths["/metrics"]["get"]["security"] == read
    assert paths["/v1/pools/{pool}/alarms"]["get"]["security"] == read
    assert "security" not in paths["/healthz"]["get"]
    for op in (paths["/v1/reload"]["post"], paths["/v1/pools"]["get"]):
        assert op["responses"]["401"]["content"]["application/json"]["schema"]["required"] == ["detail"]
        assert "403" in op["responses"]
    # The alert receivers keep their own credentials (alerts.*.credentials).
    assert {"bearer", "basic"} <= set(next(iter(r)) for r in paths["/v1/alerts/alertmanager"]["post"]["security"])


# --- scaler.yaml: the api section's mistakes, each with FILE:LINE:COL ------------------------------

ANON = "  anonymous_read: true"


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    copy_examples(tmp_path)
    for name, token in (("t1", "first-token-0123456789"), ("t2", "second-token-0123456789"), ("short", "abc")):
        (tmp_path / name).write_text(token + "\n")
    return tmp_path / "scaler.yaml"


def api_line(conf: Path, new: str) -> tuple[int, str]:
    """Replace the example's anonymous_read line by `new`: (its line number, the line)."""
    lines = conf.read_text().split("\n")
    n = next(i for i, line in enumerate(lines) if line.startswith(ANON))
    lines[n] = new
    conf.write_text("\n".join(lines))
    return n + 1, new


@pytest.mark.parametrize(("line", "at", "expected"), [
    pytest.param("  credentials: [{name: a, token: {file: t1}, scopes: [read, admin]}]", "admin",
                 "api.credentials.0.scopes.1: Input should be 'read' or 'operate'", id="unknown scope"),
    pytest.param("  credentials: [{name: a, token: {file: t1}, scopes: []}]", "scopes",
                 "api.credentials.0.scopes: List should have at least 1 item", id="no scope"),
    pytest.param("  credentials: [{name: a, token: {file: t1}, scopes: [read]}, {name: b, token: {file: t1}, "
                 "scopes: [operate]}]", "credentials", "api.credentials: two credentials have the same secret",
                 id="the same secret twice"),
    pytest.param("  credentials: [{name: a, token: {file: t1}, scopes: [read]}, {name: a, token: {file: t2}, "
                 "scopes: [read]}]", "credentials", "api.credentials: credential names must be unique",
                 id="the same name twice"),
    pytest.param("  credentials: [{name: a, token: {file: missing}, scopes: [read]}]", "token",
                 "api.credentials.0.token: cannot read secret file {dir}/missing: No such file or directory",
                 id="missing token file"),
    pytest.param("  credentials: [{name: a, token: {file: short}, scopes: [read]}]", "token",
                 "api.credentials.0.token: token is shorter than 16 characters", id="short token"),
    pytest.param("  credentials: [{name: a, token: first-token-0123456789, scopes: [read]}]", "token",
                 "api.credentials.0.token: write credentials as {file: PATH} or {env: VARIABLE}, not inline",
                 id="inline token"),
    pytest.param("  credentials: [{name: a b, token: {file: t1}, scopes: [read]}]", "name",
                 "api.credentials.0.name: String should match pattern", id="bad name"),
    pytest.param("  tls: {cert: nocert.pem, key: t1}", "tls", "api.tls: cert: cannot read {dir}/nocert.pem: No such "
                 "file or directory", id="missing certificate"),
    pytest.param("  tls: {cert: t1, key: t2}", "tls", "api.tls: cert: {dir}/t1 holds no PEM certificate",
                 id="not a certificate"),
    pytest.param("  anonymous_read: maybe", "anonymous_read", "api.anonymous_read: Input should be a valid boolean",
                 id="not a boolean"),
])
def test_api_config_errors_name_the_line(conf: Path, line: str, at: str, expected: str) -> None:
    n, text = api_line(conf, line)
    with pytest.raises(ConfigError) as err:
        load_config(conf, REGISTRIES)
    col = text.index(at) + 1
    want = f"{conf}:{n}:{col}: " + expected.replace("{dir}", str(conf.parent))
    assert any(p.startswith(want) for p in err.value.problems), (want, err.value.problems)


async def test_alert_deliveries_are_access_logged_with_their_own_sender(view: View, tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "am-token").write_text("alertmanager-token-0123456789\n")
    view.alerts = AlertsConfig.model_validate(
        {"alertmanager": {"credentials": [{"name": "am-prod", "token": {"file": "am-token"}, "pools": ["web"]}]}},
        context={"base_dir": tmp_path})
    app = app_for(view, api_config(tmp_path))
    caplog.set_level(logging.INFO, logger="scaler.access")
    async with client(app) as c:
        # The receivers check their own credentials (an API token is not one of them).
        assert (await c.post("/v1/alerts/alertmanager", json={}, headers=bearer(OPS_TOKEN))).status_code == 401
        r = await c.post("/v1/alerts/alertmanager", json={"alerts": "not a list"},
                         headers=bearer("alertmanager-token-0123456789"))
        assert r.status_code == 422
        r = await c.post("/v1/pools/web/signal/scale-out?kid=k&exp=1&sig=x")
        assert r.status_code == 401
    assert [r.getMessage() for r in caplog.records if r.name == "scaler.access"] == [
        "POST /v1/alerts/alertmanager 401 credential=- client=127.0.0.1:123",
        "POST /v1/alerts/alertmanager 422 credential=am-prod client=127.0.0.1:123",
        # The query (a URL's signature) is never logged.
        "POST /v1/pools/web/signal/scale-out 401 credential=- client=127.0.0.1:123"]
