"""The external service's pure parts: published status, reconciliation verdicts, sealed secrets."""

from decimal import Decimal as D

import pytest
from cryptography.fernet import Fernet

from datetime import UTC, datetime

from services.external.domain import Recorded, Reported, processed_at_of, published_status, reconcile
from services.external.processors import credentials_hint, parse_credentials
from services.external.vault import CredentialVault, VaultError


@pytest.mark.parametrize(("status", "enabled", "published"), [
    ("active", True, "active"), ("active", False, "disabled"), ("pending", False, "disabled"),
    ("error", True, "error"), ("disconnected", False, "disconnected"),
])
def test_published_status(status, enabled, published):
    assert published_status(status, enabled) == published


def test_reconciliation_verdicts():
    ours = [Recorded("pi_same", D("10.00"), "completed"), Recorded("pi_refunded", D("20.00"), "partially_refunded"),
            Recorded("pi_amount", D("30.00"), "completed"), Recorded("pi_status", D("40.00"), "failed"),
            Recorded("pi_gone", D("50.00"), "completed"), Recorded("pi_waiting", D("60.00"), "pending")]
    theirs = [Reported("pi_same", D("10.00"), "completed"), Reported("pi_refunded", D("20.00"), "completed"),
              Reported("pi_amount", D("31.00"), "completed"), Reported("pi_status", D("40.00"), "completed"),
              Reported("pi_new", D("5.00"), "completed")]
    verdicts = {v.processor_payment_id: (v.status, v.reason) for v in reconcile(ours, theirs)}
    assert verdicts["pi_same"] == ("matched", None)
    assert verdicts["pi_refunded"] == ("matched", None)  # refunds do not change what was paid
    assert verdicts["pi_amount"][0] == "mismatch" and "31.00" in verdicts["pi_amount"][1]
    assert verdicts["pi_status"][0] == "mismatch" and "failed" in verdicts["pi_status"][1]
    assert verdicts["pi_new"] == ("missing_local", None)
    assert verdicts["pi_gone"][0] == "mismatch"
    assert "pi_waiting" not in verdicts  # ours, still pending: nothing to compare yet
    applied = {v.processor_payment_id for v in reconcile(ours, theirs) if v.apply}
    assert applied == {"pi_new", "pi_status"}  # the processor's word is merged; an amount is a person's call


def test_reconciliation_records_money_and_ignores_what_never_took_any():
    """An abandoned or declined intent we never heard of is no payment of ours; a declined payment
    of ours the processor does not list (a PayPal order) is no mismatch."""
    theirs = [Reported("pi_abandoned", D("5.00"), "pending"), Reported("pi_declined", D("6.00"), "failed"),
              Reported("pi_canceled", D("7.00"), "canceled")]
    ours = [Recorded("ORDER-DECLINED", D("8.00"), "failed"), Recorded("pi_void", D("9.00"), "canceled"),
            Recorded("pi_refunded_gone", D("10.00"), "refunded")]
    verdicts = {v.processor_payment_id: v.status for v in reconcile(ours, theirs)}
    assert verdicts == {"pi_refunded_gone": "mismatch"}


def test_a_payment_heard_without_a_time_is_never_dated_1970():
    event, now = datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 4, tzinfo=UTC)
    assert processed_at_of(None, event, now) == event
    assert processed_at_of(None, None, now) == now
    assert processed_at_of(datetime(2026, 11, 30, tzinfo=UTC), event, now) == datetime(2026, 11, 30, tzinfo=UTC)


def test_the_vault_rotates_and_refuses_unknown_keys():
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed = CredentialVault([old]).seal({"secret_key": "sk_test_123456789"})
    assert "sk_test" not in sealed
    rotated = CredentialVault([new, old]).rotate(sealed)
    assert CredentialVault([new]).open(rotated) == {"secret_key": "sk_test_123456789"}
    with pytest.raises(VaultError):
        CredentialVault([new]).open(sealed)


def test_credentials_are_parsed_per_processor_and_only_hinted():
    square = parse_credentials("square", {"access_token": "EAAA-very-secret-token", "location_id": "L1"})
    assert credentials_hint("square", square) == "…oken"
    with pytest.raises(Exception, match="location_id"):
        parse_credentials("square", {"access_token": "x"})
    with pytest.raises(Exception, match="unknown"):
        parse_credentials("stripe", {"secret_key": "sk_test_1", "extra": 1})
