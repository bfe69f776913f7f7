"""collections: the database guards the ledger's sums (as django-hordak does).

Deferred constraint triggers, checked at commit whatever code wrote the rows:
- a collection's amount is exactly the sum of the accruals billed into it (`collection_is_its_accruals`),
  on the collection and on every accrual moved into or out of one;
- the accruals of one transaction never add up to less than nothing (`transaction_owes_nothing_negative`):
  a reversal can take back at most what was accrued.

Revision ID: col0005
Revises: col0004
Create Date: 2026-12-04
"""

from alembic import op

revision = "col0005"
down_revision = "col0004"
branch_labels = None
depends_on = None

S = "collections"


def upgrade() -> None:
    op.execute(f"""
CREATE FUNCTION {S}.check_collection_is_its_accruals() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids uuid[];
    bad uuid;
BEGIN
    IF TG_TABLE_NAME = 'platform_collections' THEN
        ids := ARRAY[NEW.id];
    ELSIF TG_OP = 'DELETE' THEN
        ids := ARRAY[OLD.collection_id];
    ELSIF TG_OP = 'UPDATE' THEN
        ids := ARRAY[NEW.collection_id, OLD.collection_id];
    ELSE
        ids := ARRAY[NEW.collection_id];
    END IF;
    SELECT c.id INTO bad FROM {S}.platform_collections c
     WHERE c.id = ANY(ids)
       AND c.amount <> (SELECT coalesce(sum(a.amount), 0) FROM {S}.commission_accruals a WHERE a.collection_id = c.id)
     LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'collection % amount differs from the sum of its accruals', bad
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$
""")
    op.execute(f"""
CREATE CONSTRAINT TRIGGER collection_is_its_accruals
    AFTER INSERT OR UPDATE OF amount ON {S}.platform_collections
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {S}.check_collection_is_its_accruals()
""")
    op.execute(f"""
CREATE CONSTRAINT TRIGGER accruals_are_their_collection
    AFTER INSERT OR UPDATE OF collection_id, amount OR DELETE ON {S}.commission_accruals
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {S}.check_collection_is_its_accruals()
""")
    op.execute(f"""
CREATE FUNCTION {S}.check_transaction_owes_nothing_negative() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT sum(amount) FROM {S}.commission_accruals WHERE transaction_id = NEW.transaction_id) < 0 THEN
        RAISE EXCEPTION 'the accruals of transaction % add up below zero (accrued minus reversed)',
            NEW.transaction_id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$
""")
    op.execute(f"""
CREATE CONSTRAINT TRIGGER transaction_owes_nothing_negative
    AFTER INSERT OR UPDATE OF amount ON {S}.commission_accruals
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {S}.check_transaction_owes_nothing_negative()
""")


def downgrade() -> None:
    op.execute(f"""
DROP TRIGGER transaction_owes_nothing_negative ON {S}.commission_accruals
""")
    op.execute(f"""
DROP FUNCTION {S}.check_transaction_owes_nothing_negative()
""")
    op.execute(f"""
DROP TRIGGER accruals_are_their_collection ON {S}.commission_accruals
""")
    op.execute(f"""
DROP TRIGGER collection_is_its_accruals ON {S}.platform_collections
""")
    op.execute(f"""
DROP FUNCTION {S}.check_collection_is_its_accruals()
""")
