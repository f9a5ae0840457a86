"""Runs a real net-snmp `snmpd` (5.9) as a plain process whose every file lives in one directory:
the lab gives one to each LB instance, tests and benchmarks start their own on loopback.

    DIR/snmpd.conf     our configuration only (SNMPCONFPATH=DIR: no system file is read); mode 0600,
                       it holds the USM passphrases and communities
    DIR/persist/       SNMP_PERSISTENT_DIR: engine boots, localised user keys. Wiping it gives the
                       agent a new engine ID on its next start — what a replaced VM reusing an
                       address looks like to a manager
    DIR/snmpd.pid      the daemon's pid (snmpd writes it once its sockets are bound)
    DIR/snmpd.log      its log

Always `-I -smux,mteTrigger,mteTriggerConf` (without it snmpd also listens on TCP 0.0.0.0:199) and an
empty MIBS (the agent needs no MIB files; loading them only fills the log with warnings). It may run
inside a named network namespace (`ip netns exec`). It stops only the process its pidfile names, and
only if that process's command line names that pidfile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from actuators.errors import ActuatorError
from actuators.linux import netns
from actuators.linux.procs import gone, wait_gone

__all__ = ["AUTH_PROTOCOLS", "PRIV_PROTOCOLS", "Snmpd", "SnmpdCommunity", "SnmpdConfig", "SnmpdError", "SnmpdUser"]

# Protocol names as net-snmp's createUser spells them. "AES" is AES-128; AES-192/256 extend keys per
# the Blumenthal draft, the "-C" variants per Reeder (Cisco): a manager must use the same variant.
AUTH_PROTOCOLS = frozenset({"MD5", "SHA", "SHA-224", "SHA-256", "SHA-384", "SHA-512"})
PRIV_PROTOCOLS = frozenset({"DES", "AES", "AES-192", "AES-256", "AES-192-C", "AES-256-C"})
DISABLED_MODULES = "smux,mteTrigger,mteTriggerConf"


class SnmpdError(ActuatorError):
    """snmpd could not be configured, started or stopped."""


@dataclass(frozen=True, slots=True)
class SnmpdUser:
    """A USM user (read-only on the whole tree). `priv_protocol=None`: authNoPriv only."""

    name: str
    auth_passphrase: str = field(repr=False)
    priv_passphrase: str | None = field(default=None, repr=False)
    auth_protocol: str = "SHA-256"
    priv_protocol: str | None = "AES"

    def config_lines(self) -> list[str]:
        if self.auth_protocol not in AUTH_PROTOCOLS:
            raise SnmpdError(f"user {self.name}: unknown auth protocol {self.auth_protocol!r}")
        for passphrase in (self.auth_passphrase, self.priv_passphrase):
            if passphrase is not None and (len(passphrase) < 8 or '"' in passphrase or "\n" in passphrase):
                raise SnmpdError(f"user {self.name}: passphrases need 8+ characters, no quote or newline")
        line = f'createUser {self.name} {self.auth_protocol} "{self.auth_passphrase}"'
        level = "auth"
        if self.priv_protocol is not None:
            if self.priv_protocol not in PRIV_PROTOCOLS or self.priv_passphrase is None:
                raise SnmpdError(f"user {self.name}: priv protocol {self.priv_protocol!r} needs a known name and "
                                 "a passphrase")
            line += f' {self.priv_protocol} "{self.priv_passphrase}"'
            level = "priv"
        return [line, f"rouser {self.name} {level} -V all"]


@dataclass(frozen=True, slots=True)
class SnmpdCommunity:
    """A read-only v2c community, accepted from `source` (an address or a prefix)."""

    community: str = field(repr=False)
    source: str = "127.0.0.1"

    def config_line(self) -> str:
        if not self.community or any(c.isspace() for c in self.community):
            raise SnmpdError("a community must be one non-empty word")
        return f"rocommunity {self.community} {self.source} -V all"


@dataclass(frozen=True, slots=True)
class SnmpdConfig:
    """One agent. `listen` holds transport addresses (`127.0.0.1:16161`, `udp6:[::1]:161`; a bare
    address means UDP). `extra` lines are appended verbatim (e.g. `pass_persist ...`)."""

    directory: Path
    listen: Sequence[str] = ("127.0.0.1:161",)
    communities: Sequence[SnmpdCommunity] = ()
    users: Sequence[SnmpdUser] = ()
    netns: str | None = None
    snmpd_bin: str = "snmpd"
    extra: Sequence[str] = ()
    sys_name: str | None = None


class Snmpd:
    """Start, stop and restart one snmpd described by an `SnmpdConfig`."""

    def __init__(self, config: SnmpdConfig) -> None:
        self.config = config
        d = config.directory
        self.conf_path = d / "snmpd.conf"
        self.persist_dir = d / "persist"
        self.pidfile = d / "snmpd.pid"
        self.log_path = d / "snmpd.log"

    def __repr__(self) -> str:
        return f"Snmpd({self.config.directory}, listen={list(self.config.listen)}, netns={self.config.netns})"

    @property
    def marker(self) -> str:
        """A string on our daemon's command line (its pidfile path), so a reused pid never matches."""
        return str(self.pidfile)

    def render(self) -> str:
        """The snmpd.conf text. Pure: same config, same text."""
        cfg = self.config
        addresses = ",".join(_transport_address(a) for a in cfg.listen)
        lines = [
            "# Written by scaler (actuators.lab.snmpd); regenerated on every start.",
            f"agentAddress {addresses}",
            "view all included .1",
        ]
        if cfg.sys_name:
            lines.append(f"sysName {cfg.sys_name}")
        lines += [c.config_line() for c in cfg.communities]
        for user in cfg.users:
            lines += user.config_lines()
        lines += list(cfg.extra)
        return "\n".join(lines) + "\n"

    def argv(self) -> list[str]:
        # No -C/-c: the configuration is found through SNMPCONFPATH, which also makes snmpd read back
        # its persistent file (engine ID, boots). With -C it would skip that file and pick a new
        # engine ID at every start.
        return [self.config.snmpd_bin, "-I", f"-{DISABLED_MODULES}", "-Lf", str(self.log_path),
                "-p", str(self.pidfile)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The persistent directory must be on the search path too, or snmpd never reads back its engine
        # ID and boots (a new engine ID at every start).
        env.update(SNMPCONFPATH=f"{self.config.directory}:{self.persist_dir}",
                   SNMP_PERSISTENT_DIR=str(self.persist_dir), MIBS="")
        return env

    # -- process state ----------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The live daemon's pid, or None (no pidfile, a dead process, or someone else's)."""
        try:
            text = self.pidfile.read_text().split()
            pid = int(text[0]) if text else None
        except (OSError, ValueError):
            return None
        if pid is None or pid <= 1 or gone(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        return pid if self.marker in cmdline else None

    def running(self) -> bool:
        return self.pid() is not None

    # -- lifecycle ----------------------------------------------------------------------------------

    def write_config(self) -> bool:
        """Write snmpd.conf (0600) if its text changed; True if it did."""
        text = self.render()
        d = self.config.directory
        d.mkdir(parents=True, exist_ok=True)
        try:
            if self.conf_path.read_text() == text:
                return False
        except FileNotFoundError:
            pass
        tmp = d / ".snmpd.conf.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.conf_path)
        return True

    async def start(self, *, wipe_persistent: bool = False, timeout_s: float = 10.0) -> int:
        """Start the daemon; returns its pid once its sockets are bound. Raises if one already runs.

        `wipe_persistent` empties the persistent directory first: the agent gets a new engine ID.
        """
        running = self.pid()
        if running is not None:
            raise SnmpdError(f"{self}: already running as pid {running}")
        self.write_config()
        if wipe_persistent:
            shutil.rmtree(self.persist_dir, ignore_errors=True)
        self.persist_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()
        cmd = netns.ns_command(self.config.netns, self.argv())
        # snmpd binds its sockets, forks, writes the pidfile and the parent exits: a zero exit with
        # a pidfile naming a live daemon means it is ready to answer.
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=self.env(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise SnmpdError(f"{self}: snmpd did not detach within {timeout_s:g}s") from None
        if proc.returncode != 0:
            raise SnmpdError(f"{self}: snmpd exited {proc.returncode}: "
                             f"{out.decode(errors='replace').strip()} {self._log_tail()}")
        deadline = time.monotonic() + timeout_s
        while (pid := self.pid()) is None:
            if time.monotonic() > deadline:
                raise SnmpdError(f"{self}: no live daemon behind {self.pidfile} after {timeout_s:g}s "
                                 f"{self._log_tail()}")
            await asyncio.sleep(0.02)
        return pid

    async def stop(self, *, timeout_s: float = 5.0) -> bool:
        """SIGTERM our daemon (it saves its persistent state), SIGKILL after `timeout_s`. True if
        one was running."""
        pid = self.pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not await wait_gone(pid, timeout_s):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await wait_gone(pid, 2.0)
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()
        return True

    async def restart(self, *, wipe_persistent: bool = False, timeout_s: float = 10.0) -> int:
        await self.stop()
        return await self.start(wipe_persistent=wipe_persistent, timeout_s=timeout_s)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return ""
        return f"(log: {' | '.join(tail)})" if tail else ""


def _transport_address(address: str) -> str:
    """net-snmp transport syntax: a bare `HOST:PORT` is UDP, `[V6]:PORT` is UDP over IPv6."""
    if address.startswith(("udp:", "udp6:", "tcp:", "tcp6:", "unix:")):
        return address
    return f"udp6:{address}" if address.startswith("[") else f"udp:{address}"
