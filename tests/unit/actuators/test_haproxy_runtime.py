"""The runtime API client against a scripted stand-in for HAProxy's CLI on a unix socket: parsing,
drain/undrain commands (including the "entry not found" fallback), errors and timeouts. The real
HAProxy is exercised by tests/integration/scaler/test_lab.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from actuators.haproxy_runtime import (
    DRAIN_MAP_NAME,
    HAProxyRuntime,
    HAProxyRuntimeError,
    drain_config_lines,
    parse_show_info,
    parse_show_map,
    parse_show_stat,
)

SHOW_MAP = ("# id (file) description\n"
            "0 (/x/other.map) pattern loaded from file '/x/other.map' used by map at file 'h.cfg' line 9.\n"
            f"1 (/x/{DRAIN_MAP_NAME}) pattern loaded from file '/x/{DRAIN_MAP_NAME}' used by map at file "
            "'h.cfg' line 13. curr_ver=0 next_ver=0 entry_cnt=1\n\n")


@contextlib.asynccontextmanager
async def fake_cli(path: Path, answer: Callable[[str], str | None]) -> AsyncIterator[list[str]]:
    """One command per connection, like HAProxy's non-interactive mode; None: never answer."""
    commands: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cmd = (await reader.readline()).decode().rstrip("\n")
        commands.append(cmd)
        reply = answer(cmd)
        if reply is None:
            await asyncio.sleep(1)
        else:
            writer.write(reply.encode())
        writer.close()

    server = await asyncio.start_unix_server(handle, path=str(path))
    try:
        yield commands
    finally:
        server.close()
        await server.wait_closed()


def test_parsers() -> None:
    info = parse_show_info("Name: HAProxy\nVersion: 2.6.12\nCurrConns: 7\nnot a field\n\n")
    assert info == {"Name": "HAProxy", "Version": "2.6.12", "CurrConns": "7"}
    rows = parse_show_stat("# pxname,svname,scur,\nvip,FRONTEND,3,\napp,app,1,\n\n")
    assert rows[0] == {"pxname": "vip", "svname": "FRONTEND", "scur": "3", "": ""}
    assert [r["svname"] for r in rows] == ["FRONTEND", "app"]
    assert parse_show_map(SHOW_MAP) == ["/x/other.map", f"/x/{DRAIN_MAP_NAME}"]


def test_drain_config_lines() -> None:
    lines = drain_config_lines(f"/etc/haproxy/{DRAIN_MAP_NAME}")
    assert lines[-1] == (f"http-after-response set-header connection close if {{ str(drain),"
                         f"map(/etc/haproxy/{DRAIN_MAP_NAME},0) -m str 1 }}")
    assert (f"http-after-response set-var(txn.scaler_recycle) str(recycle),map(/etc/haproxy/{DRAIN_MAP_NAME},0)"
            in lines)
    with pytest.raises(ValueError, match=DRAIN_MAP_NAME):
        drain_config_lines("/etc/haproxy/drain.map")


async def test_show_info_and_current_connections(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    async with fake_cli(sock, lambda c: "Name: HAProxy\nPid: 42\nCurrConns: 3\n\n") as commands:
        rt = HAProxyRuntime(str(sock))
        assert (await rt.show_info())["Pid"] == "42"
        assert await rt.current_connections() == 3
    assert commands == ["show info", "show info"]


async def test_drain_finds_the_map_and_falls_back_to_add(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    drain_map = f"/x/{DRAIN_MAP_NAME}"

    def answer(cmd: str) -> str:
        if cmd == "show map":
            return SHOW_MAP
        if cmd == f"set map {drain_map} drain 1":
            return "entry not found.\n\n"              # someone emptied the file
        if cmd == f"get map {drain_map} drain":
            return 'type=str, case=sensitive, found=yes, idx=tree, key="drain", value="1", type="str"\n\n'
        return "\n"

    async with fake_cli(sock, answer) as commands:
        rt = HAProxyRuntime(str(sock))
        await rt.drain()
        assert await rt.is_draining()
        await rt.undrain()
    assert commands == ["show map", f"set map {drain_map} drain 1", f"add map {drain_map} drain 1",
                        f"get map {drain_map} drain", f"set map {drain_map} drain 0"]


async def test_drain_without_the_map_in_the_config_is_an_error(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    async with fake_cli(sock, lambda c: "# id (file) description\n\n"):
        with pytest.raises(HAProxyRuntimeError, match="needs drain_config_lines"):
            await HAProxyRuntime(str(sock)).drain()


async def test_a_refused_command_is_an_error(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    async with fake_cli(sock, lambda c: "Unknown map identifier. Please use #<id> or <file>.\n\n"):
        with pytest.raises(HAProxyRuntimeError, match="Unknown map identifier"):
            await HAProxyRuntime(str(sock), drain_map=f"/x/{DRAIN_MAP_NAME}").drain()


async def test_timeouts_and_missing_sockets_are_errors(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    async with fake_cli(sock, lambda c: None):
        with pytest.raises(HAProxyRuntimeError, match="no answer"):
            await HAProxyRuntime(str(sock), timeout_s=0.2).show_info()
    with pytest.raises(HAProxyRuntimeError, match=r"missing\.sock"):
        await HAProxyRuntime(str(tmp_path / "missing.sock")).show_info()
    with pytest.raises(HAProxyRuntimeError, match="tcp:HOST:PORT"):
        await HAProxyRuntime("tcp:nohost").show_info()
    with pytest.raises(HAProxyRuntimeError, match="one line"):
        await HAProxyRuntime(str(sock)).command("show info\nshutdown frontend vip")
