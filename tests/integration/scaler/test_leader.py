"""Leader election against a real PostgreSQL 15: one leader among campaigners, a takeover when the
leader's session dies, freezes or loses its server, no act by a leader whose lease ran out, and
fenced writes of a former leader. Short leases (1 s) keep the tests quick; the timings scale."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest

from scaler.leader import NotLeader, PostgresLeader
from scaler.store import MemberState, Store
from tests.support.postgres import PostgresServer, unavailable
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

LEASE = 1.0


@pytest.fixture
def store(postgres_url: str) -> Iterator[Store]:
    s = Store(postgres_url)
    s.migrate()
    s.ensure_pool("web", "198.19.0.1", 0)
    yield s
    s.close()


class Campaigner:
    """One PostgresLeader running its campaign loop, recording when it led and lost."""

    def __init__(self, url: str) -> None:
        self.leader = PostgresLeader(url, lease_s=LEASE)
        self.led: list[float] = []
        self.lost: list[float] = []
        self.task: asyncio.Task[None] | None = None

    async def _lead(self) -> None:
        self.led.append(time.monotonic())

    async def _lose(self) -> None:
        self.lost.append(time.monotonic())

    def start(self) -> Campaigner:
        self.task = asyncio.get_running_loop().create_task(self.leader.run(self._lead, self._lose))
        return self

    async def freeze(self) -> None:
        """Stop renewing without closing the session: a frozen process (SIGSTOP) as the database sees it."""
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def stop(self) -> None:
        await self.freeze()
        await self.leader.close()


@contextlib.asynccontextmanager
async def campaigners(url: str, n: int) -> AsyncIterator[list[Campaigner]]:
    cs = [Campaigner(url).start() for _ in range(n)]
    try:
        yield cs
    finally:
        for c in cs:
            await c.stop()


def leaders(cs: list[Campaigner]) -> list[Campaigner]:
    return [c for c in cs if c.leader.may_act()]


async def test_one_leader_among_three_started_at_once(store: Store, postgres_url: str) -> None:
    async with campaigners(postgres_url, 3) as cs:
        await eventually(lambda: len(leaders(cs)) == 1, timeout_s=10, what="one leader")
        [lead] = leaders(cs)
        await eventually(lambda: lead.led, timeout_s=5, what="on_lead called")
        assert lead.leader.epoch == 1 and lead.leader.view().role == "leader"
        for _ in range(10):                     # and it stays one
            await asyncio.sleep(LEASE / 3)
            assert leaders(cs) == [lead]
        followers = [c for c in cs if c is not lead]
        assert all(c.leader.view().role == "follower" and c.leader.view().leader == lead.leader.me
                   for c in followers)


async def test_a_killed_leader_session_is_taken_over_and_the_old_one_stops_acting(
        store: Store, postgres_url: str, postgres: PostgresServer) -> None:
    async with campaigners(postgres_url, 2) as cs:
        await eventually(lambda: len(leaders(cs)) == 1, timeout_s=10, what="one leader")
        [old] = leaders(cs)
        [new] = [c for c in cs if c is not old]
        t0 = time.monotonic()
        postgres.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE application_name = 'scaler-leader' AND pid IN (SELECT pid FROM pg_locks "
                       "WHERE locktype = 'advisory' AND granted)")
        await eventually(lambda: new.leader.may_act(), timeout_s=10, interval_s=0.05, what="takeover")
        took = time.monotonic() - t0
        await eventually(lambda: new.led and old.lost, timeout_s=5, what="on_lead and on_lose called")
        print(f"takeover after the leader's session was killed: {took:.2f} s")
        assert not old.leader.may_act()
        assert new.leader.epoch == 2 and old.lost
        assert new.led[0] - old.lost[0] >= 0                # the new one acted only after the old stopped


async def test_a_frozen_leader_is_taken_over_and_its_writes_are_fenced(store: Store, postgres_url: str) -> None:
    async with campaigners(postgres_url, 2) as cs:
        await eventually(lambda: len(leaders(cs)) == 1, timeout_s=10, what="one leader")
        [old] = leaders(cs)
        [new] = [c for c in cs if c is not old]
        store.fence = old.leader.fence
        op = store.start_scale_out("web", 1, 0, "while leading", 0.0)      # a fenced write that passes
        [m] = store.members_of(op.id)
        t0 = time.monotonic()
        await old.freeze()                           # alive to the database, silent: SIGSTOP
        await eventually(lambda: new.leader.may_act(), timeout_s=15, interval_s=0.05, what="takeover")
        print(f"takeover after the leader froze: {time.monotonic() - t0:.2f} s")
        # Resumed: it still believes it leads (epoch set) but may not act, and cannot write.
        assert old.leader.epoch == 1 and not old.leader.may_act()
        with pytest.raises(NotLeader, match="not acting"):
            old.leader.check()
        with pytest.raises(NotLeader, match="epoch is 2"):
            store.transition(m.id, MemberState.BOOTING, 1.0)
        assert store.member(m.id).state == MemberState.CREATING        # type: ignore[union-attr]
        store.fence = new.leader.fence
        store.transition(m.id, MemberState.BOOTING, 1.0)               # the new leader's write passes


async def test_a_follower_cannot_write_a_leaders_row(store: Store, postgres_url: str) -> None:
    follower = PostgresLeader(postgres_url, lease_s=LEASE)
    store.fence = follower.fence
    with pytest.raises(NotLeader, match="not the leader"):
        store.start_scale_out("web", 1, 0, "follower", 0.0)
    assert store.members("web") == []


async def test_a_database_restart_elects_a_leader_again_with_a_new_epoch(tmp_path_factory: pytest.TempPathFactory,
                                                                        ) -> None:
    why = unavailable()
    if why is not None:
        pytest.skip(why)
    with PostgresServer() as pg:
        url = pg.create_database("leader_restart")
        s = Store(url)
        s.migrate()
        s.close()
        async with campaigners(url, 2) as cs:
            await eventually(lambda: len(leaders(cs)) == 1, timeout_s=10, what="one leader")
            first = leaders(cs)[0].leader.epoch
            await asyncio.to_thread(pg.restart, "immediate")
            await eventually(lambda: not leaders(cs), timeout_s=10, interval_s=0.05, what="no leader at all")
            await eventually(lambda: len(leaders(cs)) == 1, timeout_s=20, interval_s=0.1, what="a leader again")
            assert leaders(cs)[0].leader.epoch == (first or 0) + 1


def test_the_lock_session_tells_the_server_to_drop_a_silent_holder(postgres_url: str) -> None:
    from scaler.leader import _dsn

    with psycopg.connect(_dsn(postgres_url, 2.0), autocommit=True) as conn:
        assert conn.execute("SHOW idle_session_timeout").fetchone() == ("2s",)
        assert conn.execute("SHOW tcp_keepalives_idle").fetchone() == ("2",)


class BlackholeProxy:
    """A TCP proxy to PostgreSQL that can stop forwarding without closing anything: a network cut."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.cut = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if self.cut.is_set():
                        await asyncio.Event().wait()     # swallow everything from now on
                    dst.write(data)
                    await dst.drain()
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer), return_exceptions=True)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_leader_cut_off_from_the_database_stops_acting_and_is_taken_over(
        store: Store, postgres_url: str) -> None:
    from sqlalchemy.engine import make_url

    u = make_url(postgres_url)
    proxy = BlackholeProxy(u.host or "127.0.0.1", u.port or 5432)
    port = await proxy.start()
    cut_off = Campaigner(u.set(port=port).render_as_string(hide_password=False))
    cut_off.start()
    await eventually(lambda: cut_off.leader.may_act(), timeout_s=10, what="the proxied campaigner leads")
    other = Campaigner(postgres_url).start()
    try:
        t0 = time.monotonic()
        proxy.cut.set()
        await eventually(lambda: not cut_off.leader.may_act(), timeout_s=5, interval_s=0.05,
                         what="the cut-off leader stops acting")
        stopped = time.monotonic() - t0
        await eventually(lambda: other.leader.may_act(), timeout_s=15, interval_s=0.05, what="takeover")
        took = time.monotonic() - t0
        print(f"cut off: stopped acting after {stopped:.2f} s, taken over after {took:.2f} s")
        assert stopped <= LEASE + 0.5 and stopped < took        # it stops before the other starts
    finally:
        await other.stop()
        await cut_off.freeze()
        await proxy.close()


