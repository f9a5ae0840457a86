"""Who may use the HTTP API, and the record of what they changed.

    api:
      anonymous_read: false
      credentials:
        - {name: ops, token: {file: /etc/scaler/api-ops-token}, scopes: [read, operate]}
        - {name: prometheus, token: {file: /etc/scaler/api-prom-token}, scopes: [read]}

Scopes: `read` (every GET under /v1 and /metrics), `operate` (every state change: POST /v1/reload,
breaker reset, pause/resume, …). A route declares what it needs with a dependency:

    @app.post("/v1/pools/{pool}/pause", dependencies=[Depends(require_scope("operate"))])
    def pause(pool: str, who: Operator) -> …:       # or so, to record who.name

Rules, in order: a request that came over the unix socket (`api.socket`, mode 0660) without an
`Authorization` header is trusted with every scope — who can connect is decided by the socket
file's owner and group, as for Docker's or systemd's sockets. A request without a header gets
`read` if `anonymous_read` is set, else 401 (with WWW-Authenticate, and when no credential is
configured at all, a message saying how to add one). A header must be `Bearer <token>` of a
configured credential (compared as SHA-256 digests in constant time, scaler.credentials), else 401;
a credential without the scope gets 403 naming the scope. A refused request changes nothing: the
dependency runs before the handler. /healthz, /docs and /openapi.json are open (load balancers,
systemd, the documentation); the alert receivers and signal URLs keep their own credentials
(scaler.alerts).

Every request that is not a GET/HEAD/OPTIONS is logged on the `scaler.access` logger once
answered: method, path (never the query: signed URLs carry their signature there), status, the
credential's name and the client.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final

from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scaler.config import ApiConfig, ApiCredential, ApiScope
from scaler.credentials import digest, lookup

access_log = logging.getLogger("scaler.access")

SCOPES: Final[frozenset[ApiScope]] = frozenset({"read", "operate"})
SCHEME = "apiToken"
# Keys this module puts in the ASGI scope of a request.
VIA_SOCKET = "scaler.via_unix_socket"
CREDENTIAL = "scaler.credential"
# Names that no configured credential can have (the pattern forbids "@").
SOCKET_PRINCIPAL = "@unix-socket"
ANONYMOUS = "@anonymous"

HOW_TO_CONFIGURE = ("add one under api.credentials in scaler.yaml, e.g. {name: ops, token: {file: "
                    "/etc/scaler/api-token}, scopes: [read, operate]}, or use the unix socket (api.socket)")

_bearer = HTTPBearer(auto_error=False, scheme_name=SCHEME, bearerFormat="opaque token",
                     description="a token from api.credentials in scaler.yaml (`Authorization: Bearer …`)")


@dataclass(frozen=True)
class Principal:
    """Who made a request and what it may do."""

    name: str
    scopes: frozenset[str]


class Access:
    """The `api:` credentials of scaler.yaml as a lookup table (digests computed once)."""

    def __init__(self, cfg: ApiConfig) -> None:
        self.anonymous_read = cfg.anonymous_read
        self._table: tuple[tuple[bytes, ApiCredential], ...] = tuple((digest(c.token), c) for c in cfg.credentials)

    def identify(self, scope: ApiScope, authorization: str | None, *, local: bool, what: str) -> Principal:
        """Who sent the request (for a request needing `scope`, named by `what`), or HTTPException 401."""
        if authorization is None:
            if local:
                return Principal(SOCKET_PRINCIPAL, SCOPES)
            if scope == "read" and self.anonymous_read:
                return Principal(ANONYMOUS, frozenset({"read"}))
        if not self._table:
            hint = "set api.anonymous_read: true, " if scope == "read" else ""
            raise _unauthorized(f"no API credential is configured, so {what} is refused: {hint}{HOW_TO_CONFIGURE}")
        if authorization is None:
            raise _unauthorized(f"{what} needs a credential with scope {scope!r}: Authorization: Bearer <token> "
                                "(api.credentials in scaler.yaml)")
        kind, _, token = authorization.strip().partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise _unauthorized("the API takes Authorization: Bearer <token>", error="invalid_request")
        # ASGI servers decode headers as latin-1: these are the bytes that came off the wire.
        credential = lookup(self._table, token.strip().encode("latin-1", "replace"))
        if credential is None:
            raise _unauthorized("invalid credential", error="invalid_token")
        return Principal(credential.name, frozenset(credential.scopes))


def _unauthorized(message: str, error: str | None = None) -> HTTPException:
    challenge = 'Bearer realm="scaler"' + (f', error="{error}"' if error else "")
    return HTTPException(401, message, headers={"WWW-Authenticate": challenge})


def install(app: FastAPI, cfg: ApiConfig) -> None:
    """Give `app` the access rules of `cfg`, the access log, and the security scheme in its
    OpenAPI document (each route that needs a scope lists it, with its 401 and 403 answers)."""
    app.state.access = Access(cfg)
    app.add_middleware(AccessLog)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = generate()
        _document_scopes(doc, cfg.anonymous_read)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def require_scope(scope: ApiScope) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency: the request's Principal if it may use `scope`, else 401/403 before the
    handler runs. Put it on a route: `dependencies=[Depends(require_scope("operate"))]`, or take
    the principal as a parameter to record who acted."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r} (scopes: {', '.join(sorted(SCOPES))})")

    # A default, not an annotation: FastAPI resolves string annotations in the module, not in here.
    documented = Security(_bearer, scopes=[scope])      # the scheme and the scope in the OpenAPI document

    async def dependency(request: Request, _: HTTPAuthorizationCredentials | None = documented) -> Principal:
        access: Access = request.app.state.access
        what = f"{request.method} {request.url.path}"
        try:
            principal = access.identify(scope, request.headers.get("authorization"),
                                        local=bool(request.scope.get(VIA_SOCKET)), what=what)
        except HTTPException:
            _count_refusal(request, scope, 401)
            raise
        request.scope[CREDENTIAL] = principal.name
        if scope not in principal.scopes:
            _count_refusal(request, scope, 403)
            raise HTTPException(403, f"credential {principal.name!r} lacks scope {scope!r}, which {what} needs",
                                headers={"WWW-Authenticate": f'Bearer realm="scaler", error="insufficient_scope", '
                                         f'scope="{scope}"'})
        return principal

    return dependency


def _count_refusal(request: Request, scope: ApiScope, status: int) -> None:
    """scaler_api_refused_total{scope, status}, when the app was given the counter (scaler.api)."""
    counter = getattr(request.app.state, "refused", None)
    if counter is not None:
        counter.labels(scope, str(status)).inc()


# For a handler that records who acted: `def pause(pool: str, who: Operator) -> …`.
Operator = Annotated[Principal, Depends(require_scope("operate"))]
Reader = Annotated[Principal, Depends(require_scope("read"))]


REFUSAL_SCHEMA = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}


def _document_scopes(doc: dict[str, Any], anonymous_read: bool) -> None:
    """Each operation that needs a scope already names it in its security requirement (OpenAPI 3.1
    lets a bearer requirement list role names); add its 401 and 403 answers, and the anonymous
    alternative for reads when `anonymous_read` is set."""
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            needs = [scope for req in operation.get("security", []) for scope in req.get(SCHEME, [])]
            if not needs:
                continue
            if anonymous_read and needs == ["read"]:
                operation["security"].append({})
            responses = operation.setdefault("responses", {})
            responses.setdefault("401", {"description": "no credential, or not a valid one",
                                         "content": {"application/json": {"schema": REFUSAL_SCHEMA}}})
            responses.setdefault("403", {"description": f"the credential lacks scope {needs[0]!r}",
                                         "content": {"application/json": {"schema": REFUSAL_SCHEMA}}})


def via_unix_socket(app: ASGIApp) -> ASGIApp:
    """The app as served on the unix socket: its requests are marked as local (trusted)."""

    async def marked(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope[VIA_SOCKET] = True
        await app(scope, receive, send)

    return marked


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class AccessLog:
    """Logs every state-changing request once answered, on `scaler.access` (refusals as warnings)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        status = 500        # what the server answers if the app raises

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            credential = scope.get(CREDENTIAL) or _alerts_sender(state) or "-"
            client = "unix-socket" if scope.get(VIA_SOCKET) else (
                f"{scope['client'][0]}:{scope['client'][1]}" if scope.get("client") else "-")
            fields = {"method": scope["method"], "path": scope["path"], "status": status, "credential": credential,
                      "client": client}
            access_log.log(logging.WARNING if status in (401, 403) else logging.INFO,
                           "%s %s %d credential=%s client=%s", scope["method"], scope["path"], status, credential,
                           client, extra={"access": fields})


def _alerts_sender(state: dict[str, Any]) -> str | None:
    """The alert receivers' own credential or signing key (scaler.alerts puts them on the request)."""
    sender = state.get("alerts_sender")
    if sender is not None:
        return str(sender[0])
    verified = state.get("alerts_verified")
    key_id = getattr(verified, "key_id", None)
    return f"key:{key_id}" if key_id else None
