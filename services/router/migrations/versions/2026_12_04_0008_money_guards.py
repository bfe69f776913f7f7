"""router: the database guards the refunded totals of platform payments (as django-hordak does).

A deferred constraint trigger, checked at commit whatever code wrote the rows: a payment's
`refunded_amount` is exactly the sum of its refunds Stripe says succeeded, on the payment and on
every refund written or deleted (`refunded_is_its_refunds`).

Revision ID: rou0008
Revises: rou0007
Create Date: 2026-12-04
"""

from alembic import op

revision = "rou0008"
down_revision = "rou0007"
branch_labels = None
depends_on = None

S = "router"


def upgrade() -> None:
    op.execute(f"""
CREATE FUNCTION {S}.check_refunded_is_its_refunds() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    pid uuid;
BEGIN
    IF TG_TABLE_NAME = 'platform_payments' THEN
        pid := NEW.id;
    ELSIF TG_OP = 'DELETE' THEN
        pid := OLD.payment_id;
    ELSE
        pid := NEW.payment_id;
    END IF;
    IF EXISTS (SELECT 1 FROM {S}.platform_payments p
                WHERE p.id = pid
                  AND p.refunded_amount <> (SELECT coalesce(sum(r.amount), 0) FROM {S}.platform_refunds r
                                             WHERE r.payment_id = p.id AND r.status = 'succeeded')) THEN
        RAISE EXCEPTION 'platform payment % refunded_amount differs from the sum of its succeeded refunds', pid
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$
""")
    op.execute(f"""
CREATE CONSTRAINT TRIGGER refunded_is_its_refunds
    AFTER UPDATE OF refunded_amount ON {S}.platform_payments
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {S}.check_refunded_is_its_refunds()
""")
    op.execute(f"""
CREATE CONSTRAINT TRIGGER refunds_are_its_refunded
    AFTER INSERT OR UPDATE OF status, amount OR DELETE ON {S}.platform_refunds
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {S}.check_refunded_is_its_refunds()
""")


def downgrade() -> None:
    op.execute(f"""
DROP TRIGGER refunds_are_its_refunded ON {S}.platform_refunds
""")
    op.execute(f"""
DROP TRIGGER refunded_is_its_refunds ON {S}.platform_payments
""")
    op.execute(f"""
DROP FUNCTION {S}.check_refunded_is_its_refunds()
""")
