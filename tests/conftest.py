"""Fixtures shared by every test. Helpers that are not fixtures live in tests/support/: the fake clock
(clock.py), polling with a deadline (wait.py), real daemons, a real PostgreSQL (postgres.py), the BGP
test network, alert deliveries."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from scaler.store import Store
from tests.support.clock import ManualClock
from tests.support.postgres import PostgresServer, unavailable


@pytest.fixture
def clock() -> ManualClock:
    """A fresh ManualClock: stands still until the test moves it."""
    return ManualClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the `store` fixture keeps its SQLite file (to open it again, as after a restart)."""
    return tmp_path / "s.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    """A SQLite store in tmp_path, migrated to the newest schema, with no pool; closed after the test.
    A module that needs pools overrides it: `def store(store: Store) -> Store: store.ensure_pool(...)`."""
    s = Store(f"sqlite:///{db_path}")
    s.migrate()
    yield s
    s.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL 15 for the whole session (tests/support/postgres.py), stopped at its end even
    after failures; skipped when not root or PostgreSQL is not installed. Shared: a test that stops,
    restarts or kills a server starts its own `PostgresServer` instead."""
    why = unavailable()
    if why is not None:
        pytest.skip(why)
    with PostgresServer() as server:
        yield server


_databases = itertools.count(1)


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """The SQLAlchemy URL (psycopg) of a fresh, empty database on the session's server, dropped after."""
    name = f"test_{next(_databases)}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)