async def test_a_leader_that_resigns_hands_over(store: Store, postgres_url: str) -> None:
    # What the service does when starting to lead fails: resign, so another scaler leads instead.
    async with campaigners(postgres_url, 2) as cs:
        await eventually(lambda: len(leaders(cs)) == 1, timeout_s=10, what="one leader")
        [old] = leaders(cs)
        [new] = [c for c in cs if c is not old]
        await old.leader.resign()
        assert not old.leader.may_act() and old.leader.epoch is None
        await eventually(lambda: new.leader.may_act(), timeout_s=10, interval_s=0.05, what="takeover")
        assert new.leader.epoch == 2


async def test_a_busy_service_loop_keeps_the_leadership_and_a_stuck_one_hands_it_over(
        store: Store, postgres_url: str) -> None:
    """The lock session renews in a thread of its own: the service's event loop busy for longer than
    the lease (a large fleet's tick on a loaded machine) loses nothing. Busy for longer than
    `stall_s`, the process is taken for stuck and gives the leadership up."""
    async with campaigners(postgres_url, 2) as cs:
        for c in cs:
            c.leader.stall_s = 4 * LEASE
        await eventually(lambda: len(leaders(cs)) == 1, timeout_s=10, what="one leader")
        [lead] = leaders(cs)
        [other] = [c for c in cs if c is not lead]
        epoch = lead.leader.epoch
        time.sleep(2.5 * LEASE)  # noqa: ASYNC251  (on purpose: the whole event loop blocked)
        assert lead.leader.may_act() and lead.leader.epoch == epoch and lead.lost == []
        await asyncio.sleep(LEASE)
        assert leaders(cs) == [lead] and other.leader.epoch is None

        time.sleep(4 * LEASE + 2 * LEASE / 3 + 0.2)  # noqa: ASYNC251  (stuck past stall_s)
        assert lead.leader.epoch is None and not lead.leader.may_act()
        await eventually(lambda: lead.lost, timeout_s=5, what="on_lose called")
        # Both campaigners share this test's loop, so either may win the next election once it runs.
        await eventually(lambda: len(leaders(cs)) == 1, timeout_s=10, interval_s=0.05, what="a new leader")
        assert leaders(cs)[0].leader.epoch == epoch + 1         # type: ignore[operator]
