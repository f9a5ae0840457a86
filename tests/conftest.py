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
    """Where the `store` fixture keeps its SQLite file."""
    return tmp_path / "s.db"


# The engines a module can run its store tests on: `STORE_ENGINES = ("sqlite", "postgresql")` at module
# level parametrizes every test of the module that uses `store`, `store_url` or `store_engine`. The
# PostgreSQL case needs root and a real server: it is an integration test (`make test-unit` skips it).
_ENGINES = {"sqlite": pytest.param("sqlite", id="sqlite"),
            "postgresql": pytest.param("postgresql", id="postgresql", marks=pytest.mark.integration)}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    engines = getattr(metafunc.module, "STORE_ENGINES", None)
    if engines and "store_engine" in metafunc.fixturenames:
        metafunc.parametrize("store_engine", [_ENGINES[e] for e in engines], indirect=True)


@pytest.fixture
def store_engine(request: pytest.FixtureRequest) -> str:
    """The database the `store` fixture opens: "sqlite", unless the module sets STORE_ENGINES."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def store_url(store_engine: str, request: pytest.FixtureRequest, db_path: Path) -> str:
    """The URL the `store` fixture opens (to open it again, as after a restart): a SQLite file at
    `db_path`, or a fresh database on the session's PostgreSQL."""
    if store_engine == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{db_path}"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A store (SQLite in tmp_path, or PostgreSQL: see STORE_ENGINES), migrated to the newest schema,
    with no pool; closed after the test. A module that needs pools overrides it:
    `def store(store: Store) -> Store: store.ensure_pool(...)`."""
    s = Store(store_url)
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
