"""decisions.context: what else explains an evaluation (bounds in force, the rules' recommendation,
the cause of a hold, members warming up, alarm signals), as JSON

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("context", sa.String(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("context")
