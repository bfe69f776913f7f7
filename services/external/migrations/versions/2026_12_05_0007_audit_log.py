"""external: the audit log of operator actions (who, what, before, after, when).

Revision ID: ext0007
Revises: ext0006
Create Date: 2026-12-05
"""

from alembic import op

from shared.migrations import create_audit_log_v4, drop_audit_log_v4

revision = "ext0007"
down_revision = "ext0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_audit_log_v4(op, "external")


def downgrade() -> None:
    drop_audit_log_v4(op, "external")
