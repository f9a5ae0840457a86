"""launch_breakers: the launch circuit breaker of each pool (scaler.breaker)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "launch_breakers",
        sa.Column("pool", sa.String(), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_member", sa.String(), nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("last_failure_at", sa.Float(), nullable=True),
        sa.Column("opened_at", sa.Float(), nullable=True),
        sa.Column("resets_at", sa.Float(), nullable=True),
        sa.Column("cool_off_noted", sa.Boolean(), nullable=False),
        sa.Column("trips", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("launch_breakers")
