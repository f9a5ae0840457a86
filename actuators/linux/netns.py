"""Network-namespace helpers: open sockets and run commands inside a named namespace.

setns(2) for CLONE_NEWNET changes only the calling thread, and a socket stays in the namespace it
was created in. So a short-lived thread enters the namespace, creates the socket and exits; the
event loop's own thread never changes namespace. Nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from actuators.errors import ActuatorError

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
T = TypeVar("T")


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def call_in(name: str | None, fn: Callable[[], T]) -> T:
    """Run `fn` in a fresh thread that has entered namespace `name` (None: the current one).

    Use it for quick, non-blocking work such as creating a socket; the result is returned.
    """
    if name is None:
        return fn()
    box: dict[str, object] = {}

    def run() -> None:
        try:
            fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            box["error"] = ActuatorError(f"network namespace {name!r} does not exist")
            box["cause"] = exc
            return
        try:
            _setns(fd)
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=run, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        err = box["error"]
        assert isinstance(err, BaseException)
        raise err
    return box["result"]  # type: ignore[return-value]


def socket_in(name: str | None, family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket that lives in namespace `name`."""
    return call_in(name, lambda: socket.socket(family, type_, proto))


def ns_command(name: str | None, argv: Sequence[str]) -> list[str]:
    """argv prefixed to run inside namespace `name`."""
    return list(argv) if name is None else ["ip", "netns", "exec", name, *argv]


async def run(argv: Sequence[str], *, ns: str | None = None, stdin: bytes | None = None,
              timeout_s: float = 30.0, check: bool = True) -> tuple[int, str, str]:
    """Run a command (inside `ns` if given) without blocking the loop; returns (rc, out, err)."""
    cmd = ns_command(ns, argv)
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ActuatorError(f"{' '.join(cmd)}: no result after {timeout_s:.0f}s") from None
    rc = proc.returncode or 0
    if check and rc != 0:
        raise ActuatorError(f"{' '.join(cmd)} exited {rc}: {err.decode(errors='replace').strip()}")
    return rc, out.decode(errors="replace"), err.decode(errors="replace")
