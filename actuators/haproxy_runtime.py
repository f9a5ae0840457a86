"""A client for HAProxy's runtime API (the stats socket): read counters, drain and undrain.

It talks to one HAProxy over a unix socket or `tcp:HOST:PORT`, one command per connection
(HAProxy's non-interactive mode), each with a timeout. It never edits HAProxy's configuration
files and never reloads or restarts HAProxy; what a drain needs in the configuration comes from
`drain_config_lines()`, so the lab and the cloud-init templates carry the same text.

How drain works (verified against HAProxy 2.6.12 with a real keep-alive client):

- The configuration loads a map file holding one entry, `drain 0`, and the HTTP frontend says
  `http-after-response set-header connection close if { str(drain),map(FILE,0) -m str 1 }`.
- `drain()` runs `set map FILE drain 1`: from then on every response carries `connection: close`
  and HAProxy's H1 mux closes the client connection right after that response, so keep-alive
  clients reconnect (and the router sends them elsewhere). New connections are still accepted;
  each gets its answer and is then closed. An idle keep-alive connection is closed after its next
  response or by `timeout http-keep-alive`, whichever comes first.
- `undrain()` sets the entry back to 0.
- `recycle(percent)` sets the entry `recycle` (absent = 0): that share of responses, at random,
  carries `connection: close`, so keep-alive clients of a busy member reconnect at a bounded rate
  and the router can place them on a new member (a scale-out otherwise leaves every established
  keep-alive connection where it is). The lines use `rand(100),sub(txn.scaler_recycle)`: HAProxy
  compares a fetch with a variable only through a converter.

Why not `set var proc.drain` on the CLI: HAProxy 2.6 answers "This command is restricted to
experimental mode only". Why not `virt@` maps (no file needed): 2.6 cannot open them. A runtime
change to a map is lost when HAProxy restarts (it reloads the file), so callers re-apply the
desired drain state instead of assuming it persisted. It closes HTTP/1 connections only: an HTTP/2
connection ignores `connection: close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from actuators.errors import ActuatorError
from actuators.linux.netns import socket_in

# The map's file name is fixed so a client can find it with `show map` without being told its path.
DRAIN_MAP_NAME = "scaler-drain.map"
DRAIN_MAP_INITIAL = "drain 0\n"
_DRAIN_KEY = "drain"
_RECYCLE_KEY = "recycle"


class HAProxyRuntimeError(ActuatorError):
    """A runtime API command could not be sent or HAProxy refused it."""


def drain_map_path(directory: str) -> str:
    """Where the drain map lives when the configuration's files are kept in `directory`."""
    return os.path.join(directory, DRAIN_MAP_NAME)


def drain_config_lines(map_path: str) -> list[str]:
    """The lines an HTTP `frontend` section needs for `drain()` to work (without indentation).

    The map file at `map_path` must exist when HAProxy starts; write `DRAIN_MAP_INITIAL` to it.
    """
    if os.path.basename(map_path) != DRAIN_MAP_NAME:
        raise ValueError(f"the drain map must be called {DRAIN_MAP_NAME}, not {map_path!r}")
    return [
        "# scaler recycle: while the runtime map says recycle=N, N % of responses close their connection",
        "# (keep-alive clients spread onto new members after a scale-out).",
        f"http-after-response set-var(txn.scaler_recycle) str({_RECYCLE_KEY}),map({map_path},0)",
        "http-after-response set-header connection close if { rand(100),sub(txn.scaler_recycle) -m int lt 0 }",
        "# scaler drain: while the runtime map says drain=1, every response closes its connection,",
        "# so keep-alive clients reconnect elsewhere; new connections are still accepted.",
        f"http-after-response set-header connection close if {{ str({_DRAIN_KEY}),map({map_path},0)"
        f" -m str 1 }}",
    ]


def parse_show_info(text: str) -> dict[str, str]:
    """`show info` output (`Name: value` lines) as a dict."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            info[key.strip()] = value.strip()
    return info


def parse_show_stat(text: str) -> list[dict[str, str]]:
    """`show stat` CSV (header line starts with `# `) as one dict per proxy/server row."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("# "):
        return []
    header = lines[0][2:].split(",")
    return [dict(zip(header, ln.split(","), strict=False)) for ln in lines[1:]]


