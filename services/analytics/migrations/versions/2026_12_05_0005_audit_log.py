"""analytics: the audit log of operator actions (who, what, before, after, when).

Revision ID: ana0005
Revises: ana0004
Create Date: 2026-12-05
"""

from alembic import op

from shared.migrations import create_audit_log_v4, drop_audit_log_v4

revision = "ana0005"
down_revision = "ana0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_audit_log_v4(op, "analytics")


def downgrade() -> None:
    drop_audit_log_v4(op, "analytics")
