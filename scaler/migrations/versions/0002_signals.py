"""alarm signals: received alerts and scale signals, alarm instances, replay keys

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alarm_signals",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("dedup_key", sa.String(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("receiver", sa.String(), nullable=False),
        sa.Column("credential", sa.String(), nullable=False),
        sa.Column("pool", sa.String(), nullable=False),
        sa.Column("known_pool", sa.Boolean(), nullable=False),
        sa.Column("alarm", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("fingerprint", sa.String(), nullable=False),
        sa.Column("starts_at", sa.Float(), nullable=True),
        sa.Column("ends_at", sa.Float(), nullable=True),
        sa.Column("group_key", sa.String(), nullable=False),
        sa.Column("effect", sa.String(), nullable=False),
        sa.Column("truncated", sa.Integer(), nullable=False),
        sa.Column("summary", sa.String(), nullable=False),
        sa.Column("labels", sa.String(), nullable=False),
    )
    # The dedup guarantee: one row per (receiver, groupKey, fingerprint, startsAt, status).
    op.create_index("ix_alarm_signals_dedup_key", "alarm_signals", ["dedup_key"], unique=True)
    op.create_index("ix_alarm_signals_at", "alarm_signals", ["at"])
    op.create_index("ix_alarm_signals_pool", "alarm_signals", ["pool"])
    op.create_table(
        "alarm_instances",
        sa.Column("pool", sa.String(), primary_key=True),
        sa.Column("alarm", sa.String(), primary_key=True),
        sa.Column("fingerprint", sa.String(), primary_key=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("starts_at", sa.Float(), nullable=True),
        sa.Column("since", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=True),
        sa.Column("receiver", sa.String(), nullable=False),
        sa.Column("credential", sa.String(), nullable=False),
        sa.Column("signal_id", sa.Integer(), nullable=True),
    )
    op.create_table(
        "signal_seen",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_signal_seen_expires_at", "signal_seen", ["expires_at"])


def downgrade() -> None:
    for table in ("signal_seen", "alarm_instances", "alarm_signals"):
        op.drop_table(table)
