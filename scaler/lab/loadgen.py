"""An HTTP/1.1 load generator for the lab, run inside the lab's client namespace.

Two kinds of load against `http://HOST:PORT/`, both changeable while it runs:
- short requests: one new TCP connection per request at a target rate (requests/s), with bounded
  concurrency; a request that cannot start because the bound is reached is counted as `skipped`;
- keep-alive clients: K clients each looping requests on one persistent connection (optional pause
  between requests), reconnecting when the server answers `connection: close` (normal, not a failure).

It counts ok and failed requests, failures by kind, and which LB answered (the `x-lb` response
header the lab's HAProxy adds). Every response is read completely (by content-length or chunked
framing), so a reset is never hidden behind a receive buffer. It is bounded: `--max-seconds` and
`--max-requests` always apply and it stops by itself. Standard library only; it must never send
traffic anywhere but the target it is given.

Retry rule (RFC 9110 §9.2.2 idempotent methods, RFC 9112 §9.3.1 retrying requests): a GET sent on a
*reused* keep-alive connection that fails with EOF or a reset before a single byte of response
arrived is retried once on a new connection. That is the race of a server closing an idle
connection just as the client sends on it; the request never reached the application. Such retries
are counted in `retried` and by cause in `retries` (`eof`: the server had closed it; `reset`: an RST,
e.g. a flow moved to an LB that does not know it); the request counts as ok or failed by the outcome
of the retry. Nothing else is retried: not a fresh connection, not a timeout, not a partial
response. `--no-retry` turns the retry off, so every such reset counts as a failure.

Control (with `--control`): JSON objects on stdin, one per line, e.g.
`{"short_rps": 50, "keepalive_clients": 4, "keepalive_pause_ms": 10}` or `{"stop": true}`; EOF on
stdin stops the run (the controller is gone). Output: one JSON line per interval on stdout
(`"type": "tick"`), an acknowledgement per command (`"type": "control"`), and a final
`"type": "summary"` line. A tick carries the interval's counts (`ok`, `failed`, `retried`,
`connects`, `skipped`, `by_lb`, `failures`, `retries`, `latency_ms` p50/p90/p99/max) plus `t`,
`inflight`, the current `short_rps` / `keepalive_clients` and running `total`s; the summary carries
the whole run's counts plus `reason` (max_seconds | max_requests | stopped | control_closed | signal),
`elapsed_s` and `aborted` (requests cut off at the end, counted neither ok nor failed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

MAX_HEAD_BYTES = 65536
MAX_BODY_BYTES = 16 * 1024 * 1024
LATENCY_SAMPLES_MAX = 200_000
# After a failure a keep-alive client waits this long before reconnecting: a refused connect
# answers in microseconds and a tight loop would only burn the CPU the LBs need.
FAILURE_BACKOFF_S = 0.05
# At a bound, requests in flight get this long to finish (and be counted) before they are cut off
# and counted as `aborted`: a run lasts at most max_seconds + GRACE_S.
GRACE_S = 1.0

Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class RequestFailed(Exception):
    """A request failed; `kind` names how. `no_response` is True if no response byte arrived."""

    def __init__(self, kind: str, detail: str = "", *, no_response: bool = False) -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.no_response = no_response


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]      # names lowercased; a repeated header keeps its last value
    body_len: int
    keep_alive: bool             # False: the server closes (or we must close) after this response


def _os_kind(exc: OSError, phase: str) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connect_refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return f"{phase}_reset" if phase == "connect" else "reset"
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    if isinstance(exc, TimeoutError) or exc.errno == errno.ETIMEDOUT:
        return f"{phase}_timeout" if phase == "connect" else "timeout"
    name = errno.errorcode.get(exc.errno or 0, "unknown").lower()
    return f"{phase}_{name}" if phase == "connect" else name


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """The status line and headers. A failure before the first byte is marked `no_response`."""
    try:
        first = await reader.readexactly(1)
    except asyncio.IncompleteReadError:
        raise RequestFailed("eof", "connection closed before any response byte", no_response=True) from None
    except OSError as exc:
        raise RequestFailed(_os_kind(exc, "request"), str(exc), no_response=True) from exc
    try:
        rest = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise RequestFailed("eof", f"closed after {len(exc.partial) + 1} bytes of headers") from None
    except asyncio.LimitOverrunError:
        raise RequestFailed("bad_response", "response head too long") from None
    except OSError as exc:
        raise RequestFailed(_os_kind(exc, "request"), str(exc)) from exc
    return first + rest


def parse_head(head: bytes) -> tuple[str, int, dict[str, str]]:
    """(version, status, headers) of a response head ending in CRLF CRLF."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise RequestFailed("bad_response", f"bad status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise RequestFailed("bad_response", f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return parts[0], int(parts[1]), headers


async def _read_exactly(reader: asyncio.StreamReader, n: int) -> None:
    try:
        await reader.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        raise RequestFailed("eof", f"body cut after {len(exc.partial)} of {n} bytes") from None
    except OSError as exc:
        raise RequestFailed(_os_kind(exc, "request"), str(exc)) from exc


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n")
    except asyncio.IncompleteReadError:
        raise RequestFailed("eof", "chunked body cut") from None
    except asyncio.LimitOverrunError:
        raise RequestFailed("bad_response", "chunk line too long") from None
    except OSError as exc:
        raise RequestFailed(_os_kind(exc, "request"), str(exc)) from exc


async def _read_chunked(reader: asyncio.StreamReader) -> int:
    total = 0
    while True:
        line = await _read_line(reader)
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise RequestFailed("bad_response", f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            while (await _read_line(reader)) != b"\r\n":   # trailers, then the final CRLF
                pass
            return total
        total += size
        if total > MAX_BODY_BYTES:
            raise RequestFailed("bad_response", "body too large")
        await _read_exactly(reader, size + 2)


async def read_response(reader: asyncio.StreamReader, *, head_request: bool = False) -> Response:
    """Read one complete response (1xx interim responses are skipped).

    Raises `RequestFailed`; its `no_response` is True only if not a single byte arrived.
    """
    while True:
        version, status, headers = parse_head(await _read_head(reader))
        if not (100 <= status < 200 and status != 101):
            break
    conn = headers.get("connection", "").lower()
    keep_alive = ("close" not in conn) if version == "HTTP/1.1" else ("keep-alive" in conn)
    if head_request or status in (204, 304) or 100 <= status < 200:
        return Response(status, headers, 0, keep_alive)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return Response(status, headers, await _read_chunked(reader), keep_alive)
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise RequestFailed("bad_response", "bad content-length") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise RequestFailed("bad_response", f"content-length {length} out of range")
        await _read_exactly(reader, length)
        return Response(status, headers, length, keep_alive)
    # No framing: the body runs to EOF and the connection cannot be reused.
    try:
        body = await reader.read(MAX_BODY_BYTES)
    except OSError as exc:
        raise RequestFailed(_os_kind(exc, "request"), str(exc)) from exc
    return Response(status, headers, len(body), False)


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    s = sorted(samples)

    def at(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))], 2)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(s[-1], 2)}


