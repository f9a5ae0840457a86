"""An HTTP/1.1 load generator for the lab, run inside the lab's client namespace.

Five kinds of flows against `http://HOST:PORT/`, all changeable while it runs:
- `short`: one new TCP connection per request at a target rate (requests/s), with bounded
  concurrency; a request that cannot start because the bound is reached is counted as `skipped`;
- `keepalive`: K clients each looping requests on one persistent connection (optional pause
  between requests), reconnecting when the server answers `connection: close` (normal, not a failure);
- `slow`: N clients, each looping one request on a new connection that the backend answers only
  after a random 20-28 s (`?delay_ms=`, during which the client sends nothing), with a large body
  (4 MiB by default, `?bytes=`) read completely. The client's receive buffer is small (SO_RCVBUF
  64 KiB by default), so the body needs many ACKs after the silence: a flow moved to another LB
  while it was silent breaks there (the other LB answers the ACKs with a reset) instead of hiding
  in a buffer;
- `download`: N clients, each looping one large download (50 MiB by default, `?bytes=`) on a new
  connection, read completely at a bounded rate (8 MiB/s by default), so each lasts seconds;
- `idle`: N keep-alive connections, each silent `idle_pause_s` (25 s by default) between requests.
  The server's keep-alive timeout must be longer (the lab's `keepalive_timeout_s`); a connection
  the server closed (FIN) during the silence is a normal reconnect, counted in `idle_closed`.
`slow` and `download` need the lab backend's `?delay_ms=N&bytes=N` (`actuators/lab/backend.py`).

Every response is read completely (by content-length or chunked framing), so a reset is never
hidden behind a receive buffer. A flow is ok when a complete 2xx response arrived (for `slow` and
`download`: with exactly the body size asked for); anything short of that is a failure, counted by
cause: `connect_refused`, `connect_timeout`, `connect_reset`, `unreachable`, `reset`, `eof` (closed
before or inside the response head), `short_read` (the body cut by a close), `timeout`, `http_NNN`,
`bad_response`, `wrong_length`. It counts which LB answered (the `x-lb` response header the lab's
HAProxy adds), for failures too when the head had arrived. It is bounded: `--max-seconds` and
`--max-requests` (flows of every kind) always apply and it stops by itself. Standard library only;
it must never send traffic anywhere but the target it is given.

Retry rule (RFC 9110 §9.2.2 idempotent methods, RFC 9112 §9.3.1 retrying requests), `keepalive`
only: a GET sent on a *reused* keep-alive connection that fails with EOF or a reset before a single
byte of response arrived is retried once on a new connection. That is the race of a server closing
an idle connection just as the client sends on it; the request never reached the application. Such
retries are counted in `retried` and by cause in `retries` (`eof`: the server had closed it;
`reset`: an RST, e.g. a flow moved to an LB that does not know it); the request counts as ok or
failed by the outcome of the retry. Nothing else is retried: not a fresh connection (`short`,
`slow`, `download`), not an `idle` connection (a reset after its silence is what it is there to
count), not a timeout, not a partial response. `--no-retry` turns the retry off.

Control (with `--control`): JSON objects on stdin, one per line, e.g.
`{"short_rps": 50, "keepalive_clients": 4, "keepalive_pause_ms": 10}`, `{"slow_clients": 8,
"slow_delay_s": "20:28", "downloads": 12, "idle_clients": 8}` or `{"stop": true}` (the keys are
the CLI options'); EOF on stdin stops the run (the controller is gone). Sizes, delays and rates
apply to the flows started after the change; fewer clients finish their flow in progress first.

Output: one JSON line per interval on stdout (`"type": "tick"`), an acknowledgement per command
(`"type": "control"`), and a final `"type": "summary"` line. A tick carries the interval's counts
summed over every kind (`ok`, `failed`, `retried`, `connects`, `skipped`, `bytes`, `idle_closed`,
`by_lb`, `failures`, `retries`), `latency_ms` p50/p90/p99/max of the `short` and `keepalive`
requests, `t`, `inflight`, the current `short_rps` / `keepalive_clients`, running `total`s, and
`kinds`: per kind the same counts plus `inflight`, its running `total` (`ok`, `failed`) and, for
the client kinds, `clients`. The summary carries the whole run's counts, the same way, plus
`reason` (max_seconds | max_requests | stopped | control_closed | signal), `elapsed_s` and
`aborted` (flows cut off at the end, counted neither ok nor failed); each kind in its `kinds` adds
its `aborted` and `latency_ms` (request sent → last body byte).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import math
import os
import random
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

KiB = 1024
MiB = 1024 * 1024
MAX_HEAD_BYTES = 65536
MAX_BODY_BYTES = 16 * MiB           # short, keepalive and idle responses
MAX_FLOW_BYTES = 256 * MiB          # slow and download bodies: the lab backend's cap on `?bytes=`
MAX_DELAY_S = 60.0                  # the lab backend's cap on `?delay_ms=`
READ_CHUNK = 64 * KiB
LATENCY_SAMPLES_MAX = 200_000
# After a failure a client waits this long before its next flow: a refused connect answers in
# microseconds and a tight loop would only burn the CPU the LBs need.
FAILURE_BACKOFF_S = 0.05
# At a bound, flows in flight get this long to finish (and be counted) before they are cut off
# and counted as `aborted`: a run lasts at most max_seconds + GRACE_S.
GRACE_S = 1.0
# How long a client waits for the server's FIN after a `connection: close` response, so that
# TIME_WAIT stays on the server's side.
SERVER_CLOSE_WAIT_S = 0.5

KINDS = ("short", "keepalive", "slow", "download", "idle")
CLIENT_KINDS = ("keepalive", "slow", "download", "idle")      # a number of looping clients each
LATENCY_KINDS = ("short", "keepalive")                          # the top-level `latency_ms`

DEFAULT_SLOW_DELAY_S = (20.0, 28.0)
DEFAULT_SLOW_BYTES = 4 * MiB
DEFAULT_SLOW_RCVBUF = 64 * KiB
DEFAULT_DOWNLOAD_BYTES = 50 * MiB
DEFAULT_DOWNLOAD_RATE_BPS = 8.0 * MiB
DEFAULT_IDLE_PAUSE_S = 25.0

Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
BodyMeter = Callable[[int], Awaitable[None]]


class RequestFailed(Exception):
    """A request failed; `kind` names how. `no_response` is True if no response byte arrived;
    `headers` are the response's if its head had arrived."""

    def __init__(self, kind: str, detail: str = "", *, no_response: bool = False,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.no_response = no_response
        self.headers = headers


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


async def _read_some(reader: asyncio.StreamReader, n: int, timeout_s: float | None, where: str) -> bytes:
    """Up to `n` body bytes (b"" at EOF), waiting at most `timeout_s` for the first of them."""
    try:
        async with asyncio.timeout(timeout_s):
            return await reader.read(n)
    except TimeoutError:
        raise RequestFailed("timeout", f"nothing for {timeout_s}s {where}") from None
    except OSError as exc:
        raise RequestFailed(_os_kind(exc, "request"), f"{where}: {exc}") from exc


async def _read_body(reader: asyncio.StreamReader, n: int, timeout_s: float | None,
                     on_body: BodyMeter | None) -> None:
    """Exactly `n` bytes, read (and dropped) a chunk at a time: a large body costs no memory."""
    got = 0
    while got < n:
        data = await _read_some(reader, min(n - got, READ_CHUNK), timeout_s, f"after {got} of {n} body bytes")
        if not data:
            raise RequestFailed("short_read", f"body cut after {got} of {n} bytes")
        got += len(data)
        if on_body is not None:
            await on_body(len(data))


async def _read_line(reader: asyncio.StreamReader, timeout_s: float | None) -> bytes:
    try:
        async with asyncio.timeout(timeout_s):
            return await reader.readuntil(b"\r\n")
    except TimeoutError:
        raise RequestFailed("timeout", f"nothing for {timeout_s}s inside a chunked body") from None
    except asyncio.IncompleteReadError:
        raise RequestFailed("short_read", "chunked body cut") from None
    except asyncio.LimitOverrunError:
        raise RequestFailed("bad_response", "chunk line too long") from None
    except OSError as exc:
        raise RequestFailed(_os_kind(exc, "request"), str(exc)) from exc


async def _read_chunked(reader: asyncio.StreamReader, max_body: int, timeout_s: float | None,
                        on_body: BodyMeter | None) -> int:
    total = 0
    while True:
        line = await _read_line(reader, timeout_s)
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise RequestFailed("bad_response", f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            while (await _read_line(reader, timeout_s)) != b"\r\n":   # trailers, then the final CRLF
                pass
            return total
        total += size
        if total > max_body:
            raise RequestFailed("bad_response", "body too large")
        await _read_body(reader, size, timeout_s, on_body)
        if await _read_line(reader, timeout_s) != b"\r\n":
            raise RequestFailed("bad_response", "chunk data not followed by CRLF")


async def _read_to_eof(reader: asyncio.StreamReader, max_body: int, timeout_s: float | None,
                       on_body: BodyMeter | None) -> int:
    total = 0
    while data := await _read_some(reader, READ_CHUNK, timeout_s, "in a body read to EOF"):
        total += len(data)
        if total > max_body:
            raise RequestFailed("bad_response", "body too large")
        if on_body is not None:
            await on_body(len(data))
    return total


async def read_response(reader: asyncio.StreamReader, *, head_request: bool = False,
                        max_body: int = MAX_BODY_BYTES, head_timeout_s: float | None = None,
                        read_timeout_s: float | None = None, on_body: BodyMeter | None = None) -> Response:
    """Read one complete response (1xx interim responses are skipped).

    `head_timeout_s` bounds the wait for the head, `read_timeout_s` each wait for body bytes (a body
    may take long as long as it flows); `on_body` is awaited with the size of every piece of body.
    Raises `RequestFailed`; its `no_response` is True only if not a single byte arrived, its
    `headers` are set if the head had arrived.
    """
    while True:
        try:
            async with asyncio.timeout(head_timeout_s):
                head = await _read_head(reader)
        except TimeoutError:
            raise RequestFailed("timeout", f"no response head within {head_timeout_s}s") from None
        version, status, headers = parse_head(head)
        if not (100 <= status < 200 and status != 101):
            break
    conn = headers.get("connection", "").lower()
    keep_alive = ("close" not in conn) if version == "HTTP/1.1" else ("keep-alive" in conn)
    if head_request or status in (204, 304) or 100 <= status < 200:
        return Response(status, headers, 0, keep_alive)
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            length = await _read_chunked(reader, max_body, read_timeout_s, on_body)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise RequestFailed("bad_response", "bad content-length") from None
            if length < 0 or length > max_body:
                raise RequestFailed("bad_response", f"content-length {length} out of range")
            await _read_body(reader, length, read_timeout_s, on_body)
        else:
            # No framing: the body runs to EOF and the connection cannot be reused.
            return Response(status, headers, await _read_to_eof(reader, max_body, read_timeout_s, on_body), False)
    except RequestFailed as exc:
        exc.headers = headers
        raise
    return Response(status, headers, length, keep_alive)


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    s = sorted(samples)

    def at(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))], 2)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(s[-1], 2)}


