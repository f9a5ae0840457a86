"""Schema migrations (Alembic), applied at start by `Store.migrate()`.

To add one: change the models in scaler/store.py, then write a new file in versions/ (by hand, or
`alembic -x url=sqlite:///tmp.db revision --autogenerate` with script_location set to this folder).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

HERE = Path(__file__).parent


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)