@dataclass
class Counters:
    ok: int = 0
    failed: int = 0
    retried: int = 0
    connects: int = 0
    skipped: int = 0
    by_lb: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)

    def copy(self) -> Counters:
        return Counters(self.ok, self.failed, self.retried, self.connects, self.skipped,
                        Counter(self.by_lb), Counter(self.failures), Counter(self.retries))

    def minus(self, other: Counters) -> dict[str, Any]:
        return {
            "ok": self.ok - other.ok, "failed": self.failed - other.failed,
            "retried": self.retried - other.retried, "connects": self.connects - other.connects,
            "skipped": self.skipped - other.skipped,
            "by_lb": {k: v for k, v in (self.by_lb - other.by_lb).items() if v},
            "failures": {k: v for k, v in (self.failures - other.failures).items() if v},
            "retries": {k: v for k, v in (self.retries - other.retries).items() if v},
        }

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "failed": self.failed, "retried": self.retried,
                "connects": self.connects, "skipped": self.skipped,
                "by_lb": dict(self.by_lb), "failures": dict(self.failures), "retries": dict(self.retries)}


@dataclass
class LoadConfig:
    host: str
    port: int = 80
    path: str = "/"
    short_rps: float = 0.0
    short_concurrency: int = 256
    keepalive_clients: int = 0
    keepalive_pause_ms: float = 0.0
    max_seconds: float = 30.0
    max_requests: int = 1_000_000
    timeout_s: float = 5.0
    connect_timeout_s: float = 2.0
    lb_header: str = "x-lb"
    interval_s: float = 1.0
    retry: bool = True          # the safe retry of a reused connection that got no response byte


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = 0   # responses received on it: > 0 means a reused connection

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class LoadGen:
    """The load generator. `opener` opens one connection to the target (a parameter for tests)."""

    def __init__(self, cfg: LoadConfig, *, opener: Opener | None = None,
                 emit: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.cfg = cfg
        self.short_rps = cfg.short_rps
        self.keepalive_pause_ms = cfg.keepalive_pause_ms
        self.total = Counters()
        self._opener = opener or self._open_tcp
        self._emit = emit or _print_json
        self._started = 0
        self._inflight = 0
        self._aborted = 0
        self._latencies: list[float] = []
        self._tick_latencies: list[float] = []
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self._stop_reason = ""
        self._clients: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._next_client = 0
        self._short_tasks: set[asyncio.Task[None]] = set()
        self._t0 = 0.0
        self._request = (f"GET {cfg.path} HTTP/1.1\r\nHost: {cfg.host}\r\n"
                         "User-Agent: scaler-loadgen\r\n").encode()

    # ---- control -----------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        """Apply one control command; returns what was applied. Raises ValueError if invalid."""
        unknown = set(command) - {"short_rps", "keepalive_clients", "keepalive_pause_ms", "stop"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        if command.get("stop"):
            self.stop("stopped")
        if "short_rps" in command:
            self.short_rps = max(0.0, float(command["short_rps"]))
            self._changed.set()
        if "keepalive_pause_ms" in command:
            self.keepalive_pause_ms = max(0.0, float(command["keepalive_pause_ms"]))
        if "keepalive_clients" in command:
            self._set_clients(max(0, int(command["keepalive_clients"])))
        return command

    def _set_clients(self, n: int) -> None:
        live = [cid for cid, (task, stop) in self._clients.items() if not stop.is_set() and not task.done()]
        for cid in live[n:]:
            self._clients[cid][1].set()   # it finishes its current request, then closes
        for _ in range(n - len(live)):
            if self._stop.is_set():
                break
            cid = self._next_client
            self._next_client += 1
            stop = asyncio.Event()
            self._clients[cid] = (asyncio.create_task(self._keepalive_client(stop)), stop)

    # ---- requests ----------------------------------------------------------------------------

    async def _open_tcp(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.cfg.host, self.cfg.port)

    async def _connect(self) -> _Conn:
        self.total.connects += 1
        try:
            reader, writer = await asyncio.wait_for(self._opener(), self.cfg.connect_timeout_s)
        except TimeoutError:
            raise RequestFailed("connect_timeout") from None
        except OSError as exc:
            raise RequestFailed(_os_kind(exc, "connect"), str(exc)) from exc
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Conn(reader, writer)

    async def _exchange(self, conn: _Conn, close: bool) -> Response:
        try:
            conn.writer.write(self._request + (b"Connection: close\r\n\r\n" if close else b"\r\n"))
            await conn.writer.drain()
        except OSError as exc:
            # Nothing was read yet, so no response byte: a reused connection may be retried.
            raise RequestFailed(_os_kind(exc, "request"), str(exc), no_response=True) from exc
        try:
            resp = await asyncio.wait_for(read_response(conn.reader), self.cfg.timeout_s)
        except TimeoutError:
            raise RequestFailed("timeout") from None
        conn.used += 1
        return resp

    async def _request_on(self, conn: _Conn | None, close: bool) -> tuple[Response, _Conn]:
        """One request on `conn` (or a new connection), with the safe retry on a reused one."""
        if conn is None:
            conn = await self._connect()
        try:
            return await self._exchange(conn, close), conn
        except RequestFailed as exc:
            await conn.close()
            if not (self.cfg.retry and exc.no_response and conn.used > 0):
                raise
            self.total.retries[exc.kind] += 1
        self.total.retried += 1
        conn = await self._connect()
        try:
            return await self._exchange(conn, close), conn
        except RequestFailed:
            await conn.close()
            raise

    def _reserve(self) -> bool:
        if self._stop.is_set() or self._started >= self.cfg.max_requests:
            return False
        self._started += 1
        return True

    def _record(self, started: float, resp: Response | None, failure: RequestFailed | None) -> None:
        if resp is not None:
            lb = resp.headers.get(self.cfg.lb_header)
            if lb:
                self.total.by_lb[lb] += 1
            if 200 <= resp.status < 300:
                self.total.ok += 1
                ms = (time.monotonic() - started) * 1000
                self._tick_latencies.append(ms)
                if len(self._latencies) < LATENCY_SAMPLES_MAX:
                    self._latencies.append(ms)
            else:
                self.total.failed += 1
                self.total.failures[f"http_{resp.status}"] += 1
        elif failure is not None:
            self.total.failed += 1
            self.total.failures[failure.kind] += 1
        if self.total.ok + self.total.failed >= self.cfg.max_requests:
            self.stop("max_requests")

    async def _short_request(self) -> None:
        self._inflight += 1
        started = time.monotonic()
        conn: _Conn | None = None
        try:
            resp, conn = await self._request_on(None, close=True)
            self._record(started, resp, None)
            # Let the server close first (it said `connection: close`), so TIME_WAIT stays on
            # its side and the client does not run out of ports at high rates.
            if not resp.keep_alive:
                with contextlib.suppress(TimeoutError, OSError):
                    await asyncio.wait_for(conn.reader.read(1), 0.5)
        except RequestFailed as exc:
            self._record(started, None, exc)
        finally:
            self._inflight -= 1
            if conn is not None:
                await conn.close()

    async def _keepalive_client(self, stop: asyncio.Event) -> None:
        conn: _Conn | None = None
        try:
            while not stop.is_set() and self._reserve():
                if conn is not None and not conn.usable():
                    await conn.close()   # the server closed it while idle: a normal reconnect
                    conn = None
                started = time.monotonic()
                self._inflight += 1
                try:
                    resp, conn = await self._request_on(conn, close=False)
                except RequestFailed as exc:
                    self._record(started, None, exc)
                    conn = None
                    await asyncio.sleep(FAILURE_BACKOFF_S)
                    continue
                finally:
                    self._inflight -= 1
                self._record(started, resp, None)
                if not resp.keep_alive:
                    await conn.close()
                    conn = None
                if self.keepalive_pause_ms > 0:
                    await asyncio.sleep(self.keepalive_pause_ms / 1000)
        finally:
            if conn is not None:
                await conn.close()

    async def _short_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while not self._stop.is_set():
            rate = self.short_rps
            if rate <= 0:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.2)
                next_t = loop.time()
                continue
            now = loop.time()
            if next_t > now:
                # Short sleeps so a rate change takes effect at once.
                await asyncio.sleep(min(next_t - now, 0.05))
                continue
            if now - next_t > 1.0:
                next_t = now   # stalled: do not burst to catch up
            next_t += 1.0 / rate
            if len(self._short_tasks) >= self.cfg.short_concurrency:
                self.total.skipped += 1
                continue
            if not self._reserve():
                return
            task = asyncio.create_task(self._short_request())
            self._short_tasks.add(task)
            task.add_done_callback(self._short_tasks.discard)

    # ---- run ---------------------------------------------------------------------------------

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        prev = self.total.copy()
        next_t = self._t0 + self.cfg.interval_s
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_t - loop.time()))
            if self._stop.is_set():
                return
            next_t += self.cfg.interval_s
            now_counters = self.total.copy()
            line: dict[str, Any] = {"type": "tick", "t": round(loop.time() - self._t0, 3)}
            line.update(now_counters.minus(prev))
            line["latency_ms"] = percentiles(self._tick_latencies)
            line["inflight"] = self._inflight
            line["short_rps"] = self.short_rps
            line["keepalive_clients"] = sum(1 for _, s in self._clients.values() if not s.is_set())
            line["total"] = {"ok": now_counters.ok, "failed": now_counters.failed,
                             "retried": now_counters.retried}
            self._tick_latencies = []
            prev = now_counters
            self._emit(line)

    async def run(self, control: asyncio.StreamReader | None = None) -> dict[str, Any]:
        """Run until a bound is reached, a stop command arrives or `control` reaches EOF."""
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        deadline = loop.call_later(self.cfg.max_seconds, self.stop, "max_seconds")
        tasks = [asyncio.create_task(self._short_loop()), asyncio.create_task(self._ticker())]
        if control is not None:
            tasks.append(asyncio.create_task(self._control_loop(control)))
        self._set_clients(self.cfg.keepalive_clients)
        try:
            await self._stop.wait()
        finally:
            deadline.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for _, stop in self._clients.values():
                stop.set()
            pending = {t for t, _ in self._clients.values()} | set(self._short_tasks)
            # Give requests in flight a moment to finish so they are counted, then abort them.
            if pending:
                _, still = await asyncio.wait(pending, timeout=min(self.cfg.timeout_s, GRACE_S))
                self._aborted = self._inflight   # requests cut short, counted neither ok nor failed
                for t in still:
                    t.cancel()
                await asyncio.gather(*still, return_exceptions=True)
        summary: dict[str, Any] = {"type": "summary", "reason": self._stop_reason,
                                   "elapsed_s": round(loop.time() - self._t0, 3)}
        summary.update(self.total.as_dict())
        summary["aborted"] = self._aborted
        summary["latency_ms"] = percentiles(self._latencies)
        self._emit(summary)
        return summary

    async def _control_loop(self, control: asyncio.StreamReader) -> None:
        while True:
            line = await control.readline()
            if not line:
                self.stop("control_closed")
                return
            if not line.strip():
                continue
            try:
                command = json.loads(line)
                if not isinstance(command, dict):
                    raise ValueError("a command is a JSON object")
                self._emit({"type": "control", "applied": self.apply(command)})
            except (ValueError, TypeError) as exc:
                self._emit({"type": "error", "error": f"bad control line {line[:200]!r}: {exc}"})