_SCALARS = ("ok", "failed", "retried", "connects", "skipped", "bytes", "idle_closed")
_COUNTERS = ("by_lb", "failures", "retries")


@dataclass
class Counters:
    ok: int = 0
    failed: int = 0
    retried: int = 0
    connects: int = 0
    skipped: int = 0
    bytes: int = 0              # response body bytes received (of failed flows too)
    idle_closed: int = 0        # persistent connections the server closed while idle (not failures)
    by_lb: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)

    def copy(self) -> Counters:
        fields: dict[str, Any] = {k: getattr(self, k) for k in _SCALARS}
        fields.update({k: Counter(getattr(self, k)) for k in _COUNTERS})
        return Counters(**fields)

    @staticmethod
    def sum(items: Iterable[Counters]) -> Counters:
        out = Counters()
        for c in items:
            for k in _SCALARS:
                setattr(out, k, getattr(out, k) + getattr(c, k))
            for k in _COUNTERS:
                getattr(out, k).update(getattr(c, k))
        return out

    def minus(self, other: Counters) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) - getattr(other, k) for k in _SCALARS}
        for k in _COUNTERS:
            out[k] = {name: n for name, n in (getattr(self, k) - getattr(other, k)).items() if n}
        return out

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in _SCALARS}
        out.update({k: dict(getattr(self, k)) for k in _COUNTERS})
        return out


