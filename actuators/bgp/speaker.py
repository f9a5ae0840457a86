"""ExaBGP as a supervised child of the scaler: its configuration written from the driver's options, the
process started (in a network namespace if asked) and restarted with backoff, an orphan left by a
SIGKILLed scaler stopped, and the kernel asked to kill it when the scaler dies. It never speaks the
ExaBGP API and knows nothing of paths or sessions: that is `actuators.bgp.router`, which listens on the
socket `bridge.py` connects to and is told through `on_exit` when the process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pwd
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actuators.bgp.config import BgpRouterConfig
from actuators.errors import RouterError
from actuators.linux import netns
from actuators.linux.procs import gone, process_cmdline

__all__ = ["BRIDGE", "Speaker", "SpeakerStatus", "render_exabgp_conf"]

log = logging.getLogger(__name__)

BRIDGE = Path(__file__).with_name("bridge.py")
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


@dataclass
class SpeakerStatus:
    """The speaker process as the API and the metrics show it. `connected` (its API process is connected)
    is set by the router, which owns that connection."""

    running: bool = False
    connected: bool = False
    pid: int | None = None
    starts: int = 0
    restarts: int = 0
    last_exit: str | None = None
    next_start_in_s: float | None = None
    held: bool = False              # not restarted until the next apply(): this scaler stood still

    def as_dict(self) -> dict[str, Any]:
        return {"running": self.running, "connected": self.connected, "pid": self.pid, "starts": self.starts,
                "restarts": self.restarts, "last_exit": self.last_exit, "next_start_in_s": self.next_start_in_s,
                "held": self.held}


def render_exabgp_conf(cfg: BgpRouterConfig, python: str, socket_path: Path) -> str:
    lines = ["process scaler {", f'    run "{python}" "{BRIDGE}" "{socket_path}" "{cfg.watchdog_s:g}";',
             "    encoder json;", "}", ""]
    for p in cfg.peers:
        lines += [
            f"neighbor {p.address} {{",
            f'    description "{p.label}";',
            f"    router-id {cfg.router_id};",
            f"    local-address {p.local_address or cfg.local_address};",
            f"    local-as {cfg.local_as};",
            f"    peer-as {p.asn};",
            f"    hold-time {p.hold_time_s};",
            # We send End-of-RIB ourselves, after the replay: an automatic one right after the OPEN
            # would tell the router "that was everything" before we said anything.
            "    manual-eor true;",
            "    capability {",
            "        add-path send;",
            f"        graceful-restart {cfg.graceful_restart_s};",
            "    }",
            "    family { ipv4 unicast; }",
            "    api { processes [ scaler ]; neighbor-changes; }",
            "}",
            "",
        ]
    return "\n".join(lines)


class Speaker:
    """One supervised ExaBGP for `config`, whose API process (`bridge.py`) connects to `socket_path`.
    `on_exit(why)` is called each time the process has exited: its API connection died with it."""

    def __init__(self, config: BgpRouterConfig, socket_path: Path, on_exit: Callable[[str], None]) -> None:
        self.config = config
        self.dir = config.dir
        self.socket_path = socket_path
        self.status = SpeakerStatus()
        self._on_exit = on_exit
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._released = asyncio.Event()
        self._released.set()

    @property
    def started(self) -> bool:
        return self._supervisor is not None

    async def start(self) -> None:
        """Stop an ExaBGP left by an earlier scaler, then start supervising ours. Returns without waiting
        for it to run."""
        self._closing = False           # started again after a stop (a scaler that leads again)
        self.release()
        await self._kill_orphan()
        self._supervisor = asyncio.create_task(self._supervise(), name="exabgp-supervisor")

    def hold(self) -> None:
        """This scaler stood still (its bridge's watchdog killed ExaBGP, or is about to): do not start
        ExaBGP again until `release()`. A scaler frozen while leading learns on waking that it lost
        the leadership; an automatic restart would first announce its old state once more."""
        if self._released.is_set():
            log.warning("this scaler stood still for over %gs: ExaBGP is restarted only at the next apply",
                        self.config.watchdog_s)
        self._released.clear()
        self.status.held = True

    def release(self) -> None:
        self._released.set()
        self.status.held = False

    def kill(self) -> None:
        """SIGKILL the running ExaBGP (hung, or without its API process): the supervisor starts a new one."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    async def stop(self) -> None:
        """Stop supervising and SIGKILL ExaBGP (routers keep our paths for `graceful_restart_s`)."""
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
            self._supervisor = None
        await self._stop_process()
        self.status.running, self.status.pid = False, None    # the cancelled supervisor could not say so

    async def _supervise(self) -> None:
        backoff = self.config.restart_backoff_s
        while not self._closing:
            started = time.monotonic()
            try:
                rc = await self._run()
                self.status.last_exit = f"exit status {rc}" if rc >= 0 else f"killed by signal {-rc}"
            except (OSError, RouterError) as exc:
                self.status.last_exit = f"could not start: {exc}"
            self.status.running, self.status.pid = False, None
            if self._closing:
                return
            if time.monotonic() - started > 60:
                backoff = self.config.restart_backoff_s
            self.status.restarts += 1
            log.error("ExaBGP %s; restarting it in %.1fs (restart %d; routers keep our paths as stale for %ds)",
                      self.status.last_exit, backoff, self.status.restarts, self.config.graceful_restart_s)
            self.status.next_start_in_s = backoff
            await asyncio.sleep(backoff)
            self.status.next_start_in_s = None
            backoff = min(backoff * 2, self.config.restart_backoff_max_s)
            await self._released.wait()

    async def _run(self) -> int:
        cfg = self.config
        conf = self.dir / "exabgp.conf"
        conf.write_text(render_exabgp_conf(cfg, sys.executable, self.socket_path))
        env = os.environ | {
            "exabgp_daemon_user": pwd.getpwuid(os.getuid()).pw_name,   # else it drops to `nobody`
            "exabgp_daemon_daemonize": "false",
            "exabgp_daemon_pid": str(self.dir / "exabgp.pid"),
            "exabgp_api_cli": "false",
            "exabgp_api_ack": "true",
            "exabgp_api_respawn": "false",
            "exabgp_tcp_bind": "",                 # we connect; we never listen on 179
            "exabgp_log_destination": str(self.dir / "exabgp.log"),
            "exabgp_log_level": "INFO",
            "EXABGP_ROOT": str(self.dir),
        }
        argv = netns.ns_command(cfg.netns, [cfg.exabgp_program(), str(conf)])
        with (self.dir / "exabgp.out").open("ab") as out:
            self._proc = await asyncio.create_subprocess_exec(*argv, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                              stdout=out, stderr=out, start_new_session=True,
                                                              preexec_fn=_die_with_parent)
        self.status.running, self.status.pid = True, self._proc.pid
        self.status.starts += 1
        log.info("ExaBGP started (pid %d) for peers %s", self._proc.pid,
                 ", ".join(p.label for p in cfg.peers))
        rc = await self._proc.wait()
        self._proc = None
        self._on_exit(f"ExaBGP exited ({rc})")
        return rc

    async def _stop_process(self) -> None:
        """SIGKILL, not SIGTERM: a terminated ExaBGP sends a Cease NOTIFICATION and the routers drop our
        paths at once; a killed one just closes TCP, and graceful restart keeps them (stale) until a
        new speaker replays them or `graceful_restart_s` passes. A scaler restart stays hitless."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()

    async def _kill_orphan(self) -> None:
        """An ExaBGP left by a scaler that was SIGKILLed would hold our sessions: stop it."""
        pidfile = self.dir / "exabgp.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        if str(self.dir / "exabgp.conf") not in process_cmdline(pid):
            return
        log.warning("stopping an ExaBGP left by a previous scaler (pid %d)", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(250):
            if gone(pid):
                return
            await asyncio.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the scaler dies, however it dies (prctl
    PR_SET_PDEATHSIG survives the exec of `ip netns exec` and of exabgp). A SIGKILLed scaler thus
    never leaves a speaker announcing paths nobody manages; graceful restart covers the gap.
    Only a call into libc loaded beforehand: nothing here may take a lock after the fork."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