def parse_show_map(text: str) -> list[str]:
    """File paths of the maps listed by `show map` (lines like `0 (/path) pattern loaded ...`)."""
    paths: list[str] = []
    for line in text.splitlines():
        start, end = line.find("("), line.find(")")
        if 0 <= start < end and not line.startswith("#"):
            paths.append(line[start + 1:end])
    return paths


class HAProxyRuntime:
    """One HAProxy's runtime API.

    `address` is a unix socket path or `tcp:HOST:PORT`; `netns` (optional) is the network
    namespace to open a TCP connection from. `drain_map` is the map file named in the
    configuration; when None it is found with `show map` by its file name.
    """

    def __init__(self, address: str, *, timeout_s: float = 2.0, netns: str | None = None,
                 drain_map: str | None = None) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.netns = netns
        self._drain_map = drain_map

    async def command(self, cmd: str) -> str:
        """Send one command line (several may be joined with `;`) and return HAProxy's answer."""
        if "\n" in cmd:
            raise HAProxyRuntimeError(f"haproxy {self.address}: a command is one line: {cmd!r}")
        try:
            return await asyncio.wait_for(self._exchange(cmd), self.timeout_s)
        except TimeoutError:
            raise HAProxyRuntimeError(
                f"haproxy {self.address}: no answer to {cmd!r} after {self.timeout_s}s") from None
        except (OSError, ActuatorError) as exc:
            raise HAProxyRuntimeError(f"haproxy {self.address}: {cmd!r}: {exc}") from exc

    async def _exchange(self, cmd: str) -> str:
        reader, writer = await self._open()
        try:
            writer.write(cmd.encode() + b"\n")
            await writer.drain()
            # In non-interactive mode HAProxy answers and closes: read to EOF.
            data = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return data.decode(errors="replace")

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if not self.address.startswith("tcp:"):
            return await asyncio.open_unix_connection(self.address)
        host, sep, port = self.address[4:].rpartition(":")
        if not sep or not port.isdigit():
            raise HAProxyRuntimeError(f"bad runtime API address {self.address!r} (want tcp:HOST:PORT)")
        if self.netns is None:
            return await asyncio.open_connection(host, int(port))
        sock = socket_in(self.netns, socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    async def show_info(self) -> dict[str, str]:
        info = parse_show_info(await self.command("show info"))
        if "Pid" not in info:
            raise HAProxyRuntimeError(f"haproxy {self.address}: unexpected `show info` answer")
        return info

    async def show_stat(self) -> list[dict[str, str]]:
        return parse_show_stat(await self.command("show stat"))

    async def current_connections(self) -> int:
        """CurrConns: client connections HAProxy holds now, on every frontend."""
        info = await self.show_info()
        try:
            return int(info["CurrConns"])
        except (KeyError, ValueError) as exc:
            raise HAProxyRuntimeError(f"haproxy {self.address}: no CurrConns in `show info`") from exc

    async def drain_map(self) -> str:
        if self._drain_map is None:
            found = [p for p in parse_show_map(await self.command("show map"))
                     if os.path.basename(p) == DRAIN_MAP_NAME]
            if not found:
                raise HAProxyRuntimeError(
                    f"haproxy {self.address}: no {DRAIN_MAP_NAME} map loaded; the configuration "
                    "needs drain_config_lines()")
            self._drain_map = found[0]
        return self._drain_map

    async def _set(self, key: str, value: str) -> None:
        path = await self.drain_map()
        answer = (await self.command(f"set map {path} {key} {value}")).strip()
        if "entry not found" in answer.lower():
            # Not in the map file (emptied, or a key the file never had): add it.
            answer = (await self.command(f"add map {path} {key} {value}")).strip()
        if answer:
            raise HAProxyRuntimeError(f"haproxy {self.address}: setting {key}={value}: {answer}")

    async def _set_drain(self, value: str) -> None:
        await self._set(_DRAIN_KEY, value)

    async def recycle(self, percent: int) -> None:
        """Close `percent` % of responses' client connections (0 = none), chosen at random."""
        if not 0 <= percent <= 100:
            raise ValueError(f"recycle percent {percent} outside 0..100")
        await self._set(_RECYCLE_KEY, str(percent))

    async def drain(self) -> None:
        """Close every client connection after its current response; keep accepting new ones."""
        await self._set_drain("1")

    async def undrain(self) -> None:
        await self._set_drain("0")

    async def is_draining(self) -> bool:
        path = await self.drain_map()
        answer = await self.command(f"get map {path} {_DRAIN_KEY}")
        return 'value="1"' in answer

