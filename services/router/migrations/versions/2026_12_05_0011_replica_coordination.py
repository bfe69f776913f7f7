"""router: shared rate-limit cells and the job schedule, so N replicas agree.

Revision ID: rou0011
Revises: rou0010
Create Date: 2026-12-05
"""

from alembic import op

from shared.migrations import create_replica_coordination_v5, drop_replica_coordination_v5

revision = "rou0011"
down_revision = "rou0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_replica_coordination_v5(op, "router")


def downgrade() -> None:
    drop_replica_coordination_v5(op, "router")