def _print_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _main_async(cfg: LoadConfig, control: bool) -> dict[str, Any]:
    gen = LoadGen(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gen.stop, "signal")
    return await gen.run(await _stdin_reader() if control else None)


def parse_args(argv: list[str] | None) -> tuple[LoadConfig, argparse.Namespace]:
    ap = argparse.ArgumentParser(prog="python -m scaler.lab.loadgen",
                                 description="Bounded HTTP/1.1 load against one address (the lab's VIP).")
    ap.add_argument("--host", required=True, help="target IP address (the VIP)")
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--path", default="/")
    ap.add_argument("--short-rps", type=float, default=0.0, help="new-connection requests per second")
    ap.add_argument("--short-concurrency", type=int, default=256)
    ap.add_argument("--keepalive-clients", type=int, default=0)
    ap.add_argument("--keepalive-pause-ms", type=float, default=0.0)
    ap.add_argument("--max-seconds", type=float, default=30.0)
    ap.add_argument("--max-requests", type=int, default=1_000_000)
    ap.add_argument("--timeout-s", type=float, default=5.0, help="per-request response timeout")
    ap.add_argument("--connect-timeout-s", type=float, default=2.0)
    ap.add_argument("--lb-header", default="x-lb")
    ap.add_argument("--interval-s", type=float, default=1.0)
    ap.add_argument("--no-retry", action="store_true",
                    help="do not retry a reused connection that failed before any response byte")
    ap.add_argument("--control", action="store_true", help="read JSON commands from stdin; EOF stops")
    ap.add_argument("--pidfile", help="write our pid here while running")
    args = ap.parse_args(argv)
    if args.max_seconds <= 0 or args.max_requests <= 0:
        ap.error("--max-seconds and --max-requests must be positive")
    cfg = LoadConfig(
        host=args.host, port=args.port, path=args.path, short_rps=args.short_rps,
        short_concurrency=args.short_concurrency, keepalive_clients=args.keepalive_clients,
        keepalive_pause_ms=args.keepalive_pause_ms, max_seconds=args.max_seconds,
        max_requests=args.max_requests, timeout_s=args.timeout_s,
        connect_timeout_s=args.connect_timeout_s, lb_header=args.lb_header.lower(),
        interval_s=args.interval_s, retry=not args.no_retry)
    return cfg, args


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    try:
        asyncio.run(_main_async(cfg, args.control))
    finally:
        if args.pidfile:
            with contextlib.suppress(OSError):
                os.unlink(args.pidfile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
