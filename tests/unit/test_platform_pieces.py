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
