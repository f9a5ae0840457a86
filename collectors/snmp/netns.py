"""Opens a UDP socket inside a named network namespace (/run/netns/NAME) without the event loop's
thread ever leaving its own.

setns(2) with CLONE_NEWNET moves only the calling thread, and a socket stays in the namespace it was
created in for its whole life. So a fresh, short-lived thread (never a pooled executor thread, which
would stay moved) enters the namespace, creates the socket and exits; the loop awaits it without
blocking. The namespace's identity (device, inode) is returned with the socket, so a caller can tell
when the name now points to a different namespace (deleted and re-created) and open a new socket.
It must not change the namespace of any thread it did not create.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import socket
import threading

__all__ = ["NETNS_RUN_DIR", "NetnsError", "namespace_id", "open_udp_socket"]

NETNS_RUN_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

NamespaceId = tuple[int, int]


class NetnsError(OSError):
    """The namespace does not exist or cannot be entered."""


def _path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise NetnsError(f"invalid network namespace name {name!r}")
    return os.path.join(NETNS_RUN_DIR, name)


def namespace_id(name: str) -> NamespaceId | None:
    """(st_dev, st_ino) of the namespace `name` now, or None if there is none by that name."""
    try:
        st = os.stat(_path(name))
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _create_in(name: str, family: int, rcvbuf: int) -> tuple[socket.socket, NamespaceId]:
    """Runs in a throw-away thread: enter `name`, make the socket."""
    try:
        fd = os.open(_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(f"network namespace {name!r} does not exist") from None
    try:
        st = os.fstat(fd)
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(err, f"cannot enter network namespace {name!r}: {os.strerror(err)}")
        return _udp_socket(family, rcvbuf), (st.st_dev, st.st_ino)
    finally:
        os.close(fd)


def _udp_socket(family: int, rcvbuf: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if rcvbuf:
            # Many agents answering one socket at once: a bigger queue instead of silent drops.
            # The kernel caps it at net.core.rmem_max.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_udp_socket(name: str | None, family: int = socket.AF_INET, *,
                          rcvbuf: int = 0) -> tuple[socket.socket, NamespaceId | None]:
    """A non-blocking UDP socket living in namespace `name` (None: ours), and that namespace's id."""
    if name is None:
        return _udp_socket(family, rcvbuf), None
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[socket.socket, NamespaceId]] = loop.create_future()

    def deliver(result: tuple[socket.socket, NamespaceId] | None, error: BaseException | None) -> None:
        if done.cancelled():
            if result is not None:
                result[0].close()
            return
        if error is not None:
            done.set_exception(error)
        else:
            assert result is not None
            done.set_result(result)

    def run() -> None:
        try:
            result = _create_in(name, family, rcvbuf)
        except BaseException as exc:
            loop.call_soon_threadsafe(deliver, None, exc)
        else:
            loop.call_soon_threadsafe(deliver, result, None)

    threading.Thread(target=run, name=f"snmp-netns-{name}", daemon=True).start()
    return await done
