"""The lab's application server: what each lab LB instance's HAProxy proxies to.

A small asyncio HTTP/1.1 server with keep-alive that answers every request with a short text body
after an optional delay (so load shows up in HAProxy as concurrent sessions). It is test equipment
for the lab only: it binds where it is told (127.0.0.1 inside an instance's namespace), never
decides anything and never talks to anything else.

    python -m actuators.lab.backend --port 8081 --delay-ms N [--pidfile P --daemon]

A request may ask for its own delay with `?delay_ms=N` (capped at 60 s), e.g. to hold a request
open across a drain, and for a body of its own size with `?bytes=N` (capped at 256 MiB): a repeated
64 KiB pattern, sent with content-length and written with backpressure, so large downloads cost
neither memory nor CPU (the load generator's `slow` and `download` flows use both). With `--daemon`
the parent returns only after the socket is bound and the pidfile written, like `haproxy -D`, so
"the command returned 0" means "it is listening".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from urllib.parse import parse_qs, urlsplit

MAX_HEADER_BYTES = 16384
MAX_DELAY_MS = 60_000
MAX_BODY_BYTES = 256 * 1024 * 1024
# What a `?bytes=N` body is made of: this pattern, repeated and cut at N.
FILL_CHUNK = b"scaler lab backend fill pattern\n" * 2048   # 64 KiB
# Longer than any keep-alive timeout HAProxy uses towards servers, so HAProxy (not us) closes
# idle server connections and never reuses one we are closing at the same moment.
IDLE_TIMEOUT_S = 120.0


def _query_int(target: str, name: str) -> int | None:
    values = parse_qs(urlsplit(target).query).get(name)
    if values:
        try:
            return int(values[0])
        except ValueError:
            pass
    return None


def request_delay_ms(target: str, default_ms: int) -> int:
    """The delay for one request: `?delay_ms=N` in the target if present and valid, else the default."""
    value = _query_int(target, "delay_ms")
    return default_ms if value is None else max(0, min(MAX_DELAY_MS, value))


def request_body_bytes(target: str) -> int | None:
    """The body size one request asks for with `?bytes=N` (capped), None if it asks for none."""
    value = _query_int(target, "bytes")
    return None if value is None else max(0, min(MAX_BODY_BYTES, value))


class Backend:
    def __init__(self, delay_ms: int, body: bytes) -> None:
        self.delay_ms = delay_ms
        self.body = body

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # the peer went away or misbehaved: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; True if the connection stays open for another."""
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
        if len(head) > MAX_HEADER_BYTES:
            return False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
            return False
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or "0")
        if length:
            await reader.readexactly(length)  # the body is not used, but must be consumed
        conn = headers.get("connection", "").lower()
        keep = ("close" not in conn) if version == "HTTP/1.1" else ("keep-alive" in conn)
        delay = request_delay_ms(target, self.delay_ms)
        if delay:
            await asyncio.sleep(delay / 1000)
        size = request_body_bytes(target)
        body_len = len(self.body) if size is None else size
        head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                + f"content-length: {body_len}\r\n".encode()
                + (b"" if keep else b"connection: close\r\n") + b"\r\n")
        if method == "HEAD":
            writer.write(head)
        elif size is None:
            writer.write(head + self.body)
        else:
            writer.write(head)
            await write_fill(writer, size)
        await writer.drain()
        return keep


async def write_fill(writer: asyncio.StreamWriter, size: int) -> None:
    """`size` bytes of the fill pattern, one chunk at a time, waiting for the peer to take each."""
    left = size
    while left > 0:
        chunk = FILL_CHUNK if left >= len(FILL_CHUNK) else FILL_CHUNK[:left]
        writer.write(chunk)
        left -= len(chunk)
        await writer.drain()


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def write_pidfile(path: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_own_pidfile(path: str) -> None:
    # Only if it still names us: a newer server may have replaced it.
    with contextlib.suppress(OSError, ValueError), open(path) as f:
        if int(f.read().strip() or "0") == os.getpid():
            os.unlink(path)


def daemonize(log_path: str | None) -> int:
    """Fork into the background. Returns the write end of a pipe to report readiness on."""
    read_fd, write_fd = os.pipe()
    if os.fork() > 0:
        # Parent: exit with the child's verdict, like `haproxy -D`.
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as r:
            verdict = r.read()
        os._exit(0 if verdict == b"ok" else 1)
    os.close(read_fd)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if log_path else devnull
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    return write_fd


async def serve(sock: socket.socket, backend: Backend, ready_fd: int | None) -> None:
    server = await asyncio.start_server(backend.handle, sock=sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready_fd is not None:
        os.write(ready_fd, b"ok")
        os.close(ready_fd)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m actuators.lab.backend", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--delay-ms", type=int, default=0, help="delay before every answer")
    ap.add_argument("--body", default="ok\n", help="response body")
    ap.add_argument("--pidfile", help="write the server's pid here once it listens")
    ap.add_argument("--daemon", action="store_true", help="fork; return once listening")
    ap.add_argument("--log", help="with --daemon: append stdout/stderr here")
    args = ap.parse_args(argv)
    try:
        sock = bind(args.host, args.port)  # before forking, so a bind error reaches the caller
    except OSError as exc:
        print(f"lab_backend: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    ready_fd = daemonize(args.log) if args.daemon else None
    if args.pidfile:
        write_pidfile(args.pidfile)
    try:
        asyncio.run(serve(sock, Backend(args.delay_ms, args.body.encode()), ready_fd))
    finally:
        if args.pidfile:
            remove_own_pidfile(args.pidfile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
