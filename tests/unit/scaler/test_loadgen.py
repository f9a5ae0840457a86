"""The load generator's HTTP/1.1 response reading, failure kinds and the safe retry, against scripted
servers on unix sockets (the generator takes its connection opener as a parameter)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from scaler.lab.loadgen import LoadConfig, LoadGen, RequestFailed, percentiles, read_response


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
    pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", "eof", False, id="body cut short"),
    pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab", "eof", False,
                 id="chunk cut short"),
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
    assert summary["failures"] == {"eof": 1}


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
    with pytest.raises(ValueError, match="unknown keys"):
        gen.apply({"rps": 1})
    gen.apply({"stop": True})
    assert gen._stop.is_set()
