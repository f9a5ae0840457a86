"""The store (scaler/store.py) on both engines, SQLite and a real PostgreSQL 15: operations and
member transitions, decisions, events, the migrations from an empty database; the PostgreSQL URL
forms, its password kept out of messages or read from libpq's password file, and reconnecting after
the server restarted; SQLite's exclusive file lock."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from scaler.errors import StoreError
from scaler.store import DecisionRow, MemberState, OpKind, OpState, Store, counts, engine_url, mask
from tests.support import rows
from tests.support.postgres import PostgresServer, unavailable

STORE_ENGINES = ("sqlite", "postgresql")          # tests/conftest.py
T0 = 1_700_000_000.123456                         # a float time must come back exactly
S = MemberState


@pytest.fixture
def store(store: Store) -> Store:
    store.ensure_pool("web", "198.19.0.1", T0)
    return store


def test_a_scale_out_then_a_scale_in_are_stored_step_by_step(store: Store) -> None:
    op = store.start_scale_out("web", 2, 0, "below min", T0)
    assert (op.kind, op.state, op.from_size, op.to_size) == (OpKind.SCALE_OUT, OpState.RUNNING, 0, 2)
    members = store.members_of(op.id)
    assert [m.state for m in members] == [S.CREATING, S.CREATING]
    for i, m in enumerate(members):
        store.transition(m.id, S.BOOTING, T0 + 1, address=f"10.0.0.{i + 1}", endpoints='{"api": "http://x"}')
        for to in (S.HEALTHY, S.ANNOUNCING, S.IN_SERVICE):
            store.transition(m.id, to, T0 + 2)
    store.finish_operation(op.id, OpState.DONE, T0 + 3)
    assert rows.pool(store, "web").last_scale_out_at == T0 + 3
    assert store.running_operation("web") is None
    m0 = rows.member(store, members[0].id)
    assert (m0.state, m0.address, m0.endpoint_map(), m0.created_at) == (S.IN_SERVICE, "10.0.0.1", {"api": "http://x"},
                                                                         T0)
    assert [s.name for s in store.steps(op.id) if s.member_id == m0.id] == [
        "creating", "booting", "healthy", "announcing", "in_service"]
    assert store.has_step(op.id, m0.id, "healthy") and not store.has_step(op.id, m0.id, "draining")

    scale_in = store.start_scale_in("web", [m0], 2, "idle", T0 + 10)
    assert [m.id for m in store.members_of(scale_in.id)] == [m0.id]
    for to in (S.WITHDRAWN, S.DELETING, S.DELETED):
        store.transition(m0.id, to, T0 + 11)
    store.finish_operation(scale_in.id, OpState.DONE, T0 + 12)
    assert counts(store.members("web")) == {"in_service": 1}
    assert counts(store.members("web", include_deleted=True)) == {"in_service": 1, "deleted": 1}
    assert [o.id for o in store.operations("web")] == [scale_in.id, op.id]      # newest first
    messages = [e.message for e in store.events("web") if e.kind == "operation"]
    assert messages[0].startswith(f"{op.id}: scale-out 0 → 2: below min")
    assert messages[-1] == f"{scale_in.id}: scale-in done"


def test_what_the_store_refuses(store: Store) -> None:
    op = store.start_scale_out("web", 1, 0, "below min", T0)
    with pytest.raises(StoreError, match="is still running"):
        store.start_scale_out("web", 1, 1, "busy", T0)
    (m,) = store.members_of(op.id)
    with pytest.raises(StoreError, match="transition creating → in_service is not allowed"):
        store.transition(m.id, S.IN_SERVICE, T0)
    with pytest.raises(StoreError, match="does not exist"):
        store.transition("m-missing", S.BOOTING, T0)
    with pytest.raises(StoreError, match=r"VIP changed from 198\.19\.0\.1 to 198\.19\.0\.2 while it has members"):
        store.ensure_pool("web", "198.19.0.2", T0)
    store.transition(m.id, S.FAILED, T0, error="quota")
    for to in (S.DELETING, S.DELETED):
        store.transition(m.id, to, T0)
    assert store.ensure_pool("web", "198.19.0.2", T0).vip == "198.19.0.2"     # no member left


def test_a_dead_member_is_replaced_in_one_transaction(store: Store) -> None:
    op = store.start_scale_out("web", 1, 0, "below min", T0)
    (m,) = store.members_of(op.id)
    for to in (S.BOOTING, S.HEALTHY, S.ANNOUNCING, S.IN_SERVICE):
        store.transition(m.id, to, T0)
    store.finish_operation(op.id, OpState.DONE, T0)
    store.set_health(m.id, "down", T0 + 5, "3 checks failed", event="web member down")
    replacement = store.start_replacement(rows.member(store, m.id), 1, "member down for 30s", T0 + 30)
    dead = rows.member(store, m.id)
    assert (dead.state, dead.replaced_by, dead.error, dead.health) == (S.FAILED, replacement.id,
                                                                       "member down for 30s", "down")
    assert [n.state for n in store.members_of(replacement.id)] == [S.CREATING]
    assert any(e.kind == "health" and e.message == "web member down" for e in store.events("web"))


def decision(i: int) -> DecisionRow:
    return DecisionRow(pool="web", at=T0 + i, outcome="hold", current=1, desired=1, reason=f"d{i}",
                       dry_run=i % 2 == 0, inputs='{"cpu": 0.5}', context='{"cause": "in_band"}')


def test_decisions_page_newest_first_and_are_pruned(store: Store) -> None:
    for i in range(12):
        store.add_decision(decision(i))
    first = store.decisions("web", limit=5)
    assert [d.reason for d in first] == ["d11", "d10", "d9", "d8", "d7"]
    assert [d.dry_run for d in first] == [False, True, False, True, False]         # booleans, not 0/1
    assert first[0].at == T0 + 11
    assert [d.reason for d in store.decisions("web", limit=3, before_id=first[-1].id)] == ["d6", "d5", "d4"]
    store.prune_decisions("web", keep=4)
    assert [d.reason for d in store.decisions("web")] == ["d11", "d10", "d9", "d8"]


def test_long_and_non_ascii_text_round_trips(store: Store) -> None:
    """No column has a length limit on either engine; text is UTF-8 everywhere."""
    reason = "cloud said: " + "ü→✓ " * 5000
    op = store.start_scale_out("web", 1, 0, reason, T0)
    store.finish_operation(op.id, OpState.FAILED, T0 + 1, error=reason)
    got = store.operations("web")[0]
    assert got.reason == reason and got.error == reason
    store.add_event("web", "error", "🔥 " + reason, T0, member="web-1")
    events = store.events("web", after_id=0)
    assert events[-1].message == "🔥 " + reason
    assert store.events("web", after_id=events[-1].id or 0) == []


def test_migrations_build_the_models_from_empty_and_go_down_and_up(store_url: str) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    from scaler.migrations import alembic_config

    s = Store(store_url)
    try:
        assert inspect(s.engine).get_table_names() == []
        s.migrate()
        with s.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
        command.downgrade(alembic_config(s.engine), "base")          # the batch_alter_table ones too
        assert set(inspect(s.engine).get_table_names()) == {"alembic_version"}
        s.migrate()
        s.migrate()                                                 # idempotent
        assert {"pools", "members", "decisions", "alarm_signals", "launch_breakers"} <= set(
            inspect(s.engine).get_table_names())
        s.ensure_pool("web", "198.19.0.1", T0)
        assert [p.name for p in s.pools()] == ["web"]
    finally:
        s.close()


def test_a_second_store_on_the_same_database(store: Store, store_url: str, store_engine: str) -> None:
    """SQLite: the file is locked, a second scaler is refused. PostgreSQL: shared (leader election
    decides who writes), so a second store opens it and sees the same rows."""
    if store_engine == "sqlite":
        with pytest.raises(StoreError, match=r"is in use by another scaler \(lock .*s\.db\.lock is held\)"):
            Store(store_url)
        return
    other = Store(store_url)
    try:
        assert [p.name for p in other.pools()] == ["web"]
        other.add_event("web", "note", "from the other one", T0)
        assert store.events("web")[-1].message == "from the other one"
    finally:
        other.close()


def test_members_are_read_again_only_after_a_write_from_anywhere(store: Store) -> None:
    """`members` keeps its last read until the database's members version moves: every write moves
    it — this store's, and a write this store never saw (another scaler, an operator's SQL)."""
    op = store.start_scale_out("web", 2, 0, "below min", T0)
    first = store.members()
    again = store.members()
    assert [m.id for m in again] == [m.id for m in first]
    assert all(a is b for a, b in zip(again, first, strict=True))       # not read again: nothing written
    assert store.members("web") == first and store.members("other") == []

    store.transition(first[0].id, S.BOOTING, T0 + 1, address="10.0.0.1")
    assert [(m.state, m.address) for m in store.members()] == [(S.BOOTING, "10.0.0.1"), (S.CREATING, None)]

    with store.engine.begin() as conn:          # behind the store's back, as an operator would
        conn.execute(text("UPDATE members SET address = '10.0.0.9' WHERE id = :id"), {"id": first[1].id})
    assert [m.address for m in store.members("web")] == ["10.0.0.1", "10.0.0.9"]
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM steps WHERE member_id = :id"), {"id": first[1].id})
        conn.execute(text("DELETE FROM members WHERE id = :id"), {"id": first[1].id})
    assert [m.id for m in store.members()] == [first[0].id]
    for to in (S.FAILED, S.DELETING, S.DELETED):
        store.transition(first[0].id, to, T0 + 2)
    assert store.members() == [] and [m.state for m in store.members(include_deleted=True)] == [S.DELETED]
    assert store.members_of(op.id)[0].state == S.DELETED


def test_a_rolled_back_write_leaves_the_members_read_current(store: Store) -> None:
    store.start_scale_out("web", 1, 0, "below min", T0)
    before = store.members()
    with pytest.raises(StoreError):
        store.transition(before[0].id, S.IN_SERVICE, T0 + 1)        # not allowed: nothing written
    with store.engine.connect() as conn, conn.begin() as tx:
        conn.execute(text("UPDATE members SET address = '10.0.0.7'"))
        tx.rollback()
    assert [m.address for m in store.members()] == [None]


# ---- PostgreSQL only -----------------------------------------------------------------------------

def test_only_psycopg_is_used_for_postgresql() -> None:
    assert str(engine_url("postgresql://u@h/db")) == "postgresql+psycopg://u@h/db"
    assert str(engine_url("postgresql+psycopg://u@h:5433/db")) == "postgresql+psycopg://u@h:5433/db"
    assert str(engine_url("sqlite:////x/s.db")) == "sqlite:////x/s.db"
    with pytest.raises(StoreError, match=r"psycopg 3 only; write postgresql\+psycopg://") as err:
        Store("postgresql+psycopg2://scaler:hunter2-secret@127.0.0.1:1/scaler")
    assert "hunter2-secret" not in str(err.value) and "***" in str(err.value)
    with pytest.raises(StoreError, match="is not a database URL"):
        Store("not a url")
    assert mask("postgresql://scaler:hunter2-secret@db/scaler") == "postgresql://scaler:***@db/scaler"


def test_a_missing_postgresql_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a))
    with pytest.raises(StoreError, match=r"driver \(psycopg 3\) is not installed: pip install 'scaler\[postgresql\]'"):
        Store("postgresql://scaler:hunter2-secret@127.0.0.1:1/scaler")


@pytest.mark.integration
def test_a_postgresql_url_means_psycopg(postgres_url: str) -> None:
    s = Store(postgres_url.replace("postgresql+psycopg://", "postgresql://"))
    try:
        s.migrate()
        assert (s.engine.dialect.name, s.engine.dialect.driver) == ("postgresql", "psycopg")
        with s.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW application_name").scalar() == "scaler"
    finally:
        s.close()


@pytest.mark.integration
def test_the_password_never_shows(postgres: PostgresServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = postgres.url.replace(postgres.password, "wrong-Pa55word")
    closed = postgres.url.replace(f":{postgres.port}/", f":{_closed_port()}/")
    for url, why in ((wrong, "password authentication failed"), (closed, "Connection refused")):
        secret = url.split(":")[2].split("@")[0]
        with pytest.raises(StoreError, match=why) as err:
            Store(url)
        assert secret not in str(err.value) and "scaler:***@127.0.0.1" in str(err.value)
    assert postgres.password not in caplog.text and "wrong-Pa55word" not in caplog.text


def _closed_port() -> int:
    from tests.support.daemons import free_port

    return free_port()


@pytest.mark.integration
@pytest.mark.parametrize("source", ["PGPASSFILE", "PGPASSWORD"])
def test_the_password_can_come_from_libpq(postgres: PostgresServer, postgres_url: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    """The URL carries no password: libpq reads it from its password file or its environment."""
    if source == "PGPASSFILE":
        passfile = tmp_path / "pgpass"
        passfile.write_text(f"127.0.0.1:{postgres.port}:*:scaler:{postgres.password}\n")
        passfile.chmod(0o600)                      # libpq ignores a file others can read
        monkeypatch.setenv("PGPASSFILE", str(passfile))
    else:
        monkeypatch.setenv("PGPASSWORD", postgres.password)
    s = Store(postgres_url.replace(f":{postgres.password}@", "@"))
    try:
        s.migrate()
        assert s.pools() == []
    finally:
        s.close()


@pytest.mark.integration
@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_the_store_reconnects_after_the_server_restarted(mode: str) -> None:
    with PostgresServer() as pg:
        s = Store(pg.url)
        try:
            s.migrate()
            s.ensure_pool("web", "198.19.0.1", T0)
            before = pg.pid
            pg.restart(mode)                       # every pooled connection is now dead
            assert pg.pid != before
            assert [p.name for p in s.pools()] == ["web"]
            s.add_event("web", "note", "after the restart", T0)
            assert s.events("web")[-1].message == "after the restart"
        finally:
            s.close()


def test_the_database_refuses_a_second_running_operation_of_a_pool(store: Store) -> None:
    # What the leader's own check prevents, the store enforces too (several writers racing).
    from scaler.store import Operation, OpKind, OpState

    store.ensure_pool("web", "198.19.0.1", 0)
    store.start_scale_out("web", 1, 0, "first", 0.0)
    with store.session() as s:
        s.add(Operation(id="op-race", pool="web", kind=OpKind.SCALE_OUT, state=OpState.RUNNING, from_size=1,
                        to_size=2, reason="racing", created_at=1.0))
        with pytest.raises(StoreError, match="already running"):
            s.commit()
