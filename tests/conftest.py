"""Fixtures shared by every test. Helpers that are not fixtures live in tests/support/: the fake clock
(clock.py), polling with a deadline (wait.py), real daemons, the BGP test network, alert deliveries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scaler.store import Store
from tests.support.clock import ManualClock


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