def seconds_range(value: object) -> tuple[float, float]:
    """A slow request's delay range: "A:B" or "A" (seconds), a number, or [A, B]; 0 <= A <= B <= 60."""
    if isinstance(value, str):
        lo_text, sep, hi_text = value.partition(":")
        lo = float(lo_text)
        hi = float(hi_text) if sep else lo
    elif isinstance(value, list | tuple) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
    elif isinstance(value, int | float) and not isinstance(value, bool):
        lo = hi = float(value)
    else:
        raise ValueError(f"a delay range is 'A:B' seconds, not {value!r}")
    if not (0 <= lo <= hi <= MAX_DELAY_S):
        raise ValueError(f"delay range {value!r}: want 0 <= A <= B <= {MAX_DELAY_S:g} seconds")
    return lo, hi


def flow_bytes(value: object) -> int:
    """A slow or download body size: 1 .. MAX_FLOW_BYTES."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"a body size is a number of bytes, not {value!r}")
    n = int(value)
    if not 1 <= n <= MAX_FLOW_BYTES:
        raise ValueError(f"body size {n}: want 1 .. {MAX_FLOW_BYTES} bytes")
    return n


def _non_negative(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{what}: not a number: {value!r}")
    x = float(value)
    if not (math.isfinite(x) and x >= 0):
        raise ValueError(f"{what}: want a finite number >= 0, not {value!r}")
    return x


@dataclass
class LoadConfig:
    host: str
    port: int = 80
    path: str = "/"
    short_rps: float = 0.0
    short_concurrency: int = 256
    keepalive_clients: int = 0
    keepalive_pause_ms: float = 0.0
    slow_clients: int = 0
    slow_delay_s: tuple[float, float] = DEFAULT_SLOW_DELAY_S
    slow_bytes: int = DEFAULT_SLOW_BYTES
    slow_rcvbuf: int = DEFAULT_SLOW_RCVBUF   # SO_RCVBUF of a slow flow's socket; 0: the system's
    downloads: int = 0
    download_bytes: int = DEFAULT_DOWNLOAD_BYTES
    download_rate_bps: float = DEFAULT_DOWNLOAD_RATE_BPS   # bytes/s per download; 0: unbounded
    idle_clients: int = 0
    idle_pause_s: float = DEFAULT_IDLE_PAUSE_S
    max_seconds: float = 30.0
    max_requests: int = 1_000_000
    # A whole short/keepalive/idle response; the head of a download, or of a slow request after its
    # delay; every wait for more body bytes.
    timeout_s: float = 5.0
    connect_timeout_s: float = 2.0
    lb_header: str = "x-lb"
    interval_s: float = 1.0
    retry: bool = True          # the safe retry of a reused keepalive connection that got no response byte


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


_CLIENT_KEYS = {"keepalive_clients": "keepalive", "slow_clients": "slow", "downloads": "download",
                "idle_clients": "idle"}
CONTROL_KEYS = frozenset({"short_rps", "keepalive_pause_ms", "slow_delay_s", "slow_bytes", "download_bytes",
                          "download_rate_bps", "idle_pause_s", "stop", *_CLIENT_KEYS})


class LoadGen:
    """The load generator. `opener` opens one connection to the target (a parameter for tests; with
    it, slow flows keep the opener's receive buffer)."""

    def __init__(self, cfg: LoadConfig, *, opener: Opener | None = None,
                 emit: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.cfg = cfg
        self.short_rps = cfg.short_rps
        self.keepalive_pause_ms = cfg.keepalive_pause_ms
        self.slow_delay_s = cfg.slow_delay_s
        self.slow_bytes = cfg.slow_bytes
        self.download_bytes = cfg.download_bytes
        self.download_rate_bps = cfg.download_rate_bps
        self.idle_pause_s = cfg.idle_pause_s
        self.kinds: dict[str, Counters] = {k: Counters() for k in KINDS}
        self._opener = opener
        self._emit = emit or _print_json
        self._started = 0
        self._completed = 0
        self._inflight: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._aborted: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._latencies: dict[str, list[float]] = {k: [] for k in KINDS}
        self._tick_latencies: list[float] = []
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self._stop_reason = ""
        self._clients: dict[str, dict[int, tuple[asyncio.Task[None], asyncio.Event]]] = {
            k: {} for k in CLIENT_KINDS}
        self._next_client = 0
        self._short_tasks: set[asyncio.Task[None]] = set()
        self._t0 = 0.0
        self._rng = random.Random()

    @property
    def total(self) -> Counters:
        """The counts of every kind, summed."""
        return Counters.sum(self.kinds.values())

    # ---- control -----------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        """Apply one control command; returns what was applied. Raises ValueError if invalid (then
        nothing of it was applied)."""
        unknown = set(command) - CONTROL_KEYS
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        values: dict[str, Any] = {}
        for key in ("short_rps", "keepalive_pause_ms"):
            if key in command:
                values[key] = max(0.0, float(command[key]))   # as ever: a negative value means 0
        for key in ("download_rate_bps", "idle_pause_s"):
            if key in command:
                values[key] = _non_negative(command[key], key)
        if "slow_delay_s" in command:
            values["slow_delay_s"] = seconds_range(command["slow_delay_s"])
        for key in ("slow_bytes", "download_bytes"):
            if key in command:
                values[key] = flow_bytes(command[key])
        clients = {kind: max(0, int(command[key])) for key, kind in _CLIENT_KEYS.items() if key in command}
        if command.get("stop"):
            self.stop("stopped")
        for key, value in values.items():
            setattr(self, key, value)
        if "short_rps" in values:
            self._changed.set()
        for kind, n in clients.items():
            self._set_clients(kind, n)
        return command

    def _live_clients(self, kind: str) -> int:
        return sum(1 for task, stop in self._clients[kind].values() if not stop.is_set() and not task.done())

    def _set_clients(self, kind: str, n: int) -> None:
        clients = self._clients[kind]
        live = [cid for cid, (task, stop) in clients.items() if not stop.is_set() and not task.done()]
        for cid in live[n:]:
            clients[cid][1].set()   # it finishes its current flow, then closes
        for cid in [cid for cid, (task, _) in clients.items() if task.done()]:
            del clients[cid]
        for _ in range(n - len(live)):
            if self._stop.is_set():
                break
            cid = self._next_client
            self._next_client += 1
            stop = asyncio.Event()
            client = (self._persistent_client(kind, stop) if kind in ("keepalive", "idle")
                      else self._flow_client(kind, stop))
            clients[cid] = (asyncio.create_task(client), stop)

    # ---- connections and exchanges -----------------------------------------------------------

    async def _open_tcp(self, rcvbuf: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if rcvbuf <= 0:
            return await asyncio.open_connection(self.cfg.host, self.cfg.port)
        # The receive buffer must be set before connecting: the window scale is fixed by the SYN.
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in self.cfg.host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await loop.sock_connect(sock, (self.cfg.host, self.cfg.port))
            return await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise

    async def _connect(self, kind: str, rcvbuf: int = 0) -> _Conn:
        self.kinds[kind].connects += 1
        opener = self._opener or (lambda: self._open_tcp(rcvbuf))
        try:
            reader, writer = await asyncio.wait_for(opener(), self.cfg.connect_timeout_s)
        except TimeoutError:
            raise RequestFailed("connect_timeout") from None
        except OSError as exc:
            raise RequestFailed(_os_kind(exc, "connect"), str(exc)) from exc
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Conn(reader, writer)

    def _request(self, path: str, close: bool) -> bytes:
        return (f"GET {path} HTTP/1.1\r\nHost: {self.cfg.host}\r\nUser-Agent: scaler-loadgen\r\n"
                + ("Connection: close\r\n\r\n" if close else "\r\n")).encode()

    @staticmethod
    async def _send(conn: _Conn, request: bytes) -> None:
        try:
            conn.writer.write(request)
            await conn.writer.drain()
        except OSError as exc:
            # Nothing was read yet, so no response byte: a reused connection may be retried.
            raise RequestFailed(_os_kind(exc, "request"), str(exc), no_response=True) from exc

    def _meter(self, kind: str, rate_bps: float = 0.0) -> BodyMeter:
        """Counts a flow's body bytes; with `rate_bps` > 0 also paces the reading to that rate."""
        counters = self.kinds[kind]
        t0: float | None = None
        got = 0

        async def meter(n: int) -> None:
            nonlocal t0, got
            counters.bytes += n
            if rate_bps > 0:
                now = time.monotonic()
                if t0 is None:
                    t0 = now
                got += n
                ahead = t0 + got / rate_bps - now
                if ahead > 0:
                    await asyncio.sleep(ahead)

        return meter

    async def _exchange(self, kind: str, conn: _Conn, close: bool) -> Response:
        await self._send(conn, self._request(self.cfg.path, close))
        try:
            resp = await asyncio.wait_for(read_response(conn.reader, on_body=self._meter(kind)),
                                          self.cfg.timeout_s)
        except TimeoutError:
            raise RequestFailed("timeout") from None
        conn.used += 1
        return resp

    async def _request_on(self, kind: str, conn: _Conn | None, close: bool, retry: bool) -> tuple[Response, _Conn]:
        """One request on `conn` (or a new connection), with the safe retry on a reused one."""
        if conn is None:
            conn = await self._connect(kind)
        try:
            return await self._exchange(kind, conn, close), conn
        except RequestFailed as exc:
            await conn.close()
            if not (retry and exc.no_response and conn.used > 0):
                raise
            self.kinds[kind].retries[exc.kind] += 1
        self.kinds[kind].retried += 1
        conn = await self._connect(kind)
        try:
            return await self._exchange(kind, conn, close), conn
        except RequestFailed:
            await conn.close()
            raise

    @staticmethod
    async def _await_server_close(conn: _Conn) -> None:
        # The server said `connection: close`: let it close first, so TIME_WAIT stays on its side
        # and the client does not run out of ports at high rates.
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(conn.reader.read(1), SERVER_CLOSE_WAIT_S)

    # ---- counting ----------------------------------------------------------------------------

    def _reserve(self) -> bool:
        if self._stop.is_set() or self._started >= self.cfg.max_requests:
            return False
        self._started += 1
        return True

    @contextlib.contextmanager
    def _flight(self, kind: str) -> Iterator[None]:
        """A flow in flight: what is still in flight when the run is cut off counts as aborted."""
        self._inflight[kind] += 1
        try:
            yield
        finally:
            self._inflight[kind] -= 1

    def _record(self, kind: str, started: float, resp: Response | None, failure: RequestFailed | None) -> None:
        c = self.kinds[kind]
        headers = resp.headers if resp is not None else (failure.headers if failure is not None else None)
        lb = headers.get(self.cfg.lb_header) if headers else None
        if lb:
            c.by_lb[lb] += 1
        if resp is not None and 200 <= resp.status < 300:
            c.ok += 1
            ms = (time.monotonic() - started) * 1000
            if kind in LATENCY_KINDS:
                self._tick_latencies.append(ms)
            if len(self._latencies[kind]) < LATENCY_SAMPLES_MAX:
                self._latencies[kind].append(ms)
        elif resp is not None:
            c.failed += 1
            c.failures[f"http_{resp.status}"] += 1
        elif failure is not None:
            c.failed += 1
            c.failures[failure.kind] += 1
        self._completed += 1
        if self._completed >= self.cfg.max_requests:
            self.stop("max_requests")

    # ---- the kinds ---------------------------------------------------------------------------

    async def _short_request(self) -> None:
        started = time.monotonic()
        conn: _Conn | None = None
        resp: Response | None = None
        failure: RequestFailed | None = None
        try:
            with self._flight("short"):
                try:
                    resp, conn = await self._request_on("short", None, close=True, retry=False)
                except RequestFailed as exc:
                    failure = exc
            self._record("short", started, resp, failure)
            if resp is not None and conn is not None and not resp.keep_alive:
                await self._await_server_close(conn)
        finally:
            if conn is not None:
                await conn.close()

    async def _persistent_client(self, kind: str, stop: asyncio.Event) -> None:
        """A `keepalive` or `idle` client: requests on one connection, a pause after each."""
        retry = self.cfg.retry and kind == "keepalive"
        counters = self.kinds[kind]
        conn: _Conn | None = None
        try:
            while not stop.is_set() and self._reserve():
                if conn is not None and not conn.usable():
                    counters.idle_closed += 1
                    await conn.close()   # the server closed it while idle: a normal reconnect
                    conn = None
                started = time.monotonic()
                resp: Response | None = None
                failure: RequestFailed | None = None
                with self._flight(kind):
                    try:
                        resp, conn = await self._request_on(kind, conn, close=False, retry=retry)
                    except RequestFailed as exc:
                        failure, conn = exc, None
                self._record(kind, started, resp, failure)
                if resp is None:
                    await asyncio.sleep(FAILURE_BACKOFF_S)
                    continue
                if not resp.keep_alive and conn is not None:
                    await conn.close()
                    conn = None
                if kind == "keepalive":
                    if self.keepalive_pause_ms > 0:
                        await asyncio.sleep(self.keepalive_pause_ms / 1000)
                else:
                    # Silent for the whole pause, unless told to stop.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.idle_pause_s)
        finally:
            if conn is not None:
                await conn.close()

    async def _flow_client(self, kind: str, stop: asyncio.Event) -> None:
        """A `slow` or `download` client: one flow after another, each on a new connection."""
        while not stop.is_set() and self._reserve():
            if not await self._flow(kind):
                await asyncio.sleep(FAILURE_BACKOFF_S)

    async def _flow(self, kind: str) -> bool:
        """One slow request or download; True if it was complete."""
        cfg = self.cfg
        if kind == "slow":
            size = self.slow_bytes
            delay_ms = round(self._rng.uniform(*self.slow_delay_s) * 1000)
            query, rate, rcvbuf = f"delay_ms={delay_ms}&bytes={size}", 0.0, cfg.slow_rcvbuf
            head_timeout = delay_ms / 1000 + cfg.timeout_s
        else:
            size = self.download_bytes
            query, rate, rcvbuf = f"bytes={size}", self.download_rate_bps, 0
            head_timeout = cfg.timeout_s
        request = self._request(f"{cfg.path}{'&' if '?' in cfg.path else '?'}{query}", close=True)
        started = time.monotonic()
        conn: _Conn | None = None
        resp: Response | None = None
        failure: RequestFailed | None = None
        try:
            with self._flight(kind):
                try:
                    conn = await self._connect(kind, rcvbuf)
                    await self._send(conn, request)
                    resp = await read_response(conn.reader, max_body=max(size, MAX_BODY_BYTES),
                                               head_timeout_s=head_timeout, read_timeout_s=cfg.timeout_s,
                                               on_body=self._meter(kind, rate))
                    if 200 <= resp.status < 300 and resp.body_len != size:
                        raise RequestFailed("wrong_length", f"{resp.body_len} bytes, asked for {size}",
                                            headers=resp.headers)
                except RequestFailed as exc:
                    resp, failure = None, exc
            self._record(kind, started, resp, failure)
            if resp is not None and conn is not None and not resp.keep_alive:
                await self._await_server_close(conn)
        finally:
            if conn is not None:
                await conn.close()
        return resp is not None and 200 <= resp.status < 300

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
                self.kinds["short"].skipped += 1
                continue
            if not self._reserve():
                return
            task = asyncio.create_task(self._short_request())
            self._short_tasks.add(task)
            task.add_done_callback(self._short_tasks.discard)

    # ---- run ---------------------------------------------------------------------------------

    def _kind_tick(self, kind: str, now: Counters, prev: Counters) -> dict[str, Any]:
        out = now.minus(prev)
        out["inflight"] = self._inflight[kind]
        out["total"] = {"ok": now.ok, "failed": now.failed}
        if kind in CLIENT_KINDS:
            out["clients"] = self._live_clients(kind)
        return out

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        prev = {k: c.copy() for k, c in self.kinds.items()}
        next_t = self._t0 + self.cfg.interval_s
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_t - loop.time()))
            if self._stop.is_set():
                return
            next_t += self.cfg.interval_s
            now = {k: c.copy() for k, c in self.kinds.items()}
            total_now = Counters.sum(now.values())
            line: dict[str, Any] = {"type": "tick", "t": round(loop.time() - self._t0, 3)}
            line.update(total_now.minus(Counters.sum(prev.values())))
            line["latency_ms"] = percentiles(self._tick_latencies)
            line["inflight"] = sum(self._inflight.values())
            line["short_rps"] = self.short_rps
            line["keepalive_clients"] = self._live_clients("keepalive")
            line["total"] = {"ok": total_now.ok, "failed": total_now.failed, "retried": total_now.retried}
            line["kinds"] = {k: self._kind_tick(k, now[k], prev[k]) for k in KINDS}
            self._tick_latencies = []
            prev = now
            self._emit(line)

    async def run(self, control: asyncio.StreamReader | None = None) -> dict[str, Any]:
        """Run until a bound is reached, a stop command arrives or `control` reaches EOF."""
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        deadline = loop.call_later(self.cfg.max_seconds, self.stop, "max_seconds")
        tasks = [asyncio.create_task(self._short_loop()), asyncio.create_task(self._ticker())]
        if control is not None:
            tasks.append(asyncio.create_task(self._control_loop(control)))
        for kind, n in (("keepalive", self.cfg.keepalive_clients), ("slow", self.cfg.slow_clients),
                        ("download", self.cfg.downloads), ("idle", self.cfg.idle_clients)):
            self._set_clients(kind, max(0, n))
        try:
            await self._stop.wait()
        finally:
            deadline.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            clients = [c for by_id in self._clients.values() for c in by_id.values()]
            for _, stop in clients:
                stop.set()
            pending = {t for t, _ in clients} | set(self._short_tasks)
            # Give flows in flight a moment to finish so they are counted, then abort them.
            if pending:
                _, still = await asyncio.wait(pending, timeout=min(self.cfg.timeout_s, GRACE_S))
                self._aborted = dict(self._inflight)   # flows cut short, counted neither ok nor failed
                for t in still:
                    t.cancel()
                await asyncio.gather(*still, return_exceptions=True)
        summary: dict[str, Any] = {"type": "summary", "reason": self._stop_reason,
                                   "elapsed_s": round(loop.time() - self._t0, 3)}
        summary.update(self.total.as_dict())
        summary["aborted"] = sum(self._aborted.values())
        summary["latency_ms"] = percentiles([ms for k in LATENCY_KINDS for ms in self._latencies[k]])
        summary["kinds"] = {k: self.kinds[k].as_dict() | {"aborted": self._aborted[k],
                                                          "latency_ms": percentiles(self._latencies[k])}
                            for k in KINDS}
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


