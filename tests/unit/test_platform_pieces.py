"""Pure pieces of the platform: event envelopes, rate-limit buckets, problem bodies."""

import uuid

import pytest

from shared.errors import ProblemError
from shared.events import decode_event, encode_event, new_event, stream_subjects
from shared.ratelimit import TokenBuckets


def test_event_envelope_round_trip():
    event = new_event("transaction.recorded", {"amount": "50.00", "barber_id": 1})
    decoded = decode_event(encode_event(event))
    assert decoded == event
    assert isinstance(decoded.event_id, uuid.UUID)
    assert decoded.occurred_at.tzinfo is not None


def test_event_types_must_belong_to_the_stream():
    with pytest.raises(ValueError):
        new_event("payment.made", {})
    assert stream_subjects("t1.") == ["t1.transaction.>", "t1.collection.>", "t1.connection.>", "t1.config.>"]


def test_token_bucket_allows_the_limit_then_asks_to_wait():
    buckets = TokenBuckets(per_minute=60)
    assert all(buckets.take("a", now=100.0) == 0 for _ in range(60))
    wait = buckets.take("a", now=100.0)
    assert 0 < wait <= 1.0
    assert buckets.take("b", now=100.0) == 0  # another caller has its own bucket
    assert buckets.take("a", now=101.01) == 0  # one token back after a second


def test_problem_body_shape():
    body = ProblemError(422, "validation_error", "amount: must be positive", field="amount").to_dict()
    assert body == {
        "type": "https://docs.hybrid-payments.dev/problems/validation_error",
        "title": "Validation failed",
        "status": 422,
        "code": "validation_error",
        "detail": "amount: must be positive",
        "field": "amount",
    }


def test_events_written_before_a_field_existed_still_decode():
    """`threshold_currency` came after the first config.changed events: those must still decode
    (they sit in the stream, and a replay brings them back), with the field's default."""
    from shared.events import ConfigChanged

    old = new_event("config.changed", {
        "barber_id": 7, "payment_mode": "hybrid", "preferred_processor": None, "fallback_enabled": True,
        "min_external_amount": "20.00", "max_platform_amount": None, "split_threshold": None,
        "commission_rate": "0.20", "commission_collection_frequency": "weekly", "auto_collection_enabled": True,
        "webhook_notifications": True, "email_notifications": True, "analytics_enabled": True,
        "connect_account_id": None, "version": 3, "updated_at": None})
    decoded = decode_event(encode_event(old)).decode(ConfigChanged)
    assert (decoded.barber_id, decoded.threshold_currency, decoded.version) == (7, "USD", 3)


def test_every_payload_field_added_later_has_a_default():
    """A guard for the rule above: the payload types' required fields are the first version's."""
    import msgspec

    from shared.events import PAYLOAD_TYPES

    first_version_required = {
        "config.changed": 16, "transaction.recorded": 18, "connection.changed": 8,
        "collection.due": 7, "collection.settled": 5,
    }
    for event_type, payload_type in PAYLOAD_TYPES.items():
        required = [f for f in msgspec.structs.fields(payload_type) if f.required]
        assert len(required) <= first_version_required[event_type], (event_type, [f.name for f in required])
