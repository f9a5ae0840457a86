"""Leadership: which of several scaler processes on one PostgreSQL store acts, and the fencing that
keeps a former leader from acting after another took over.

SQLite (the embedded default): the store's exclusive file lock already makes one scaler per store;
`SoleLeader` always leads, with epoch 1 and nothing to fence.

PostgreSQL: `PostgresLeader` campaigns with `pg_try_advisory_lock` on a dedicated autocommit
connection — the lock lives as long as that session. TCP keepalives (2 s / 1 s / 3) and
`tcp_user_timeout` on the client, and `idle_session_timeout` (one lease) / `tcp_keepalives_*` on the server
side of the session, make a dead, frozen or cut-off holder lose the session (and the lock) within
about `lease_s`. On acquiring it, the new leader bumps `leadership.epoch` (one row) and takes the
new epoch as its own. Three guards follow (docs/design.md, "High availability"):

1. Lease: the leader re-checks its lock every `renew_s` and may act only until `lease_s` after
   the last check that *started* and succeeded (`may_act()`); a leader that cannot renew stops
   acting when that lease runs out, even while it still believes it leads.
2. Wait: a new leader takes no side effect for `lease_s` after acquiring the lock, so the previous
   leader's lease has run out by then (its lock died with its session, so its last successful
   renewal started before that).
3. Fencing: every store write of the leader checks, in the write's own transaction, that
   `leadership.epoch` is still its epoch (`FOR SHARE`, so a takeover's epoch bump waits for the
   write or the write sees the bump), and is refused otherwise: a frozen leader that resumes
   after a takeover writes nothing, and so starts nothing.

The lock session runs in a thread of its own, with its own event loop: the service's loop, busy
for a second or two with a large fleet's tick on a loaded machine, does not delay the renewals past
the lease (it did: leaderships were lost, and with the bgp driver each loss restarts ExaBGP). The
service's loop still proves it runs: a heartbeat every `renew_s`; a loop that has not run for
`stall_s` (max(10 s, 5 x lease)) is taken for stuck and the leadership is given up — a process that
holds the lock but cannot act must not keep the fleet without a leader — and a stuck process does
not campaign.

When its own inputs fail: a lost database connection is a lost lease (the process becomes a
follower and keeps campaigning); a database that refuses the campaign query leaves the process a
follower. Nothing here touches a router or an orchestrator: the service stops its jobs on a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlmodel import Session

from scaler.errors import StoreError

log = logging.getLogger("scaler.leader")

# The advisory lock key: "scaler" as an integer, so other users of advisory locks do not collide.
LOCK_KEY = int.from_bytes(b"scaler\0\0", "big") & 0x7FFFFFFFFFFFFFFF


class NotLeader(StoreError):
    """This process may not act now: it is not the leader, its lease ran out, or it was fenced."""


def identity() -> str:
    """Who this process is, for the cluster view: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class View:
    """What `GET /v1/cluster` shows."""

    role: str                       # leader | follower | standby (leader waiting out the old lease)
    me: str
    epoch: int | None
    leader: str | None
    lease_left_s: float | None
    since: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "me": self.me, "epoch": self.epoch, "leader": self.leader,
                "lease_left_s": None if self.lease_left_s is None else round(self.lease_left_s, 2),
                "since": self.since}


class Leadership(Protocol):
    epoch: int | None

    def may_act(self) -> bool: ...

    def check(self) -> None:
        """Raise NotLeader unless this process may take a side effect now."""

    def fence(self, session: Session) -> None:
        """Raise NotLeader inside a write transaction if a newer leader exists."""

    async def run(self, on_lead: Callable[[], Awaitable[None]], on_lose: Callable[[], Awaitable[None]]) -> None:
        """Campaign and renew until cancelled; call on_lead when this process may start acting (it
        must return quickly: start work in tasks) and on_lose as soon as it may not any more."""

    def view(self) -> View: ...

    async def resign(self) -> None:
        """Give the leadership up now (its start failed): another scaler may take it."""

    async def close(self) -> None: ...


