"""operations: at most one running operation per pool, enforced by the database (a partial unique
index), not only by the single leader's check before it starts one

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("one_running_operation_per_pool", "operations", ["pool"], unique=True,
                    sqlite_where=sa.text("state = 'running'"), postgresql_where=sa.text("state = 'running'"))


def downgrade() -> None:
    op.drop_index("one_running_operation_per_pool", table_name="operations")
