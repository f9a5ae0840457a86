"""Alembic environment: runs migrations on the engine handed over by scaler.migrations.upgrade()."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlmodel import SQLModel

# Imported for their side effect: they register their tables on SQLModel.metadata.
import scaler.alerts.store
import scaler.breaker
import scaler.store  # noqa: F401

# "scalermg" as an integer: the advisory lock that serializes migrations (scaler.leader uses "scaler").
MIGRATION_LOCK = int.from_bytes(b"scalermg", "big") & 0x7FFFFFFFFFFFFFFF

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    if connection.dialect.name == "postgresql":
        # Scalers started at once on one database migrate one after the other: the others wait here,
        # then find the schema at head. Released when this transaction ends.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    context.configure(connection=connection, target_metadata=SQLModel.metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
