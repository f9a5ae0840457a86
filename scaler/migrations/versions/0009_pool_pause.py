"""pools.paused_*: an operator paused the pool's decisions (POST /v1/pools/{pool}/pause)

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pools") as t:
        t.add_column(sa.Column("paused_at", sa.Float(), nullable=True))
        t.add_column(sa.Column("paused_by", sa.String(), nullable=True))
        t.add_column(sa.Column("paused_reason", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pools") as t:
        for name in ("paused_reason", "paused_by", "paused_at"):
            t.drop_column(name)
