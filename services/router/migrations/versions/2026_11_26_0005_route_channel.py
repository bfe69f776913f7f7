"""router: which channel an external route is being paid through, with a lease.

`channel` is null until a payment is attempted; `external` while the barber's processor is being
tried (`channel_lease_until` bounds one attempt); `platform` once the route fell back to the
platform. A route is never paid through both: a concurrent request waits out the lease, and the
fallback moves the channel only from `external`, under the route's lock.

Revision ID: rou0005
Revises: rou0004
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "rou0005"
down_revision = "rou0004"
branch_labels = None
depends_on = None

S = "router"


def upgrade() -> None:
    op.add_column("routing_decisions", sa.Column("channel", sa.Text), schema=S)
    op.add_column("routing_decisions", sa.Column("channel_lease_until", sa.DateTime(timezone=True)), schema=S)
    op.create_check_constraint("decision_channel", "routing_decisions",
                               "channel is null or channel in ('external', 'platform')", schema=S)


def downgrade() -> None:
    op.drop_constraint("decision_channel", "routing_decisions", schema=S)
    op.drop_column("routing_decisions", "channel_lease_until", schema=S)
    op.drop_column("routing_decisions", "channel", schema=S)
