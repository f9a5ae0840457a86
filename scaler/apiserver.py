"""The API's listeners: TCP on `api.host:api.port` (HTTPS when `api.tls` is set) and, when
`api.socket` is set, a unix socket whose requests are trusted (scaler.auth).

Every socket is bound before the service starts acting, by this module rather than by uvicorn, so
that a port in use, an unusable certificate or a socket path that cannot be created ends
`scaler run` with one ScalerError line naming the problem — uvicorn would log and `sys.exit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from scaler.auth import via_unix_socket
from scaler.config import ServiceConfig
from scaler.errors import ScalerError
from scaler.tlsfiles import check_tls

SOCKET_MODE = 0o660


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _why(exc: OSError) -> str:
    hints = {
        errno.EADDRINUSE: "the address is already in use (another scaler or another program listens there)",
        errno.EACCES: "permission denied",
        errno.EADDRNOTAVAIL: "this machine has no such address",
        errno.ENOENT: "its directory does not exist",
        errno.ENOTDIR: "a part of the path is not a directory",
        errno.EROFS: "the file system is read-only",
    }
    return hints.get(exc.errno or 0, exc.strerror or str(exc))


def bind_tcp(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket, or ScalerError naming the address and the problem."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        why = _why(exc)
        if exc.errno == errno.EACCES and port < 1024:
            why += " (a port below 1024 needs CAP_NET_BIND_SERVICE)"
        elif isinstance(exc, socket.gaierror):
            why = f"cannot resolve {host!r}: {exc.strerror or exc}"
        raise ScalerError(f"api: cannot listen on {where}: {why} (api.host, api.port in scaler.yaml)") from None
    return sock


def bind_unix(path: Path) -> socket.socket:
    """A bound unix socket at `path`, mode 0660 from the start. A stale socket file (nobody
    listening) is replaced; a live one or any other file is left alone (ScalerError)."""
    if path.is_symlink() or path.exists():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ScalerError(f"api.socket: {path} exists and is not a socket; remove it or choose another path")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink(missing_ok=True)      # stale: its server is gone
            else:
                raise ScalerError(f"api.socket: another process serves {path} (another scaler?)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask makes the file 0660 as it is created: no moment where others could connect.
    old = os.umask(0o117)
    try:
        sock.bind(str(path))
    except (OSError, ValueError) as exc:
        sock.close()
        why = _why(exc) if isinstance(exc, OSError) else str(exc)
        raise ScalerError(f"api.socket: cannot create {path}: {why}") from None
    finally:
        os.umask(old)
    os.chmod(path, SOCKET_MODE)
    return sock


def _config(app: ASGIApp, **kwargs: Any) -> uvicorn.Config:
    # proxy_headers off: the access log names the peer that connected, not what a header claims.
    # log_config None: uvicorn logs through the process's logging setup (--log-format).
    return uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, proxy_headers=False,
                          log_config=None, **kwargs)


class ApiServer:
    """Bound listeners and their uvicorn servers; `serve()` runs them, `close()` removes the socket file."""

    def __init__(self, servers: list[tuple[_Server, socket.socket]], socket_path: Path | None,
                 description: str) -> None:
        self.servers = servers
        self.socket_path = socket_path
        self.description = description

    @classmethod
    def open(cls, app: ASGIApp, cfg: ServiceConfig) -> ApiServer:
        """Bind every listener of `cfg.api` and load the TLS files; ScalerError naming what failed
        (then nothing stays bound)."""
        api = cfg.api
        opened: list[socket.socket] = []
        socket_path: Path | None = None
        try:
            kwargs: dict[str, Any] = {}
            if api.tls is not None:
                cert, key = cfg.resolve(api.tls.cert), cfg.resolve(api.tls.key)
                try:
                    check_tls(cert, key)
                except ValueError as exc:
                    raise ScalerError(f"api.tls.{exc}") from None
                kwargs = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
            tcp = bind_tcp(api.host, api.port)
            opened.append(tcp)
            config = _config(app, **kwargs)
            try:
                config.load()
            except (OSError, ValueError) as exc:     # ssl.SSLError is an OSError
                raise ScalerError(f"api.tls: cannot load {kwargs.get('ssl_certfile')}: {exc}") from None
            servers = [(_Server(config), tcp)]
            scheme = "https" if api.tls is not None else "http"
            host, port = tcp.getsockname()[:2]
            description = f"{scheme}://{host}:{port}" if tcp.family == socket.AF_INET else \
                f"{scheme}://[{host}]:{port}"
            if api.socket is not None:
                socket_path = cfg.resolve(api.socket)
                uds = bind_unix(socket_path)
                opened.append(uds)
                unix_config = _config(via_unix_socket(app))
                unix_config.load()
                servers.append((_Server(unix_config), uds))
                description += f" and unix:{socket_path}"
        except BaseException:
            for sock in opened:
                sock.close()
            if socket_path is not None and len(opened) > 1:
                socket_path.unlink(missing_ok=True)
            raise
        return cls(servers, socket_path, description)

    async def serve(self) -> None:
        """Serve until `stop()`; ScalerError if a server ends on its own with an error."""
        tasks = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in self.servers]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.stop()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
        if failed:
            raise ScalerError(f"API server on {self.description} failed: {failed[0]}")

    def stop(self) -> None:
        for server, _ in self.servers:
            server.should_exit = True

    def close(self) -> None:
        for _, sock in self.servers:
            sock.close()
        if self.socket_path is not None:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(self.socket_path.lstat().st_mode):
                    self.socket_path.unlink()
