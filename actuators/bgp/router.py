"""The `bgp` router driver: the VIPs' next hops announced to the routers over BGP by a supervised ExaBGP 5.

The scaler starts ExaBGP as a child process (in the namespace `netns` if given) with a configuration
it writes itself: one neighbor per router peer, ADD-PATH send, graceful restart and `manual-eor`.
ExaBGP runs `actuators/bgp/bridge.py` as its API process, which connects back to a unix socket
this driver listens on; commands go one per line, ExaBGP acknowledges each with `done` or `error`
and reports sessions as JSON events on the same stream.

Each member is one path of its VIP: `VIP/32 next-hop MEMBER path-information MEMBER` — the path id
is the member's address, so it is stable across restarts of the scaler, ExaBGP and the routers, and
never needs storing. `apply()` takes the desired state of VIPs, diffs it against what ExaBGP holds
and writes the whole difference as one burst of commands, then reads every acknowledgement.

Restarts, the reason this driver exists:
- ExaBGP dies (crash, kill -9): the supervisor restarts it with backoff. The routers keep our paths
  as stale during the graceful-restart time. When a session comes up, the driver replays its full
  desired state in one burst, explicitly withdraws every path a router may still hold that is no
  longer wanted (FRR 8.4 removes only one of several stale ADD-PATH paths at End-of-RIB, FRR issue
  #17372: so nothing is left to EoR), and only then sends End-of-RIB. The FIB never changes for a
  path that is still wanted.
- A router restarts: its session goes down and up; the same replay runs for it.
- The scaler restarts: ExaBGP is its child and goes with it (an ExaBGP orphaned by a SIGKILL of the
  scaler is found by its pidfile and stopped). The paths possibly held by routers are kept in
  `DIR/paths.txt`, so the first replay withdraws those no longer wanted. No replay (and no EoR)
  happens before the first `apply()`: until the caller has said what it wants, the routers keep
  the stale paths rather than being told "nothing".

What the caller can rely on (`actuators.router.Router`): `apply()` returns once ExaBGP acknowledged
every command; `status()` reports the paths ExaBGP holds, each only `settle_s` after its
acknowledgement (an UPDATE reaches a router's FIB ~80 ms after the ack, most of it FRR's own 50 ms
batching), and raises `RouterError` when no session is established and synchronised: then nobody
knows what the routers hold. While the speaker is down `apply()` records the desired state (it is
what the next replay sends) and raises `RouterError`.

There are no weights in plain ECMP: `drain_mode` is `withdraw` (see `actuators.router.DrainMode`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import pwd
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actuators.errors import RouterError
from actuators.linux import netns
from actuators.linux.procs import gone, process_cmdline
from actuators.router import ApplyResult, DesiredRoutes, DrainMode, HopState, HopStatus, Router, RouteStatus

log = logging.getLogger(__name__)

BRIDGE = Path(__file__).with_name("bridge.py")
UNIX_PATH_MAX = 107
PR_SET_PDEATHSIG = 1
PATHS_FILE = "paths.txt"
NLRI_PER_COMMAND = 200          # ~3.5 kB per command line
_LIBC = ctypes.CDLL(None, use_errno=True)
Path_ = tuple[IPv4Address, IPv4Address]         # (vip, next hop)


class BgpPeer(BaseModel):
    """One router the VIPs are announced to (e.g. each of the two ToRs of the LB rack)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: IPv4Address
    asn: int = Field(ge=1, le=4_294_967_295)
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    # Our address on the link to this peer, when the peers sit on different links (two ToRs).
    local_address: IPv4Address | None = None
    # The hold time we offer; the session uses the lower of both sides'. A dead speaker is usually
    # noticed at once (its TCP connection closes); the hold time covers a hung one.
    hold_time_s: int = Field(default=30, ge=3, le=65535)

    @property
    def label(self) -> str:
        return self.name or str(self.address)


