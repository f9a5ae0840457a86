"""HTTP plumbing shared by the HTTP collectors (`haproxy`, `prometheus_scrape`, `prometheus_query`):
one httpx client per unix socket path, a hard deadline on each exchange, credentials sent as headers,
and every transport failure mapped to a `CollectorError` with a stable `reason`.

It must not interpret answers beyond the status line and the charset, and must never put a
credential into a message, a log line or a `repr`: messages name the target by `describe()`, which
drops any `user:password@` from a URL.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from collectors.base import Target
from collectors.errors import CollectorAuthError, CollectorError, CollectorParseError, CollectorTimeout
from collectors.secrets import Secret

__all__ = [
    "BasicAuth",
    "HttpFetcher",
    "HttpOptions",
    "TransportFactory",
    "check_status",
    "decode_text",
    "default_transport_factory",
    "describe",
    "no_tcp_netns",
    "redact_url",
]

TransportFactory = Callable[[str | None], httpx.AsyncBaseTransport]


class BasicAuth(BaseModel):
    """HTTP basic auth; the password is a secret reference (`{file: …}` / `{env: …}`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str = Field(min_length=1)
    password: Secret


class HttpOptions(BaseModel):
    """Options every HTTP collector shares.

    `bearer_token` / `basic_auth`: at most one, both secret references. `ca_file`: a PEM bundle to
    verify an HTTPS server with (default: the system's); `tls_verify: false` turns verification off
    (a lab with self-signed certificates; never in production).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(default=2.0, gt=0, le=60)
    bearer_token: Secret | None = None
    basic_auth: BasicAuth | None = None
    ca_file: Path | None = None
    tls_verify: bool = True

    @model_validator(mode="after")
    def _one_auth(self) -> Self:
        if self.bearer_token is not None and self.basic_auth is not None:
            raise ValueError("set either bearer_token or basic_auth, not both")
        if self.ca_file is not None and not self.tls_verify:
            raise ValueError("ca_file has no effect with tls_verify: false")
        return self

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header, built when needed and never stored on an object that logs."""
        if self.bearer_token is not None:
            return {"Authorization": f"Bearer {self.bearer_token.get_secret_value()}"}
        if self.basic_auth is not None:
            raw = f"{self.basic_auth.username}:{self.basic_auth.password.get_secret_value()}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}
        return {}

    def verify(self) -> ssl.SSLContext | bool:
        if not self.tls_verify:
            return False
        if self.ca_file is not None:
            return ssl.create_default_context(cafile=str(self.ca_file))
        return True


def default_transport_factory(*, keepalive: bool, verify: ssl.SSLContext | bool = True) -> TransportFactory:
    """Production transports. `keepalive=False` for HAProxy members: after a reload (`-sf`) a pooled
    connection still reaches the *old* process while it drains, which reports the old counters; a
    fresh connection always reaches the process that owns the listener. A Prometheus server has no
    such issue and keeps its connections."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None if keepalive else 0)

    def factory(uds: str | None) -> httpx.AsyncBaseTransport:
        return httpx.AsyncHTTPTransport(uds=uds, limits=limits, retries=0, verify=verify)

    return factory


def redact_url(url: str) -> str:
    """`url` without a `user:password@` part (credentials belong in `basic_auth`, never in messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def describe(target: Target) -> str:
    """How messages name a target: its key and address, never a credential."""
    via = f" via unix:{target.uds}" if target.uds else ""
    return f"{target.key} ({redact_url(target.url)}{via})"


def check_status(response: httpx.Response, what: str) -> None:
    """Raise for anything but 200: 401/403 as `CollectorAuthError`, others as `http_<code>`."""
    status = response.status_code
    if status in (401, 403):
        raise CollectorAuthError(f"{what}: HTTP {status} (credentials refused or missing)")
    if status != 200:
        raise CollectorError(f"{what}: HTTP {status}", reason=f"http_{status}")


def decode_text(response: httpx.Response, what: str) -> str:
    try:
        return response.content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CollectorParseError(f"{what}: body is not UTF-8: {exc}") from exc


class HttpFetcher:
    """One collector's HTTP clients (one per unix socket path; None = TCP) and its error mapping.

    `request` bounds the whole exchange by `timeout_s` (httpx's own timeout is per phase: a server
    trickling bytes would otherwise hold a poll for long) and raises `CollectorError`s whose message
    starts with `what`; it does not look at the status code (see `check_status`).
    """

    def __init__(
        self, *, timeout_s: float, transport_factory: TransportFactory, headers: Mapping[str, str] | None = None
    ) -> None:
        self.timeout_s = timeout_s
        self._transport_factory = transport_factory
        self._headers = dict(headers or {})
        self._clients: dict[str | None, httpx.AsyncClient] = {}

    def __repr__(self) -> str:
        # Never show headers: they may carry the Authorization value.
        return f"HttpFetcher(timeout_s={self.timeout_s:g}, clients={len(self._clients)})"

    def _client(self, uds: str | None) -> httpx.AsyncClient:
        client = self._clients.get(uds)
        if client is None:
            # trust_env=False: an operator's HTTP(S)_PROXY must not reroute reads of LB members.
            client = httpx.AsyncClient(
                transport=self._transport_factory(uds), timeout=httpx.Timeout(self.timeout_s), trust_env=False
            )
            self._clients[uds] = client
        return client

    async def request(
        self,
        method: str,
        url: httpx.URL | str,
        what: str,
        *,
        uds: str | None = None,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        client = self._client(uds)
        all_headers = {**self._headers, **(headers or {})}
        try:
            # httpx's timeout is per phase (connect, each read); this bounds the whole exchange.
            async with asyncio.timeout(self.timeout_s):
                return await client.request(method, url, params=params, data=data, headers=all_headers)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise CollectorTimeout(f"{what}: no answer within {self.timeout_s:g}s") from exc
        except httpx.ConnectError as exc:
            raise CollectorError(f"{what}: connect failed: {exc}", reason="connect") from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise CollectorError(f"{what}: bad URL: {exc}", reason="config") from exc
        except httpx.HTTPError as exc:
            # Connection reset mid-answer, malformed HTTP, ...: the source was reached but not read.
            raise CollectorError(f"{what}: {type(exc).__name__}: {exc}", reason="protocol") from exc

    async def close(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.aclose()


def no_tcp_netns(target: Target, what: str) -> None:
    """HTTP collectors cannot open TCP connections from another network namespace (yet): say so
    instead of silently connecting from ours. A unix socket path works from any namespace."""
    if target.netns and not target.uds:
        raise CollectorError(
            f"{what}: netns {target.netns!r} is not supported for TCP targets of this collector; "
            "reach the source through a unix socket (target uds)",
            reason="config",
        )