class SoleLeader:
    """SQLite: the store's file lock already makes this the only scaler of the store."""

    def __init__(self) -> None:
        self.me = identity()
        self.epoch: int | None = 1
        self.since = time.time()

    def may_act(self) -> bool:
        return True

    def check(self) -> None:
        return None

    def fence(self, session: Session) -> None:
        return None

    async def run(self, on_lead: Callable[[], Awaitable[None]], on_lose: Callable[[], Awaitable[None]]) -> None:
        await on_lead()
        await asyncio.Event().wait()

    def view(self) -> View:
        return View("leader", self.me, 1, self.me, None, self.since)

    async def resign(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _dsn(url: str, lease_s: float) -> str:
    """A libpq connection string for the lock session from the store's SQLAlchemy URL."""
    u = make_url(url)
    ms = max(1000, int(lease_s * 1000))
    parts = {
        "host": u.host or "localhost", "port": str(u.port or 5432), "dbname": u.database or "",
        "user": u.username or "", "password": u.password or "",
        "connect_timeout": str(max(1, int(lease_s))), "application_name": "scaler-leader",
        "keepalives": "1", "keepalives_idle": "2", "keepalives_interval": "1", "keepalives_count": "3",
        "tcp_user_timeout": str(ms),
        # Server side of the same session: a holder that stops talking loses it (and the lock).
        # The leader's own checks (every lease/3) keep its session busy: only a silent holder idles a lease.
        "options": f"-c idle_session_timeout={ms} -c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 "
                   f"-c tcp_keepalives_count=3 -c tcp_user_timeout={ms} -c statement_timeout={ms}",
    }
    return " ".join(f"{k}='{v}'" for k, v in parts.items() if v != "")


class PostgresLeader:
    """Leader election on PostgreSQL (see the module doc for the timings)."""

    def __init__(self, url: str, *, lease_s: float = 2.0, renew_s: float | None = None,
                 stall_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.lease_s = lease_s
        self.renew_s = renew_s if renew_s is not None else lease_s / 3
        # How long the service's event loop may go without running before this process gives the
        # leadership up (or stops campaigning): busy for a moment is no reason to hand over, stuck is.
        self.stall_s = stall_s if stall_s is not None else max(10.0, 5 * lease_s)
        self.clock = clock
        # The lock session lives in a thread of its own with its own event loop (`run`): a service
        # loop busy with a large fleet for a second or two does not delay the renewals past the lease.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._beat = clock()             # monotonic: the service's loop last ran (its heartbeat)
        self.me = identity()
        self.epoch: int | None = None
        self._conn: Any = None
        self._valid_until = 0.0          # monotonic: may act until then (leader only)
        self._acts_from = float("inf")   # monotonic: the wait after acquiring ends then
        self._since: float | None = None
        self._leader_seen: str | None = None

    # --- guards ------------------------------------------------------------------------------------

    def may_act(self) -> bool:
        now = self.clock()
        return self.epoch is not None and self._acts_from <= now < self._valid_until

    def check(self) -> None:
        if not self.may_act():
            raise NotLeader(f"not acting: {self.view().role}, epoch {self.epoch}")

    def fence(self, session: Session) -> None:
        if self.epoch is None:
            raise NotLeader("fenced: this scaler is not the leader")
        row = session.execute(text("SELECT epoch FROM leadership WHERE id = 1 FOR SHARE")).first()
        current = row[0] if row else None
        if current != self.epoch:
            raise NotLeader(f"fenced: leadership epoch is {current}, this scaler's is {self.epoch} "
                            f"(another scaler took over)")

    # --- campaign ----------------------------------------------------------------------------------

    async def run(self, on_lead: Callable[[], Awaitable[None]], on_lose: Callable[[], Awaitable[None]]) -> None:
        """Campaign and renew in the lock session's own thread; `on_lead` / `on_lose` run on the
        caller's loop, in order. Cancelled: the campaign stops (after `on_lose` if it led) and the
        session is left as it is — `close` ends it."""
        main = asyncio.get_running_loop()

        def on_main(cb: Callable[[], Awaitable[None]], *, wait: bool) -> Callable[[], Awaitable[None]]:
            # In order on the service's loop. `on_lead` is not waited for: the renewals go on while
            # that loop is busy. `on_lose` is: no campaign again before the jobs stopped.
            async def call() -> None:
                fut = asyncio.run_coroutine_threadsafe(_call(cb), main)
                if wait:
                    await asyncio.wrap_future(fut)
            return call

        loop = self._start_thread()
        done: asyncio.Future[None] = main.create_future()
        inner: list[asyncio.Task[None]] = []
        stopping = False

        def set_done() -> None:
            if not done.done():
                done.set_result(None)

        def finished(_: object = None) -> None:
            main.call_soon_threadsafe(set_done)

        # Both run on the session's loop, one after the other: a cancel never misses the start.
        def begin() -> None:
            if stopping:
                finished()
                return
            task = loop.create_task(self._campaign_loop(on_main(on_lead, wait=False), on_main(on_lose, wait=True)))
            task.add_done_callback(finished)
            inner.append(task)

        def stop() -> None:
            nonlocal stopping
            stopping = True
            if inner:
                inner[0].cancel()
            else:
                finished()

        self._beat = self.clock()
        loop.call_soon_threadsafe(begin)
        heartbeat = main.create_task(self._heartbeat())
        try:
            await asyncio.shield(done)
        finally:
            heartbeat.cancel()
            loop.call_soon_threadsafe(stop)
            # The campaign's own `on_lose` runs on this loop: wait for it (bounded).
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(done), self.lease_s + 5)

    async def _heartbeat(self) -> None:
        while True:
            self._beat = self.clock()
            await asyncio.sleep(self.renew_s)

    def _stalled(self) -> float | None:
        """How long the service's loop has not run, if longer than `stall_s`."""
        quiet = self.clock() - self._beat
        return quiet if quiet > self.stall_s else None

    def _start_thread(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                try:
                    loop.run_forever()
                finally:
                    loop.close()

            # A daemon: a lock session stuck on a silent database never keeps the process alive.
            self._thread = threading.Thread(target=serve, name="leader", daemon=True)
            self._thread.start()
            self._loop = loop
        return self._loop

    async def _in_thread(self, coro: Awaitable[None]) -> None:
        """Run a coroutine touching the lock session on the session's loop (or here if none)."""
        if self._loop is None or not self._loop.is_running():
            await coro
            return
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_call(lambda: coro), self._loop))

    async def _campaign_loop(self, on_lead: Callable[[], Awaitable[None]],
                             on_lose: Callable[[], Awaitable[None]]) -> None:
        leading = False
        try:
            while True:
                started = self.clock()
                stalled = self._stalled()
                if self.epoch is None:
                    leading = False
                    if stalled is None:     # a stuck service must not take the leadership
                        await self._campaign()
                elif stalled is not None:
                    leading = False
                    await self._lose(on_lose, f"the service's event loop has not run for {stalled:.1f} s "
                                              f"(more than {self.stall_s:g} s): handing over")
                elif not await self._renew(started):
                    leading = False
                    await self._lose(on_lose, "the lock session was lost or did not answer")
                elif not leading and self.clock() >= self._acts_from:
                    leading = True
                    log.warning("leader with epoch %d (%s)", self.epoch, self.me)
                    await on_lead()
                await asyncio.sleep(max(0.0, started + self.renew_s - self.clock()))
        finally:
            if leading:
                with contextlib.suppress(Exception):
                    await on_lose()

    async def _lose(self, on_lose: Callable[[], Awaitable[None]], why: str) -> None:
        log.error("leadership (epoch %s) lost: %s; acting stops", self.epoch, why)
        self.epoch, self._valid_until, self._acts_from, self._since = None, 0.0, float("inf"), None
        await self._drop_connection()
        await on_lose()

    async def _campaign(self) -> bool:
        """One attempt to become leader; True with `epoch` set if this process now holds the lock."""
        try:
            return await asyncio.wait_for(self._campaign_once(), self.lease_s)
        except Exception as exc:     # the database is unreachable, silent or refuses: stay a follower
            log.warning("leader election: %s", exc or "no answer within the lease")
            await self._drop_connection()
            return False

    async def _campaign_once(self) -> bool:
        # psycopg's asyncio connection: a silent database (a cut link, a proxy that stops forwarding)
        # leaves no thread blocked in a read; the lease's timeout simply abandons the attempt.
        import psycopg

        if self._conn is None:
            self._conn = await psycopg.AsyncConnection.connect(_dsn(self.url, self.lease_s), autocommit=True)
        started = self.clock()
        got = await (await self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))).fetchone()
        if not got or not got[0]:
            row = await (await self._conn.execute("SELECT holder FROM leadership WHERE id = 1")).fetchone()
            self._leader_seen = row[0] if row else None
            return False
        row = await (await self._conn.execute(
            "UPDATE leadership SET epoch = epoch + 1, holder = %s, acquired_at = %s WHERE id = 1 RETURNING epoch",
            (self.me, time.time()))).fetchone()
        if row is None:
            await self._conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            raise StoreError("leadership row missing: is the store migrated?")
        self.epoch, self._leader_seen, self._since = int(row[0]), self.me, time.time()
        self._valid_until = started + self.lease_s
        # Guard 2: no side effect until any previous leader's lease has run out.
        self._acts_from = self.clock() + self.lease_s
        return True

    async def _renew(self, started: float) -> bool:
        try:
            ok = await asyncio.wait_for(self._renew_once(), self.lease_s)
        except Exception as exc:
            log.error("leader lease renewal: %s", exc or "no answer within the lease")
            return False
        if ok:
            self._valid_until = started + self.lease_s
        return ok

    async def _renew_once(self) -> bool:
        cur = await self._conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted "
            "AND ((classid::bigint << 32) | objid::bigint) = %s", (LOCK_KEY,))
        row = await cur.fetchone()
        return bool(row and row[0])

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        # Closing only sends a Terminate message (non-blocking) and closes the socket: the server
        # ends the session, and with it the lock, when it reads it or its own timeouts fire.
        try:
            conn.pgconn.finish()
        except Exception as exc:      # already broken: nothing left to close
            log.debug("closing the lock session: %s", exc)

    # --- views -------------------------------------------------------------------------------------

    def view(self) -> View:
        now = self.clock()
        if self.epoch is None:
            role = "follower"
        elif now < self._acts_from:
            role = "standby"
        else:
            role = "leader" if now < self._valid_until else "expired"
        left = max(0.0, self._valid_until - now) if self.epoch is not None else None
        return View(role, self.me, self.epoch, self._leader_seen, left, self._since)

    async def resign(self) -> None:
        # The lock goes with the session; the campaign loop then competes again like a follower.
        log.error("resigning the leadership (epoch %s)", self.epoch)
        self.epoch, self._valid_until, self._acts_from, self._since = None, 0.0, float("inf"), None
        await self._in_thread(self._drop_connection())

    async def close(self) -> None:
        # Closing the session releases the lock at once: a clean stop hands over without waiting.
        self.epoch = None
        await self._in_thread(self._drop_connection())
        loop, self._loop = self._loop, None
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)


async def _call(cb: Callable[[], Awaitable[None]]) -> None:
    await cb()


def leadership_for(url: str, lease_s: float = 2.0) -> Leadership:
    return PostgresLeader(url, lease_s=lease_s) if url.startswith("postgresql") else SoleLeader()


__all__ = ["LOCK_KEY", "Leadership", "NotLeader", "PostgresLeader", "SoleLeader", "View", "identity",
           "leadership_for"]
