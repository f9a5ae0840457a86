"""The load generator's HTTP/1.1 response reading, failure kinds and the safe retry, against scripted
servers on unix sockets (the generator takes its connection opener as a parameter); its flow kinds
against the lab's real backend (in this process, on a free loopback port) and a scripted TCP server
that cuts bodies; LoadRun's options as the generator parses them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from actuators.lab.backend import FILL_CHUNK, MAX_BODY_BYTES, Backend, request_body_bytes
from scaler.lab.loadgen import (
    KINDS,
    LoadConfig,
    LoadGen,
    MiB,
    RequestFailed,
    parse_args,
    percentiles,
    read_response,
)
from scaler.lab.network import LabConfig, LoadRun


def reader_of(data: bytes) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    r.feed_data(data)
    r.feed_eof()
    return r


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-lb: lb1\r\n\r\nok\n"


@pytest.mark.parametrize(("data", "status", "body_len", "keep_alive"), [
    pytest.param(OK, 200, 3, True, id="content-length, keep-alive by default in 1.1"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi", 200, 2, False,
                 id="connection close"),
    pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n"
                 b"trailer: x\r\n\r\n", 200, 5, True, id="chunked with extension and trailer"),
    pytest.param(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\nx", 200, 1, False,
                 id="HTTP/1.0 closes unless keep-alive"),
    pytest.param(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\nconnection: keep-alive\r\n\r\nx", 200, 1, True,
                 id="HTTP/1.0 keep-alive"),
    pytest.param(b"HTTP/1.1 200 OK\r\n\r\nto the end", 200, 10, False, id="no framing: body to EOF"),
    pytest.param(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 204, 0, True,
                 id="interim 100 skipped, 204 has no body"),
    pytest.param(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy", 503, 4, True,
                 id="an error status is still a complete response"),
])
async def test_read_response(data: bytes, status: int, body_len: int, keep_alive: bool) -> None:
    resp = await read_response(reader_of(data))
    assert (resp.status, resp.body_len, resp.keep_alive) == (status, body_len, keep_alive)


@pytest.mark.parametrize(("data", "kind", "no_response"), [
    pytest.param(b"", "eof", True, id="closed before any byte: retryable on a reused connection"),
    pytest.param(b"HTTP/1.1 200 OK\r\ncontent-le", "eof", False, id="closed inside the headers"),
    pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", "short_read", False, id="body cut short"),
    pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab", "short_read", False,
                 id="chunk cut short"),
    pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n", "bad_response",
                 False, id="chunk longer than its size"),
    pytest.param(b"SSH-2.0-OpenSSH\r\n\r\n", "bad_response", False, id="not HTTP"),
    pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", "bad_response", False,
                 id="negative length"),
    pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "bad_response", False,
                 id="bad chunk size"),
])
async def test_read_response_failures(data: bytes, kind: str, no_response: bool) -> None:
    with pytest.raises(RequestFailed) as err:
        await read_response(reader_of(data))
    assert (err.value.kind, err.value.no_response) == (kind, no_response)


def test_percentiles() -> None:
    assert percentiles([]) == {}
    assert percentiles([float(i) for i in range(1, 101)]) == {"p50": 51.0, "p90": 90.0, "p99": 99.0,
                                                              "max": 100.0}


# ---- scripted servers -------------------------------------------------------------------------

# A script answers the n-th request (0-based) on the c-th connection (0-based): bytes to send,
# then whether to close the connection afterwards. None: close without answering.
Script = Callable[[int, int], tuple[bytes, bool] | None]


@contextlib.asynccontextmanager
async def scripted_server(path: Path, script: Script) -> AsyncIterator[list[int]]:
    """A unix-socket HTTP server that follows `script`; yields the per-connection request counts."""
    counts: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = len(counts)
        counts.append(0)
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                n = counts[conn]
                counts[conn] += 1
                step = script(conn, n)
                if step is None:
                    return
                data, close = step
                writer.write(data)
                await writer.drain()
                if close:
                    return
        finally:
            writer.close()

    server = await asyncio.start_unix_server(handle, path=str(path))
    try:
        yield counts
    finally:
        server.close()
        await server.wait_closed()


async def run_gen(path: Path, **options: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines: list[dict[str, Any]] = []

    def opener() -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        return asyncio.open_unix_connection(str(path))

    cfg = LoadConfig(host="198.19.0.1", **({"max_seconds": 5.0, "interval_s": 0.2} | options))
    summary = await LoadGen(cfg, opener=opener, emit=lines.append).run()
    return summary, lines


async def test_reused_connection_closed_before_any_byte_is_retried_once(tmp_path: Path) -> None:
    # Connection 0 answers one request, then takes the second and closes without a byte: the
    # race of an idle keep-alive timeout. The retry goes to a new connection and succeeds.
    sock = tmp_path / "s"
    async with scripted_server(sock, lambda c, n: None if (c, n) == (0, 1) else (OK, False)) as counts:
        summary, _ = await run_gen(sock, keepalive_clients=1, max_requests=3)
    assert (summary["ok"], summary["failed"], summary["retried"]) == (3, 0, 1)
    assert summary["retries"] == {"eof": 1}
    assert summary["reason"] == "max_requests" and summary["by_lb"] == {"lb1": 3}
    assert counts == [2, 2]


async def test_without_retry_the_same_race_is_a_failure(tmp_path: Path) -> None:
    sock = tmp_path / "s"
    async with scripted_server(sock, lambda c, n: None if (c, n) == (0, 1) else (OK, False)):
        summary, _ = await run_gen(sock, keepalive_clients=1, max_requests=3, retry=False)
    assert (summary["ok"], summary["failed"], summary["retried"]) == (2, 1, 0)
    assert summary["failures"] == {"eof": 1}


async def test_a_fresh_connection_is_never_retried(tmp_path: Path) -> None:
    sock = tmp_path / "s"
    async with scripted_server(sock, lambda c, n: None) as counts:
        summary, _ = await run_gen(sock, keepalive_clients=1, max_requests=1)
    assert (summary["ok"], summary["failed"], summary["retried"]) == (0, 1, 0)
    assert summary["failures"] == {"eof": 1} and counts == [1]


async def test_a_partial_response_is_a_failure_not_a_retry(tmp_path: Path) -> None:
    cut = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this"
    sock = tmp_path / "s"
    async with scripted_server(sock, lambda c, n: (cut, True) if (c, n) == (0, 1) else (OK, False)):
        summary, _ = await run_gen(sock, keepalive_clients=1, max_requests=3)
    assert (summary["ok"], summary["failed"], summary["retried"]) == (2, 1, 0)
    assert summary["failures"] == {"short_read": 1}


async def test_connection_close_is_a_normal_reconnect(tmp_path: Path) -> None:
    close = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\nx-lb: lb2\r\n\r\nok\n"
    sock = tmp_path / "s"
    async with scripted_server(sock, lambda c, n: (close, True)) as counts:
        summary, _ = await run_gen(sock, keepalive_clients=1, max_requests=4)
    assert (summary["ok"], summary["failed"], summary["retried"], summary["connects"]) == (4, 0, 0, 4)
    assert counts == [1, 1, 1, 1]


async def test_non_2xx_is_a_failure_by_status_and_still_names_the_lb(tmp_path: Path) -> None:
    busy = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nx-lb: lb1\r\n\r\n"
    sock = tmp_path / "s"
    async with scripted_server(sock, lambda c, n: (busy, False)):
        summary, _ = await run_gen(sock, keepalive_clients=1, max_requests=2)
    assert summary["failures"] == {"http_503": 2} and summary["by_lb"] == {"lb1": 2}


async def test_short_requests_use_one_connection_each(tmp_path: Path) -> None:
    close = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
    sock = tmp_path / "s"
    async with scripted_server(sock, lambda c, n: (close, True)) as counts:
        summary, _ = await run_gen(sock, short_rps=200, max_requests=10)
    assert (summary["ok"], summary["connects"]) == (10, 10)
    assert counts == [1] * 10


async def test_max_seconds_bounds_the_run_and_ticks_are_emitted(tmp_path: Path) -> None:
    sock = tmp_path / "s"
    async with scripted_server(sock, lambda c, n: (OK, False)):
        summary, lines = await run_gen(sock, keepalive_clients=1, keepalive_pause_ms=20, max_seconds=0.7)
    assert summary["reason"] == "max_seconds" and summary["failed"] == 0
    ticks = [ln for ln in lines if ln["type"] == "tick"]
    assert len(ticks) >= 2
    assert {"ok", "failed", "retried", "by_lb", "failures", "latency_ms", "total", "inflight"} <= set(ticks[0])
    assert sum(t["ok"] for t in ticks) <= summary["ok"]


async def test_control_commands() -> None:
    gen = LoadGen(LoadConfig(host="198.19.0.1"), emit=lambda _: None)
    assert gen.apply({"short_rps": 25, "keepalive_pause_ms": 5}) == {"short_rps": 25, "keepalive_pause_ms": 5}
    assert gen.short_rps == 25.0 and gen.keepalive_pause_ms == 5.0
    gen.apply({"slow_delay_s": "1:2.5", "slow_bytes": 3 * MiB, "download_bytes": 60 * MiB,
               "download_rate_bps": 1e6, "idle_pause_s": 27})
    assert (gen.slow_delay_s, gen.slow_bytes, gen.download_bytes) == ((1.0, 2.5), 3 * MiB, 60 * MiB)
    assert (gen.download_rate_bps, gen.idle_pause_s) == (1e6, 27.0)
    gen.apply({"slow_delay_s": [3, 4]})
    assert gen.slow_delay_s == (3.0, 4.0)
    with pytest.raises(ValueError, match="unknown keys"):
        gen.apply({"rps": 1})
    # A bad value refuses the whole command: nothing of it is applied.
    for bad in ({"short_rps": 1, "slow_delay_s": "5:1"}, {"short_rps": 1, "slow_delay_s": "0:61"},
                {"short_rps": 1, "download_bytes": 0}, {"short_rps": 1, "slow_bytes": 257 * MiB},
                {"short_rps": 1, "idle_pause_s": -1}, {"short_rps": 1, "download_rate_bps": "nan"}):
        with pytest.raises(ValueError):
            gen.apply(bad)
        assert gen.short_rps == 25.0
    gen.apply({"stop": True})
    assert gen._stop.is_set()


# ---- the flow kinds against the lab backend ---------------------------------------------------

@contextlib.asynccontextmanager
async def lab_backend() -> AsyncIterator[int]:
    """The lab's application server in this process on a free loopback port; yields the port."""
    server = await asyncio.start_server(Backend(0, b"ok\n").handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def run_tcp(port: int, **options: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines: list[dict[str, Any]] = []
    cfg = LoadConfig(host="127.0.0.1", port=port, **({"max_seconds": 1.5, "interval_s": 0.25} | options))
    summary = await LoadGen(cfg, emit=lines.append).run()
    return summary, lines


async def test_backend_answers_a_body_of_the_asked_size() -> None:
    assert request_body_bytes("/") is None and request_body_bytes("/?bytes=x") is None
    assert request_body_bytes("/?delay_ms=5&bytes=12") == 12
    assert request_body_bytes(f"/?bytes={10 * MAX_BODY_BYTES}") == MAX_BODY_BYTES
    assert request_body_bytes("/?bytes=-3") == 0
    async with lab_backend() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        size = 3 * len(FILL_CHUNK) + 1234
        writer.write(f"GET /?bytes={size} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                     + b"HEAD /?bytes=7 HTTP/1.1\r\nHost: x\r\n\r\n"
                     + b"GET /?bytes=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert f"content-length: {size}\r\n".encode() in head
        body = await reader.readexactly(size)
        assert body == (FILL_CHUNK * 4)[:size]
        head_only = await read_response(reader, head_request=True)
        assert head_only.headers["content-length"] == "7"
        empty = await read_response(reader)
        assert (empty.status, empty.body_len, empty.keep_alive) == (200, 0, False)
        assert await reader.read() == b""
        writer.close()


@pytest.mark.parametrize(("kind", "options", "min_ok"), [
    pytest.param("short", {"short_rps": 40}, 20, id="short"),
    pytest.param("keepalive", {"keepalive_clients": 2, "keepalive_pause_ms": 20}, 20, id="keepalive"),
    pytest.param("slow", {"slow_clients": 2, "slow_delay_s": (0.2, 0.4), "slow_bytes": 2 * MiB}, 4, id="slow"),
    pytest.param("download", {"downloads": 2, "download_bytes": 5 * MiB, "download_rate_bps": 0}, 4,
                 id="download"),
    pytest.param("idle", {"idle_clients": 2, "idle_pause_s": 0.3}, 8, id="idle"),
])
async def test_each_kind_counts_ok_against_the_backend(kind: str, options: dict[str, Any], min_ok: int) -> None:
    async with lab_backend() as port:
        summary, lines = await run_tcp(port, **options)
    mine = summary["kinds"][kind]
    assert mine["ok"] >= min_ok and mine["failed"] == 0 and mine["failures"] == {}, mine
    assert (summary["ok"], summary["failed"]) == (mine["ok"], 0)
    others = [k for k in KINDS if k != kind]
    assert all(summary["kinds"][k]["ok"] == summary["kinds"][k]["connects"] == 0 for k in others), summary
    assert summary["reason"] == "max_seconds"
    if kind == "slow":
        assert mine["latency_ms"]["p50"] >= 200 and mine["bytes"] >= mine["ok"] * 2 * MiB
    if kind == "download":
        assert mine["bytes"] >= mine["ok"] * 5 * MiB
    if kind in ("keepalive", "idle"):
        assert mine["connects"] == 2 and mine["idle_closed"] == 0   # one connection each, reused
    # Every tick names every kind, and its overall counts are the sums of the kinds'.
    ticks = [ln for ln in lines if ln["type"] == "tick"]
    assert ticks
    for tick in ticks:
        assert set(tick["kinds"]) == set(KINDS)
        assert {"ok", "failed", "failures", "by_lb", "bytes", "inflight", "total"} <= set(tick["kinds"][kind])
        assert tick["ok"] == sum(k["ok"] for k in tick["kinds"].values())
    assert "clients" in ticks[-1]["kinds"]["idle"] and "clients" not in ticks[-1]["kinds"]["short"]
    assert sum(t["kinds"][kind]["ok"] for t in ticks) <= mine["ok"]


@contextlib.asynccontextmanager
async def cutting_server(body_len: int, sent: int, how: str) -> AsyncIterator[int]:
    """A TCP server that answers every request with the head of a `body_len` body, sends `sent`
    bytes of it, then resets the connection (`how` = "reset") or closes it ("close")."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {body_len}\r\nx-lb: lb9\r\n\r\n".encode()
                         + b"x" * sent)
            await writer.drain()
            await asyncio.sleep(0.05)
            if how == "reset":
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                           struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
        except (OSError, asyncio.IncompleteReadError):
            writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("how", ["reset", "close"])
@pytest.mark.parametrize(("kind", "options", "body_len"), [
    pytest.param("slow", {"slow_clients": 2, "slow_delay_s": (0.1, 0.2), "slow_bytes": 2 * MiB}, 2 * MiB, id="slow"),
    pytest.param("download", {"downloads": 2, "download_bytes": 5 * MiB}, 5 * MiB, id="download"),
    pytest.param("idle", {"idle_clients": 2, "idle_pause_s": 0.2}, 200_000, id="idle"),
    pytest.param("keepalive", {"keepalive_clients": 2}, 200_000, id="keepalive"),
    pytest.param("short", {"short_rps": 20}, 200_000, id="short"),
])
async def test_a_body_cut_is_a_failure_of_its_kind_by_cause(kind: str, options: dict[str, Any], body_len: int,
                                                             how: str) -> None:
    async with cutting_server(body_len, 256 * 1024 if body_len > MiB else 50_000, how) as port:
        summary, _ = await run_tcp(port, max_seconds=0.6, **options)
    mine = summary["kinds"][kind]
    cause = "reset" if how == "reset" else "short_read"
    assert mine["failed"] >= 2 and mine["ok"] == 0 and mine["failures"] == {cause: mine["failed"]}, mine
    assert mine["retried"] == 0                       # a cut body is never retried, whatever the kind
    assert (summary["failed"], summary["failures"]) == (mine["failed"], mine["failures"])
    assert all(summary["kinds"][k]["failed"] == 0 for k in KINDS if k != kind)
    if how == "close":
        assert mine["by_lb"] == {"lb9": mine["failed"]}   # the head had arrived: its LB is known


async def test_the_download_rate_bound_holds() -> None:
    size, rate = 2 * MiB, 2.0 * MiB                  # one second per download
    async with lab_backend() as port:
        started = time.monotonic()
        summary, lines = await run_tcp(port, downloads=2, download_bytes=size, download_rate_bps=rate,
                                       max_seconds=1.5)
        elapsed = time.monotonic() - started
    mine = summary["kinds"]["download"]
    assert mine["ok"] == 4 and mine["failed"] == 0, mine
    assert 900 <= mine["latency_ms"]["p50"] <= 1400 and mine["latency_ms"]["max"] <= 1600, mine["latency_ms"]
    # At most the rate per download, give or take a read chunk per interval.
    ticks = [t["kinds"]["download"]["bytes"] for t in lines if t["type"] == "tick"]
    assert max(ticks) <= 2 * (rate * 0.25 + 128 * 1024), ticks
    assert mine["bytes"] <= 2 * rate * elapsed + 2 * 128 * 1024


async def test_max_seconds_cuts_slow_flows_as_aborted_and_ends_idle_pauses() -> None:
    async with lab_backend() as port:
        started = time.monotonic()
        summary, _ = await run_tcp(port, max_seconds=0.5, slow_clients=3, slow_delay_s=(5.0, 5.0),
                                   slow_bytes=MiB, idle_clients=2, idle_pause_s=30)
        elapsed = time.monotonic() - started
    slow, idle = summary["kinds"]["slow"], summary["kinds"]["idle"]
    assert (slow["ok"], slow["failed"], slow["aborted"]) == (0, 0, 3), slow
    assert (idle["ok"], idle["failed"], idle["aborted"]) == (2, 0, 0), idle
    assert (summary["failed"], summary["aborted"]) == (0, 3)
    assert elapsed < 2.0                               # max_seconds + the grace, not the idle pause


async def test_control_changes_the_flows_of_a_running_generator() -> None:
    control = asyncio.StreamReader()
    lines: list[dict[str, Any]] = []
    async with lab_backend() as port:
        gen = LoadGen(LoadConfig(host="127.0.0.1", port=port, max_seconds=5, interval_s=0.2), emit=lines.append)
        control.feed_data(b'{"slow_clients": 1, "slow_delay_s": "0.1:0.1", "slow_bytes": 100000}\n'
                          b'{"downloads": 1, "download_bytes": 300000, "download_rate_bps": 0}\n'
                          b'{"idle_clients": 1, "idle_pause_s": 0.1}\n{"slow_delay_s": "9:1"}\n')
        asyncio.get_running_loop().call_later(1.0, control.feed_eof)
        summary = await gen.run(control)
    assert summary["reason"] == "control_closed"
    assert all(summary["kinds"][k]["ok"] > 0 and summary["kinds"][k]["failed"] == 0
               for k in ("slow", "download", "idle")), summary["kinds"]
    assert [ln["type"] for ln in lines if ln["type"] in ("control", "error")] == ["control"] * 3 + ["error"]


def test_the_new_cli_options() -> None:
    cfg, _ = parse_args(["--host", "198.19.0.1", "--slow-clients", "8", "--slow-delay-s", "20:28",
                         "--slow-bytes", "4194304", "--downloads", "12", "--download-bytes", "52428800",
                         "--download-rate-bps", "8000000", "--idle-clients", "8", "--idle-pause-s", "25"])
    assert (cfg.slow_clients, cfg.slow_delay_s, cfg.slow_bytes) == (8, (20.0, 28.0), 4 * MiB)
    assert (cfg.downloads, cfg.download_bytes, cfg.download_rate_bps) == (12, 50 * MiB, 8e6)
    assert (cfg.idle_clients, cfg.idle_pause_s) == (8, 25.0)
    assert parse_args(["--host", "h", "--slow-delay-s", "3"])[0].slow_delay_s == (3.0, 3.0)
    for bad in (["--slow-delay-s", "28:20"], ["--slow-delay-s", "x"], ["--slow-bytes", "0"],
                ["--download-bytes", str(300 * MiB)], ["--downloads", "-1"], ["--idle-pause-s", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(["--host", "h", *bad])


def test_loadrun_options_are_the_generators(tmp_path: Path) -> None:
    lab = LabConfig(name="t", dir=tmp_path)
    run = LoadRun(lab, short_rps=5, slow_clients=8, slow_delay_s=(20, 28), slow_bytes=3 * MiB, downloads=12,
                  download_bytes=60 * MiB, download_rate_bps=1e7, idle_clients=8, idle_pause_s=24.5)
    cfg, _ = parse_args(run.argv_options)
    assert (cfg.host, cfg.short_rps, cfg.slow_clients, cfg.slow_delay_s, cfg.slow_bytes) == (
        "198.19.0.1", 5.0, 8, (20.0, 28.0), 3 * MiB)
    assert (cfg.downloads, cfg.download_bytes, cfg.download_rate_bps, cfg.idle_clients, cfg.idle_pause_s) == (
        12, 60 * MiB, 1e7, 8, 24.5)
    default, _ = parse_args(LoadRun(lab).argv_options)
    assert default == LoadConfig(host="198.19.0.1")
    # totals() sums the ticks, per kind too.
    tick = {"ok": 3, "failed": 1, "failures": {"reset": 1}, "kinds": {
        "slow": {"ok": 1, "failed": 1, "failures": {"reset": 1}, "bytes": 10}, "short": {"ok": 2}}}
    run.ticks = [tick, tick]
    totals = run.totals()
    assert (totals["ok"], totals["failed"], totals["failures"]) == (6, 2, {"reset": 2})
    assert totals["kinds"]["slow"] | {} == totals["kinds"]["slow"]
    assert (totals["kinds"]["slow"]["failed"], totals["kinds"]["slow"]["bytes"]) == (2, 20)
    assert totals["kinds"]["slow"]["failures"] == {"reset": 2} and totals["kinds"]["short"]["ok"] == 4
    assert totals["kinds"]["idle"]["ok"] == 0
