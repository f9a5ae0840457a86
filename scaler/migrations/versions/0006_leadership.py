"""leadership: the epoch of the current leader (scaler.leader), one row

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "leadership",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(), nullable=True),
        sa.Column("acquired_at", sa.Float(), nullable=True),
    )
    op.bulk_insert(table, [{"id": 1, "epoch": 0, "holder": None, "acquired_at": None}])


def downgrade() -> None:
    op.drop_table("leadership")