class BgpRouterConfig(BaseModel):
    """How the scaler speaks BGP. `dir` holds ExaBGP's configuration, log, pidfile, API socket and
    `paths.txt`; it must be private to this scaler."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    local_as: int = Field(ge=1, le=4_294_967_295)
    router_id: IPv4Address
    local_address: IPv4Address
    peers: list[BgpPeer] = Field(min_length=1)
    netns: str | None = None                   # namespace ExaBGP runs in; None = the scaler's
    dir: Path = Path("/var/lib/scaler/bgp")
    exabgp: Path | None = None                 # the exabgp program; default: next to this Python, else PATH
    # How long routers keep our paths (stale) after the speaker went away: it must cover an
    # ExaBGP restart (about 1 s) and a scaler restart.
    graceful_restart_s: int = Field(default=120, ge=1, le=4095)
    settle_s: float = Field(default=0.3, ge=0, le=10)
    ack_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # At start, how long to wait for ExaBGP's API and then for a first session before going on.
    start_wait_s: float = Field(default=5.0, ge=0, le=120)
    restart_backoff_s: float = Field(default=0.5, gt=0, le=60)
    restart_backoff_max_s: float = Field(default=30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _check(self) -> BgpRouterConfig:
        addresses = [p.address for p in self.peers]
        dupes = sorted({str(a) for a in addresses if addresses.count(a) > 1})
        if dupes:
            raise ValueError(f"peers: {', '.join(dupes)} listed more than once")
        if len(str(self.dir / "api.sock")) > UNIX_PATH_MAX:
            raise ValueError(f"dir: {self.dir} is too long for a unix socket path (max {UNIX_PATH_MAX - 9} chars)")
        if self.restart_backoff_max_s < self.restart_backoff_s:
            raise ValueError("restart_backoff_max_s must be at least restart_backoff_s")
        return self

    def exabgp_program(self) -> str:
        if self.exabgp is not None:
            return str(self.exabgp)
        beside = Path(sys.executable).parent / "exabgp"
        if beside.exists():
            return str(beside)
        found = shutil.which("exabgp")
        if found is None:
            raise RouterError("exabgp not found (pip install 'exabgp>=5,<6', or set router.options.exabgp)")
        return found


@dataclass
class SessionStatus:
    """One peer's session as ExaBGP reports it.

    state: `down` (no TCP session), `connected` (TCP up, OPEN exchange), `up` (established, our
    replay not sent yet), `synced` (established, full desired state and End-of-RIB sent).
    """

    peer: str
    address: IPv4Address
    state: str = "down"
    since: float = field(default_factory=time.time)
    ups: int = 0
    downs: int = 0
    replays: int = 0
    last_replay_paths: int = 0
    last_replay_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"peer": self.peer, "address": str(self.address), "state": self.state, "since": self.since,
                "ups": self.ups, "downs": self.downs, "replays": self.replays,
                "last_replay_paths": self.last_replay_paths, "last_replay_s": round(self.last_replay_s, 4)}


@dataclass
class SpeakerStatus:
    running: bool = False
    connected: bool = False
    pid: int | None = None
    starts: int = 0
    restarts: int = 0
    last_exit: str | None = None
    next_start_in_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"running": self.running, "connected": self.connected, "pid": self.pid, "starts": self.starts,
                "restarts": self.restarts, "last_exit": self.last_exit, "next_start_in_s": self.next_start_in_s}


def route_line(verb: str, vip: IPv4Address, hop: IPv4Address, neighbor: IPv4Address | None = None) -> str:
    prefix = f"neighbor {neighbor} " if neighbor is not None else ""
    return f"{prefix}{verb} route {vip}/32 next-hop {hop} path-information {hop}"


def eor_line(neighbor: IPv4Address) -> str:
    return f"neighbor {neighbor} announce eor ipv4 unicast"


def render_exabgp_conf(cfg: BgpRouterConfig, python: str, socket_path: Path) -> str:
    lines = ["process scaler {", f'    run "{python}" "{BRIDGE}" "{socket_path}";', "    encoder json;", "}", ""]
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


class BgpRouter(Router):
    drain_mode = DrainMode.WITHDRAW

    def __init__(self, config: BgpRouterConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.dir = config.dir
        self.socket_path = self.dir / "api.sock"
        self.sessions: dict[IPv4Address, SessionStatus] = {
            p.address: SessionStatus(p.label, p.address) for p in config.peers}
        self.speaker = SpeakerStatus()
        self.last_replay: ApplyResult | None = None
        # The desired state of every VIP the caller ever gave (an empty set: no route).
        self._desired: dict[IPv4Address, dict[IPv4Address, HopState]] = {}
        self._have_desired = False
        self._waited_first_session = False
        # What the running ExaBGP holds: VIP → next hop → (state, monotonic time of its ack).
        self._sent: dict[IPv4Address, dict[IPv4Address, tuple[HopState, float]]] = {}
        self._withdrawn_at: dict[IPv4Address, dict[IPv4Address, float]] = {}
        self._log_lines = 0
        self._maybe_held: set[Path_] = self._load_paths()
        self._lock = asyncio.Lock()
        self._acks: deque[asyncio.Future[str]] = deque()
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.AbstractServer | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._session_up = asyncio.Event()            # set at any session's first "up"
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- the Router interface ------------------------------------------------------------------

    async def apply(self, desired: DesiredRoutes) -> ApplyResult:
        await self.start()
        for vip, hops in desired.items():
            self._desired[vip] = {h.address: h.state for h in hops}
        self._have_desired = True
        if not self._waited_first_session:
            # The first apply after start: let the sessions come up, so that it returns with them
            # replayed and status() can answer (bounded; a router that is down only delays this once).
            self._waited_first_session = True
            if self._writer is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._session_up.wait(), self.config.start_wait_s)
        async with self._lock:
            if self._writer is None:
                raise RouterError(self._down_reason() + "; the desired state is kept and replayed when it is back")
            result = await self._send_diff(list(desired))
            await self._replay_pending()
            return result

    async def replay(self, desired: DesiredRoutes) -> ApplyResult:
        """Send the full desired state again to every established peer, then End-of-RIB."""
        await self.start()
        for vip, hops in desired.items():
            self._desired[vip] = {h.address: h.state for h in hops}
        self._have_desired = True
        async with self._lock:
            if self._writer is None:
                raise RouterError(self._down_reason())
            peers = [s for s in self.sessions.values() if s.state in ("up", "synced")]
            return await self._replay(peers)

    async def status(self, vip: IPv4Address) -> RouteStatus:
        synced = [s for s in self.sessions.values() if s.state == "synced"]
        if self._writer is None or not synced:
            raise RouterError(f"status {vip}: no BGP session is established and synchronised "
                              f"({self.describe_sessions()}): what the routers hold is unknown")
        now = self.clock()
        settle = self.config.settle_s
        hops = [HopStatus(hop, state) for hop, (state, at) in self._sent.get(vip, {}).items() if now - at >= settle]
        # A withdraw is not in the routers' FIB at the ack either.
        hops += [HopStatus(hop, HopState.DRAINING) for hop, at in self._withdrawn_at.get(vip, {}).items()
                 if now - at < settle and hop not in self._sent.get(vip, {})]
        return RouteStatus(vip, tuple(sorted(hops, key=lambda h: h.address)))

    async def close(self) -> None:
        """Stop ExaBGP (the routers keep our paths for `graceful_restart_s`) and the socket."""
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
            self._supervisor = None
        await self._stop_process()
        self._drop_connection("closed")
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        for t in list(self._tasks):
            t.cancel()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    # ---- health, for the API and the metrics ---------------------------------------------------

    def describe_sessions(self) -> str:
        speaker = "" if self.speaker.connected else "speaker not connected; "
        return speaker + ", ".join(f"{s.peer} {s.state}" for s in self.sessions.values())

    def health(self) -> dict[str, Any]:
        return {"driver": "bgp", "speaker": self.speaker.as_dict(),
                "sessions": [s.as_dict() for s in self.sessions.values()],
                "paths": sum(len(h) for h in self._sent.values()), "paths_maybe_held": len(self._maybe_held)}

    async def wait_synced(self, timeout_s: float = 30.0, *, peers: Iterable[IPv4Address] | None = None) -> None:
        """Wait until the given peers (default all) are synced; for tests, tools and the lab."""
        want = list(peers) if peers is not None else list(self.sessions)
        deadline = time.monotonic() + timeout_s
        while not all(self.sessions[a].state == "synced" for a in want):
            if time.monotonic() > deadline:
                raise RouterError(f"BGP sessions not synced after {timeout_s:.0f}s: {self.describe_sessions()}")
            await asyncio.sleep(0.02)

    # ---- the speaker ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening and supervising ExaBGP (idempotent). Returns without waiting for sessions."""
        if self._supervisor is not None or self._closing:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(self._on_bridge, path=str(self.socket_path),
                                                       limit=1 << 20)
        os.chmod(self.socket_path, 0o600)
        await self._kill_orphan()
        self._supervisor = asyncio.create_task(self._supervise(), name="exabgp-supervisor")
        # ExaBGP connects its API within ~0.2 s: waiting here spares the caller's first apply() an
        # error that says nothing but "starting".
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), self.config.start_wait_s)

    async def _supervise(self) -> None:
        backoff = self.config.restart_backoff_s
        while not self._closing:
            started = time.monotonic()
            try:
                rc = await self._run_speaker()
                self.speaker.last_exit = f"exit status {rc}" if rc >= 0 else f"killed by signal {-rc}"
            except (OSError, RouterError) as exc:
                self.speaker.last_exit = f"could not start: {exc}"
            self.speaker.running, self.speaker.pid = False, None
            if self._closing:
                return
            if time.monotonic() - started > 60:
                backoff = self.config.restart_backoff_s
            self.speaker.restarts += 1
            log.error("ExaBGP %s; restarting it in %.1fs (restart %d; routers keep our paths as stale for %ds)",
                      self.speaker.last_exit, backoff, self.speaker.restarts, self.config.graceful_restart_s)
            self.speaker.next_start_in_s = backoff
            await asyncio.sleep(backoff)
            self.speaker.next_start_in_s = None
            backoff = min(backoff * 2, self.config.restart_backoff_max_s)

    async def _run_speaker(self) -> int:
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
        self.speaker.running, self.speaker.pid = True, self._proc.pid
        self.speaker.starts += 1
        log.info("ExaBGP started (pid %d) for peers %s", self._proc.pid,
                 ", ".join(p.label for p in cfg.peers))
        rc = await self._proc.wait()
        self._proc = None
        self._drop_connection(f"ExaBGP exited ({rc})")
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

    # ---- the API stream ------------------------------------------------------------------------

    async def _on_bridge(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            log.warning("a second ExaBGP API connection: dropping the old one")
            self._drop_connection("replaced")
        self._writer = writer
        self.speaker.connected = True
        self._sent.clear()                     # a new ExaBGP starts with an empty RIB
        self._withdrawn_at.clear()
        self._connected.set()
        try:
            while True:
                try:
                    raw = await reader.readline()
                except ValueError:             # an over-long line: not from ExaBGP's API
                    log.error("ExaBGP API: line over 1 MiB, closing")
                    break
                if not raw:
                    break
                self._on_line(raw.decode(errors="replace").strip())
        except (ConnectionError, OSError):
            pass
        finally:
            if self._writer is writer:
                self._drop_connection("API connection closed")
                # ExaBGP without its API process is useless to us: restart the whole speaker.
                if self._proc is not None and not self._closing:
                    with contextlib.suppress(ProcessLookupError):
                        self._proc.kill()

    def _drop_connection(self, why: str) -> None:
        writer, self._writer = self._writer, None
        self.speaker.connected = False
        self._connected.clear()
        if writer is not None:
            writer.close()
        while self._acks:
            fut = self._acks.popleft()
            if not fut.done():
                fut.set_exception(RouterError(f"ExaBGP went away before acknowledging: {why}"))
                fut.exception()     # the sender may have given up (timeout, close): no "never retrieved"
        for s in self.sessions.values():
            if s.state != "down":
                s.state, s.since = "down", time.time()
                s.downs += 1

    def _on_line(self, line: str) -> None:
        if line in ("done", "error"):
            while self._acks:
                fut = self._acks.popleft()
                if not fut.done():
                    fut.set_result(line)
                    return
            log.warning("ExaBGP API: unexpected %r (no command waiting)", line)
            return
        if not line.startswith("{"):
            log.debug("ExaBGP API: %s", line)
            return
        try:
            event = json.loads(line)
        except ValueError:
            log.warning("ExaBGP API: unreadable line %r", line[:200])
            return
        if event.get("type") == "state":
            self._on_state(event)

    def _on_state(self, event: dict[str, Any]) -> None:
        neighbor = event.get("neighbor") or {}
        try:
            address = IPv4Address(str((neighbor.get("address") or {}).get("peer")))
        except ValueError:
            return
        session = self.sessions.get(address)
        if session is None:
            return
        state = str(neighbor.get("state", ""))
        now = time.time()
        if state == "up":
            session.state, session.since = "up", now
            session.ups += 1
            self._session_up.set()
            log.info("BGP session to %s is up", session.peer)
            if self._have_desired:
                self._spawn(self._replay_after_up())
        elif state in ("down", "shutdown"):
            if session.state != "down":
                session.downs += 1
            session.state, session.since = "down", now
            log.warning("BGP session to %s is down (%s)", session.peer, neighbor.get("reason", "no reason given"))
        elif state == "connected" and session.state == "down":
            session.state, session.since = "connected", now

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replay_after_up(self) -> None:
        try:
            async with self._lock:
                if self._writer is not None:
                    await self._replay_pending()
        except RouterError as exc:
            log.error("replay after session up failed: %s", exc)

    # ---- batches -------------------------------------------------------------------------------

    async def _send(self, lines: list[str]) -> list[str]:
        """Write every line in one burst, then read one acknowledgement per line."""
        writer = self._writer
        if writer is None:
            raise RouterError(self._down_reason())
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in lines]
        self._acks.extend(futures)
        writer.write(("\n".join(lines) + "\n").encode())
        try:
            async with asyncio.timeout(self.config.ack_timeout_s):
                await writer.drain()
                return [await f for f in futures]
        except TimeoutError:
            got = sum(1 for f in futures if f.done())
            self._drop_connection("acknowledgements timed out")
            if self._proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()            # a speaker that stopped answering is restarted
            raise RouterError(f"ExaBGP acknowledged {got} of {len(lines)} commands within "
                              f"{self.config.ack_timeout_s:.0f}s; restarting it") from None
        except (ConnectionError, OSError) as exc:
            raise RouterError(f"ExaBGP API connection lost: {exc}") from exc

    def _desired_paths(self) -> dict[Path_, HopState]:
        return {(vip, hop): state for vip, hops in self._desired.items() for hop, state in hops.items()}

    def _mark_sent(self, path: Path_, state: HopState, now: float) -> None:
        self._sent.setdefault(path[0], {})[path[1]] = (state, now)
        self._withdrawn_at.get(path[0], {}).pop(path[1], None)

    def _mark_withdrawn(self, path: Path_, now: float) -> None:
        hops = self._sent.get(path[0])
        if hops is not None:
            hops.pop(path[1], None)
            if not hops:
                del self._sent[path[0]]
        self._withdrawn_at.setdefault(path[0], {})[path[1]] = now

    def _forget_settled_withdraws(self, now: float) -> None:
        settle = self.config.settle_s
        for vip in list(self._withdrawn_at):
            left = {h: t for h, t in self._withdrawn_at[vip].items() if now - t < settle}
            if left:
                self._withdrawn_at[vip] = left
            else:
                del self._withdrawn_at[vip]

    async def _send_diff(self, vips: list[IPv4Address]) -> ApplyResult:
        """Send what differs for these VIPs (the others are not looked at): one burst of commands."""
        t0 = time.perf_counter()
        add: list[Path_] = []
        remove: list[Path_] = []
        for vip in vips:
            want = self._desired.get(vip, {})
            have = self._sent.get(vip, {})
            add += [(vip, h) for h in want if h not in have]
            remove += [(vip, h) for h in have if h not in want]
            for h in want.keys() & have.keys():
                have[h] = (want[h], have[h][1])    # draining or not: nothing to tell a plain-ECMP router
        if not add and not remove:
            return ApplyResult()
        add.sort()
        remove.sort()
        new = [p for p in add if p not in self._maybe_held]
        if new:
            self._remember_held(self._maybe_held | set(new))     # before the routers can have them
        commands = group_commands("announce", add) + group_commands("withdraw", remove)
        acks = await self._send([c.line for c in commands])
        now = self.clock()
        self._forget_settled_withdraws(now)
        failed: list[str] = []
        withdrawn: list[Path_] = []
        for c, ack in zip(commands, acks, strict=True):
            if ack != "done":
                failed.append(c.line)
                continue
            for path in c.paths:
                if c.verb == "announce":
                    self._mark_sent(path, self._desired[path[0]][path[1]], now)
                else:
                    self._mark_withdrawn(path, now)
                    withdrawn.append(path)
        if failed:
            raise RouterError(f"ExaBGP refused {len(failed)} of {len(commands)} commands, first: "
                              f"{failed[0][:200]!r}")
        if withdrawn and all(s.state == "synced" for s in self.sessions.values()):
            self._remember_held(self._maybe_held - set(withdrawn))   # every router was told
        return ApplyResult(tuple(add), tuple(remove), (), messages=len(commands),
                           elapsed_s=time.perf_counter() - t0)

    async def _replay_pending(self) -> None:
        peers = [s for s in self.sessions.values() if s.state == "up"]
        if peers and self._have_desired:
            await self._replay(peers)

    async def _replay(self, peers: list[SessionStatus]) -> ApplyResult:
        """The full desired state, withdraws of what a router may still hold, End-of-RIB: one burst."""
        t0 = time.perf_counter()
        want = self._desired_paths()
        stale = sorted(self._maybe_held - want.keys())
        self._remember_held(self._maybe_held | want.keys())
        commands = group_commands("announce", sorted(want)) + group_commands("withdraw", stale)
        lines = [c.line for c in commands] + [eor_line(s.address) for s in peers]
        acks = await self._send(lines)
        now = self.clock()
        elapsed = time.perf_counter() - t0
        self._forget_settled_withdraws(now)
        bad = [c.line for c, ack in zip(commands, acks, strict=False) if ack != "done"]
        for c, ack in zip(commands, acks, strict=False):
            if ack == "done":
                for path in c.paths:
                    if c.verb == "announce":
                        self._mark_sent(path, want[path], now)
                    else:
                        self._mark_withdrawn(path, now)
        # An EoR refused means that peer went down meanwhile: it will be replayed at its next up.
        for s, ack in zip(peers, acks[len(commands):], strict=True):
            if ack == "done" and s.state == "up":
                s.state, s.since = "synced", time.time()
                s.replays += 1
                s.last_replay_paths, s.last_replay_s = len(want), elapsed
        log.info("replayed %d paths and withdrew %d stale ones to %s in one batch of %d commands (%.1f ms)",
                 len(want), len(stale), ", ".join(s.peer for s in peers), len(lines), elapsed * 1000)
        if not bad and all(s.state == "synced" for s in self.sessions.values()):
            self._remember_held(set(want))
        result = ApplyResult(tuple(sorted(want)), tuple(stale), (), messages=len(lines), elapsed_s=elapsed)
        self.last_replay = result
        if bad:
            raise RouterError(f"replay: ExaBGP refused {len(bad)} of {len(lines)} commands, first: {bad[0][:200]!r}")
        return result

    def _down_reason(self) -> str:
        s = self.speaker
        if s.running:
            return f"ExaBGP (pid {s.pid}) has not connected its API yet"
        nxt = f", next start in {s.next_start_in_s:.1f}s" if s.next_start_in_s is not None else ""
        return f"ExaBGP is not running ({s.last_exit or 'not started'}{nxt})"

    # ---- paths possibly held by the routers ----------------------------------------------------

    def _load_paths(self) -> set[Path_]:
        """Read `paths.txt`: a log of "+ VIP NEXT_HOP" / "- VIP NEXT_HOP" lines, compacted now and then."""
        path = self.dir / PATHS_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            return set()
        except OSError as exc:
            log.error("%s unreadable (%s): stale paths of an earlier run cannot be withdrawn explicitly", path, exc)
            return set()
        out: set[Path_] = set()
        lines = text.splitlines()
        for n, line in enumerate(lines, 1):
            try:
                op, vip, hop = line.split()
                p = (IPv4Address(vip), IPv4Address(hop))
                if op not in "+-":
                    raise ValueError(op)
            except ValueError:
                log.error("%s:%d unreadable (%r): that stale path cannot be withdrawn explicitly", path, n, line)
                continue
            if op == "+":
                out.add(p)
            else:
                out.discard(p)
        self._log_lines = len(lines)
        return out

    def _remember_held(self, paths: set[Path_]) -> None:
        """Record what the routers may hold (before they can have it): appended to `paths.txt`, which is
        rewritten compactly once the log is much longer than the set. O(change), not O(table)."""
        added, gone = paths - self._maybe_held, self._maybe_held - paths
        if not added and not gone:
            return
        self._maybe_held = set(paths)
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._log_lines + len(added) + len(gone) > 2 * len(paths) + 1000:
            tmp = self.dir / (PATHS_FILE + ".tmp")
            tmp.write_text("".join(f"+ {v} {h}\n" for v, h in paths))
            os.replace(tmp, self.dir / PATHS_FILE)
            self._log_lines = len(paths)
            return
        with (self.dir / PATHS_FILE).open("a") as f:
            f.write("".join([f"+ {v} {h}\n" for v, h in added] + [f"- {v} {h}\n" for v, h in gone]))
        self._log_lines += len(added) + len(gone)


