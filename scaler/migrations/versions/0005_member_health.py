"""members.health*: each member's health as the scaler's checks last decided it (scaler.health)

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("members") as t:
        t.add_column(sa.Column("health", sa.String(), nullable=False, server_default="unknown"))
        t.add_column(sa.Column("health_since", sa.Float(), nullable=True))
        t.add_column(sa.Column("health_reason", sa.String(), nullable=True))
        t.add_column(sa.Column("replaced_by", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("members") as t:
        for name in ("replaced_by", "health_reason", "health_since", "health"):
            t.drop_column(name)
