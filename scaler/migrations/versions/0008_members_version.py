"""store_version: a counter the database moves on every write to `members` (triggers), so a reader
can tell with one row whether its copy of the members is still current (Store.members)

Kept by the database, not by the process: a write by another scaler (a leader while this one
follows), by an older leader before its fence refused it, or by an operator's SQL moves it too.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BUMP = "UPDATE store_version SET members = members + 1 WHERE id = 1"


def upgrade() -> None:
    table = op.create_table(
        "store_version",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("members", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(table, [{"id": 1, "members": 0}])
    if op.get_bind().dialect.name == "postgresql":
        # Once per statement: a transaction that writes many members bumps the row once per
        # statement and holds its lock until it commits (the members' writers are one leader).
        op.execute("CREATE FUNCTION scaler_members_changed() RETURNS trigger LANGUAGE plpgsql AS $$ "
                   f"BEGIN {BUMP}; RETURN NULL; END $$")
        op.execute("CREATE TRIGGER members_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON members "
                   "FOR EACH STATEMENT EXECUTE FUNCTION scaler_members_changed()")
    else:
        for what in ("INSERT", "UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER members_changed_{what.lower()} AFTER {what} ON members "
                       f"BEGIN {BUMP}; END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER members_changed ON members")
        op.execute("DROP FUNCTION scaler_members_changed()")
    else:
        for what in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER members_changed_{what}")
    op.drop_table("store_version")
