"""collections: shared rate-limit cells and the job schedule, so N replicas agree.

Revision ID: col0008
Revises: col0007
Create Date: 2026-12-05
"""

from alembic import op

from shared.migrations import create_replica_coordination_v5, drop_replica_coordination_v5

revision = "col0008"
down_revision = "col0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_replica_coordination_v5(op, "collections")


def downgrade() -> None:
    drop_replica_coordination_v5(op, "collections")
