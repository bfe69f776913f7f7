"""analytics: shared rate-limit cells and the job schedule, so N replicas agree.

Revision ID: ana0006
Revises: ana0005
Create Date: 2026-12-05
"""

from alembic import op

from shared.migrations import create_replica_coordination_v5, drop_replica_coordination_v5

revision = "ana0006"
down_revision = "ana0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_replica_coordination_v5(op, "analytics")


def downgrade() -> None:
    drop_replica_coordination_v5(op, "analytics")