def _argparse_type(convert: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name
    return parse


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
    ap.add_argument("--slow-clients", type=int, default=0,
                    help="clients looping slow requests (answered after --slow-delay-s, then a large body)")
    ap.add_argument("--slow-delay-s", type=_argparse_type(seconds_range, "delay range"),
                    default=DEFAULT_SLOW_DELAY_S, metavar="A:B",
                    help="a slow request's answer comes after a random A..B seconds (default 20:28)")
    ap.add_argument("--slow-bytes", type=_argparse_type(flow_bytes, "size"), default=DEFAULT_SLOW_BYTES,
                    help="a slow request's body size")
    ap.add_argument("--slow-rcvbuf", type=int, default=DEFAULT_SLOW_RCVBUF,
                    help="SO_RCVBUF of a slow request's socket (0: the system's default)")
    ap.add_argument("--downloads", type=int, default=0, help="clients looping large downloads")
    ap.add_argument("--download-bytes", type=_argparse_type(flow_bytes, "size"), default=DEFAULT_DOWNLOAD_BYTES)
    ap.add_argument("--download-rate-bps", type=float, default=DEFAULT_DOWNLOAD_RATE_BPS,
                    help="each download is read at most this fast, in bytes/s (0: unbounded)")
    ap.add_argument("--idle-clients", type=int, default=0,
                    help="keep-alive connections silent --idle-pause-s between requests")
    ap.add_argument("--idle-pause-s", type=float, default=DEFAULT_IDLE_PAUSE_S)
    ap.add_argument("--max-seconds", type=float, default=30.0)
    ap.add_argument("--max-requests", type=int, default=1_000_000)
    ap.add_argument("--timeout-s", type=float, default=5.0,
                    help="per-request response timeout; also the longest wait for more body bytes")
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
    if min(args.slow_clients, args.downloads, args.idle_clients, args.slow_rcvbuf) < 0:
        ap.error("--slow-clients, --downloads, --idle-clients and --slow-rcvbuf must not be negative")
    if not (math.isfinite(args.download_rate_bps) and args.download_rate_bps >= 0
            and math.isfinite(args.idle_pause_s) and args.idle_pause_s >= 0):
        ap.error("--download-rate-bps and --idle-pause-s must be finite and not negative")
    cfg = LoadConfig(
        host=args.host, port=args.port, path=args.path, short_rps=args.short_rps,
        short_concurrency=args.short_concurrency, keepalive_clients=args.keepalive_clients,
        keepalive_pause_ms=args.keepalive_pause_ms, slow_clients=args.slow_clients,
        slow_delay_s=args.slow_delay_s, slow_bytes=args.slow_bytes, slow_rcvbuf=args.slow_rcvbuf,
        downloads=args.downloads, download_bytes=args.download_bytes,
        download_rate_bps=args.download_rate_bps, idle_clients=args.idle_clients,
        idle_pause_s=args.idle_pause_s, max_seconds=args.max_seconds,
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
