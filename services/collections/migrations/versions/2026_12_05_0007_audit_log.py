"""collections: the audit log of operator actions (who, what, before, after, when).

Revision ID: col0007
Revises: col0006
Create Date: 2026-12-05
"""

from alembic import op

from shared.migrations import create_audit_log_v4, drop_audit_log_v4

revision = "col0007"
down_revision = "col0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_audit_log_v4(op, "collections")


def downgrade() -> None:
    drop_audit_log_v4(op, "collections")
