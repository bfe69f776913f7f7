"""external: shared rate-limit cells and the job schedule, so N replicas agree.

Revision ID: ext0010
Revises: ext0009
Create Date: 2026-12-05
"""

from alembic import op

from shared.migrations import create_replica_coordination_v5, drop_replica_coordination_v5

revision = "ext0010"
down_revision = "ext0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_replica_coordination_v5(op, "external")


def downgrade() -> None:
    drop_replica_coordination_v5(op, "external")
