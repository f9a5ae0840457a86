"""warm standby and rolling replacement (issue 18)

- members.standby: created for the pool's warm standby (kept unannounced once healthy; cleared
  when a scale-out, a replacement or a rollout takes it);
- members.template: a short hash of the pool's `instance:` options the member was created with
  (PoolConfig.instance_template): a member on another hash is outdated for a rollout;
- operations.params: JSON, what an operation needs beyond its sizes (a rollout's surge);
- the one-running-operation index leaves standby replenishments out (they never block a decision),
  and a second index keeps them to one running per pool.

Columns are added with ALTER TABLE (no table copy on SQLite), so 0008's triggers on members stay.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BUSY = "state = 'running' AND kind != 'standby'"
STANDBY = "state = 'running' AND kind = 'standby'"


def upgrade() -> None:
    op.add_column("members", sa.Column("standby", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("members", sa.Column("template", sa.String(), nullable=True))
    op.add_column("operations", sa.Column("params", sa.String(), nullable=False, server_default="{}"))
    op.drop_index("one_running_operation_per_pool", table_name="operations")
    op.create_index("one_running_operation_per_pool", "operations", ["pool"], unique=True,
                    sqlite_where=sa.text(BUSY), postgresql_where=sa.text(BUSY))
    op.create_index("one_standby_operation_per_pool", "operations", ["pool"], unique=True,
                    sqlite_where=sa.text(STANDBY), postgresql_where=sa.text(STANDBY))


def downgrade() -> None:
    op.drop_index("one_standby_operation_per_pool", table_name="operations")
    op.drop_index("one_running_operation_per_pool", table_name="operations")
    op.create_index("one_running_operation_per_pool", "operations", ["pool"], unique=True,
                    sqlite_where=sa.text("state = 'running'"), postgresql_where=sa.text("state = 'running'"))
    op.drop_column("operations", "params")
    op.drop_column("members", "template")
    op.drop_column("members", "standby")
