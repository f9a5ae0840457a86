"""initial schema: pools, members, operations, steps, decisions, events

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pools",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("vip", sa.String(), nullable=False),
        sa.Column("last_scale_out_at", sa.Float(), nullable=True),
        sa.Column("last_scale_in_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "members",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("pool", sa.String(), sa.ForeignKey("pools.name"), nullable=False),
        sa.Column("instance", sa.String(), nullable=False, unique=True),
        sa.Column("op_id", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("address", sa.String(), nullable=True),
        sa.Column("endpoints", sa.String(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("state_since", sa.Float(), nullable=False),
    )
    op.create_index("ix_members_pool", "members", ["pool"])
    op.create_index("ix_members_op_id", "members", ["op_id"])
    op.create_index("ix_members_state", "members", ["state"])
    op.create_table(
        "operations",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("pool", sa.String(), sa.ForeignKey("pools.name"), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("from_size", sa.Integer(), nullable=False),
        sa.Column("to_size", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_operations_pool", "operations", ["pool"])
    op.create_index("ix_operations_state", "operations", ["state"])
    op.create_table(
        "steps",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("op_id", sa.String(), nullable=False),
        sa.Column("member_id", sa.String(), nullable=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("detail", sa.String(), nullable=False),
    )
    op.create_index("ix_steps_op_id", "steps", ["op_id"])
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("pool", sa.String(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("current", sa.Integer(), nullable=False),
        sa.Column("desired", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("inputs", sa.String(), nullable=False),
        sa.Column("verdicts", sa.String(), nullable=False),
        sa.Column("op_id", sa.String(), nullable=True),
    )
    op.create_index("ix_decisions_pool", "decisions", ["pool"])
    op.create_index("ix_decisions_at", "decisions", ["at"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("pool", sa.String(), nullable=False),
        sa.Column("member", sa.String(), nullable=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("message", sa.String(), nullable=False),
    )
    op.create_index("ix_events_at", "events", ["at"])
    op.create_index("ix_events_pool", "events", ["pool"])


def downgrade() -> None:
    for table in ("events", "decisions", "steps", "operations", "members", "pools"):
        op.drop_table(table)
