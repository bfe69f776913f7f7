"""external: the database guards the refunded totals (as django-hordak does).

A deferred constraint trigger, checked at commit whatever code wrote the rows: a transaction's
`refunded_amount` is exactly the sum of its refunds the processor says succeeded, on the
transaction and on every refund written, moved or deleted (`refunded_is_its_refunds`).

Revision ID: ext0005
Revises: ext0004
Create Date: 2026-12-04
"""

from alembic import op

revision = "ext0005"
down_revision = "ext0004"
branch_labels = None
depends_on = None

S = "external"


def upgrade() -> None:
    op.execute(f"""
CREATE FUNCTION {S}.check_refunded_is_its_refunds() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids uuid[];
    bad uuid;
BEGIN
    IF TG_TABLE_NAME = 'external_transactions' THEN
        ids := ARRAY[NEW.id];
    ELSIF TG_OP = 'DELETE' THEN
        ids := ARRAY[OLD.transaction_id];
    ELSIF TG_OP = 'UPDATE' THEN
        ids := ARRAY[NEW.transaction_id, OLD.transaction_id];
    ELSE
        ids := ARRAY[NEW.transaction_id];
    END IF;
    SELECT t.id INTO bad FROM {S}.external_transactions t
     WHERE t.id = ANY(ids)
       AND t.refunded_amount <> (SELECT coalesce(sum(r.amount), 0) FROM {S}.external_refunds r
                                  WHERE r.transaction_id = t.id AND r.status = 'succeeded')
     LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'external transaction % refunded_amount differs from the sum of its succeeded refunds', bad
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$
""")
    op.execute(f"""
CREATE CONSTRAINT TRIGGER refunded_is_its_refunds
    AFTER UPDATE OF refunded_amount ON {S}.external_transactions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {S}.check_refunded_is_its_refunds()
""")
    op.execute(f"""
CREATE CONSTRAINT TRIGGER refunds_are_its_refunded
    AFTER INSERT OR UPDATE OF status, amount, transaction_id OR DELETE ON {S}.external_refunds
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {S}.check_refunded_is_its_refunds()
""")


def downgrade() -> None:
    op.execute(f"""
DROP TRIGGER refunds_are_its_refunded ON {S}.external_refunds
""")
    op.execute(f"""
DROP TRIGGER refunded_is_its_refunds ON {S}.external_transactions
""")
    op.execute(f"""
DROP FUNCTION {S}.check_refunded_is_its_refunds()
""")
