"""Alembic environment: runs migrations on the engine handed over by scaler.migrations.upgrade()."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

# Imported for their side effect: they register their tables on SQLModel.metadata.
import scaler.alerts.store
import scaler.breaker
import scaler.store  # noqa: F401

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=SQLModel.metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
