"""router: the audit log of operator actions (who, what, before, after, when).

Revision ID: rou0010
Revises: rou0009
Create Date: 2026-12-05
"""

from alembic import op

from shared.migrations import create_audit_log_v4, drop_audit_log_v4

revision = "rou0010"
down_revision = "rou0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_audit_log_v4(op, "router")


def downgrade() -> None:
    drop_audit_log_v4(op, "router")
