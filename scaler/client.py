"""The command line's client of the running service's HTTP API: where it is (a URL, or the unix socket
the API also serves), the bearer token it sends (`Authorization: Bearer <token>`, read from a file),
the CA that signs a TLS certificate, and errors an operator can act on.

Every failure is a ScalerError subclass carrying the command's exit code (scaler.cli, "Exit codes"):
`ApiError` (3) when the API cannot be reached, refuses the request or answers with an error;
`InputError` (1) when what the command was given is wrong (an unreadable token file, a pool the
service does not know): fixing the input helps, retrying does not.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaler.errors import ScalerError

if TYPE_CHECKING:       # imported when a request is made: `scaler --version` or `check` do without it
    import httpx

# Environment variables the client options default to (a command-line option wins).
ENV_API = "SCALER_API"
ENV_SOCKET = "SCALER_SOCKET"
ENV_TOKEN_FILE = "SCALER_TOKEN_FILE"
ENV_CACERT = "SCALER_CACERT"


class InputError(ScalerError):
    """What the command was given is wrong (a value, a file, a name): exit code 1, as for invalid
    configuration. (2 is argparse's: the command line does not parse.)"""

    exit_code = 1


class ApiError(ScalerError):
    """The API cannot be reached, refused the request (401, 403) or answered with an error: exit code 3."""

    exit_code = 3

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ApiTarget:
    """How to reach the API. `socket`: a unix socket path (then `base` only fills the Host header)."""

    base: str
    socket: str | None = None
    token_file: str | None = None
    token_from: str = "--token-file"        # how the token file was named, for messages
    cacert: str | None = None

    def where(self) -> str:
        return f"unix socket {self.socket}" if self.socket else self.base


def read_token(path: str, named: str = "--token-file") -> str:
    """The token in a file: its content without surrounding whitespace (a trailing newline is usual)."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise InputError(f"{named} {path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"{named} {path}: not a text file") from None
    if not token:
        raise InputError(f"{named} {path}: the file is empty")
    if any(c.isspace() for c in token) or not token.isprintable() or not token.isascii():
        raise InputError(f"{named} {path}: a token is one word of printable ASCII characters")
    return token


def _detail(r: httpx.Response) -> str:
    """The API's explanation: FastAPI's {"detail": …}, or the body's text."""
    try:
        body = r.json()
    except ValueError:
        return r.text.strip()[:500]
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return detail if isinstance(detail, str) else str(detail)[:500]
    return r.text.strip()[:500]


class ApiClient:
    """Synchronous requests to one API; `with ApiClient(target) as api: api.get_json("/v1/pools")`."""

    def __init__(self, target: ApiTarget, timeout: float = 10.0) -> None:
        import httpx

        self.target = target
        headers = {}
        if target.token_file:
            headers["Authorization"] = f"Bearer {read_token(target.token_file, target.token_from)}"
        verify: ssl.SSLContext | bool = True
        if target.cacert:
            try:
                verify = ssl.create_default_context(cafile=target.cacert)
            except (OSError, ssl.SSLError) as exc:
                raise InputError(f"--cacert {target.cacert}: cannot load it: {exc}") from None
        transport = httpx.HTTPTransport(uds=target.socket, verify=verify) if target.socket else None
        self._http = httpx.Client(base_url=target.base, headers=headers, timeout=timeout, verify=verify,
                                  transport=transport, trust_env=False)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
                ok: tuple[int, ...] = (200,), timeout: float | None = None) -> httpx.Response:
        """The response if its status is in `ok`; otherwise ApiError (InputError for an unknown pool)."""
        import httpx

        where = self.target.where()
        try:
            r = self._http.request(method, path, params=params, json=json,
                                   timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.HTTPError as exc:
            hint = ""
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                hint = " (a certificate this host does not trust: pass the CA with --cacert FILE)"
            elif self.target.socket and "Permission denied" in str(exc):
                hint = (" (the socket's owner and group may connect: is this user in its group? Else use --api "
                        "with --token-file)")
            raise ApiError(f"cannot reach the scaler API at {where}: {exc or type(exc).__name__}{hint}") from None
        if r.status_code in ok:
            return r
        detail = _detail(r)
        if r.status_code in (401, 403):
            raise ApiError(self._refused(r.status_code, detail), r.status_code)
        if r.status_code == 404 and detail.startswith("unknown pool"):
            raise InputError(detail)
        raise ApiError(f"the scaler API at {where} answered HTTP {r.status_code} to {method} {path}: {detail}",
                       r.status_code)

    def _refused(self, status: int, detail: str) -> str:
        t = self.target
        said = f" (HTTP {status}: {detail})" if detail else f" (HTTP {status})"
        if not t.token_file:
            return (f"the API refused the request: no credential — pass --token-file FILE (or set "
                    f"{ENV_TOKEN_FILE}), or use --socket PATH on the scaler's host{said}")
        if status == 401:
            return f"the API refused the request: the token in {t.token_file} is not valid{said}"
        return (f"the API refused the request: the token in {t.token_file} does not allow this "
                f"(a token with another scope is needed){said}")

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params).json()


def env(name: str) -> str | None:
    """An environment variable's value; unset and empty are the same."""
    return os.environ.get(name) or None


__all__ = ["ENV_API", "ENV_CACERT", "ENV_SOCKET", "ENV_TOKEN_FILE", "ApiClient", "ApiError", "ApiTarget",
           "InputError", "env", "read_token"]
