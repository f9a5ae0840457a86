"""Processes the actuators start and stop by PID: pidfiles, command lines, waiting for an exit.

A PID is only ever signalled after its command line was checked (a reused PID never matches), and
"gone" includes zombies: a child killed but not yet reaped by its parent no longer runs.
Used by the lab, the snmpd and FRR runners and the bgp driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

__all__ = ["gone", "kill_pidfile", "process_cmdline", "process_matches", "read_pidfile", "terminate", "wait_gone"]


def read_pidfile(path: Path) -> int | None:
    try:
        text = path.read_text().split()
        return int(text[0]) if text else None
    except (OSError, ValueError):
        return None


def process_cmdline(pid: int) -> str:
    """The command line of a live process, "" if gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def process_matches(pid: int, marker: str) -> bool:
    """True if `pid` is alive and its command line contains `marker` (so a reused pid never matches)."""
    return marker in process_cmdline(pid)


def gone(pid: int) -> bool:
    """True if `pid` does not exist or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


async def wait_gone(pid: int, timeout_s: float) -> bool:
    """Poll every 20 ms until `pid` is gone; False if it still runs after `timeout_s`."""
    for _ in range(max(1, int(timeout_s / 0.02))):
        if gone(pid):
            return True
        await asyncio.sleep(0.02)
    return gone(pid)


async def terminate(pid: int, *, timeout_s: float = 2.0) -> bool:
    """SIGTERM, wait up to `timeout_s`, then SIGKILL. True if we signalled it."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    if await wait_gone(pid, timeout_s):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    await wait_gone(pid, 2.0)
    return True


async def kill_pidfile(path: Path, marker: str) -> tuple[int, str] | None:
    """Stop the process named by a pidfile if its command line contains `marker`; remove the file.

    Returns (pid, command line) if a process was stopped.
    """
    pid = read_pidfile(path)
    stopped: tuple[int, str] | None = None
    if pid is not None and pid > 1:
        cmd = process_cmdline(pid)
        if marker in cmd and await terminate(pid):
            stopped = (pid, cmd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return stopped