@dataclass(frozen=True, slots=True)
class Command:
    verb: str
    paths: tuple[Path_, ...]
    line: str


def group_commands(verb: str, paths: list[Path_]) -> list[Command]:
    """One command per next hop for up to NLRI_PER_COMMAND VIPs (`announce attributes … nlri …`),
    the plain `announce route` form for a single path. ExaBGP handles a grouped command about 1.4 times
    faster per path, and a burst has far fewer lines and acknowledgements."""
    by_hop: dict[IPv4Address, list[IPv4Address]] = {}
    for vip, hop in paths:
        by_hop.setdefault(hop, []).append(vip)
    out: list[Command] = []
    for hop, vips in by_hop.items():
        for i in range(0, len(vips), NLRI_PER_COMMAND):
            chunk = vips[i:i + NLRI_PER_COMMAND]
            if len(chunk) == 1:
                out.append(Command(verb, ((chunk[0], hop),), route_line(verb, chunk[0], hop)))
            else:
                nlri = " ".join(f"{v}/32" for v in chunk)
                out.append(Command(verb, tuple((v, hop) for v in chunk),
                                   f"{verb} attributes next-hop {hop} path-information {hop} nlri {nlri}"))
    return out


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the scaler dies, however it dies (prctl
    PR_SET_PDEATHSIG survives the exec of `ip netns exec` and of exabgp). A SIGKILLed scaler thus
    never leaves a speaker announcing paths nobody manages; graceful restart covers the gap.
    Only a call into libc loaded beforehand: nothing here may take a lock after the fork."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
