"""external: every reconciliation run kept (when, the window compared, its counts and differences),
so operators see the history and the "as of" time of each, not only the last run's log lines.

Revision ID: ext0008
Revises: ext0007
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "ext0008"
down_revision = "ext0007"
branch_labels = None
depends_on = None

S = "external"
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "reconciliation_runs",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("as_of", TZ, nullable=False),
        sa.Column("finished_at", TZ, nullable=False),
        sa.Column("since", TZ, nullable=False),
        sa.Column("until", TZ, nullable=False),
        sa.Column("connection_id", sa.Integer),
        sa.Column("trigger", sa.Text, nullable=False),
        sa.Column("connections", sa.Integer, nullable=False),
        sa.Column("matched", sa.Integer, nullable=False),
        sa.Column("mismatch", sa.Integer, nullable=False),
        sa.Column("missing_local", sa.Integer, nullable=False),
        sa.Column("failed_connections", JSONB, nullable=False),
        sa.Column("findings", JSONB, nullable=False),
        sa.CheckConstraint("trigger in ('scheduled', 'operator')", name="reconciliation_trigger"),
        sa.CheckConstraint("matched >= 0 and mismatch >= 0 and missing_local >= 0", name="reconciliation_counts"),
        schema=S,
    )
    op.create_index("reconciliation_runs_as_of", "reconciliation_runs", ["as_of", "id"], schema=S)


def downgrade() -> None:
    op.drop_table("reconciliation_runs", schema=S)
