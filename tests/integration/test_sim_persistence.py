"""The sandbox keeps what a processor keeps across a restart (`--state-file`, which `make run`
passes): each simulator, stopped as `make run` stops it (SIGTERM) and started again on the same
file, still holds the payment it took and the webhook endpoint registered with it, reports the
payment to a re-fetch and to reconciliation's listing, and answers a retry under the same key with
the same payment rather than a second one. Without this, every restart of `make run` made
reconciliation mark every external payment learned before it a mismatch."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sandbox.common import KEPT_IDEMPOTENCY_SECONDS, SimState
from sandbox.paypal_sim import PayPalState
from sandbox.square_sim import SquareState
from sandbox.stripe_sim import Account as StripeAccount
from sandbox.stripe_sim import StripeState
from shared.processors.base import PaymentProcessor, PaymentRequest, Secret
from shared.processors.paypal.adapter import PayPalCredentials, PayPalProcessor
from shared.processors.square.adapter import SquareCredentials, SquareProcessor
from shared.processors.stripe.adapter import StripeCredentials, StripeProcessor
from tests.integration.router_support import free_port, start_sim

# processor -> (simulator module, adapter for a base URL, a payment method its sandbox approves)
SANDBOXES: dict[str, tuple[str, Callable[[str], PaymentProcessor], str]] = {
    "stripe": ("sandbox.stripe_sim",
               lambda url: StripeProcessor(StripeCredentials(secret_key=Secret("sk_test_kept")), api_base=url),
               "pm_card_visa"),
    "square": ("sandbox.square_sim",
               lambda url: SquareProcessor(SquareCredentials(access_token=Secret("EAAAkept"), location_id="LKEPT"),
                                           api_base=url),
               "cnon:card-nonce-ok"),
    "paypal": ("sandbox.paypal_sim",
               lambda url: PayPalProcessor(PayPalCredentials(client_id="kept-app", client_secret=Secret("kept")),
                                           api_base=url),
               "paypal-approved"),
}
# Not the processor's objects: switches and delivery records, which a restart starts afresh.
VOLATILE = ("faults", "webhooks", "duplicate_webhooks", "deliveries", "token_lifetime", "rate_limited")


def objects(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_sim/state", timeout=10) as answer:
        return {k: v for k, v in json.load(answer).items() if k not in VOLATILE}


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


@pytest.mark.parametrize("processor", SANDBOXES)
async def test_a_restarted_simulator_still_knows_what_it_was_sent(processor: str, tmp_path: Path) -> None:
    module, adapter_for, method = SANDBOXES[processor]
    state_file, port = tmp_path / f"{processor}.json", free_port()
    key = f"hp-pay-{uuid.uuid4().hex[:12]}"
    request = PaymentRequest(amount=Decimal("42.50"), currency="USD", payment_method=method,
                             idempotency_key=key, reference=f"kept-{key[-8:]}")

    hook = f"http://127.0.0.1:{free_port()}/hook/{processor}"  # nothing listens: deliveries fail, as they may
    proc, url = start_sim(module, "--state-file", str(state_file), port=port)
    try:
        adapter = adapter_for(url)
        await adapter.register_webhook(hook)
        paid = await adapter.create_payment(request)
        await adapter.close()
        before = objects(url)
    finally:
        stop(proc)
    assert hook in json.dumps(before) and paid.processor_payment_id in json.dumps(before)
    assert state_file.exists() and not state_file.with_name(state_file.name + ".partial").exists()
    assert state_file.stat().st_mode & 0o777 == 0o600  # it holds the accounts' API keys and tokens

    proc, url = start_sim(module, "--state-file", str(state_file), port=port)
    try:
        assert objects(url) == before  # every payment, refund, event, endpoint and location
        adapter = adapter_for(url)
        try:
            fetched = await adapter.retrieve_payment(paid.processor_payment_id)
            assert (fetched.status, fetched.amount) == (paid.status, Decimal("42.50"))
            again = await adapter.create_payment(request)  # a retry under the same key
            assert again.processor_payment_id == paid.processor_payment_id
            now = datetime.now(UTC)
            listed = await adapter.list_payments(now - timedelta(hours=1), now + timedelta(minutes=1))
            assert [p.processor_payment_id for p in listed] == [paid.processor_payment_id]
        finally:
            await adapter.close()
    finally:
        stop(proc)


async def test_an_unreadable_state_file_is_moved_aside_and_the_simulator_starts_empty(tmp_path: Path) -> None:
    state_file = tmp_path / "stripe.json"
    state_file.write_text('{"version": 1, "objects": {"accounts": {"sk_test_x": {"api_key": 7}}}}')
    proc, url = start_sim("sandbox.stripe_sim", "--state-file", str(state_file))
    try:
        assert objects(url)["accounts"] == []
        assert state_file.with_name("stripe.json.unreadable").exists() and not state_file.exists()
    finally:
        stop(proc)
    assert json.loads(state_file.read_text())["objects"] == {"accounts": {}}  # the empty state it ended with


def owner_of(state: SimState) -> Any:
    """One account (Stripe, PayPal) or merchant (Square) of a simulator's state, made as a request makes it."""
    if isinstance(state, StripeState):
        return state.accounts.setdefault("sk_test_kept", StripeAccount("sk_test_kept"))
    return state.merchant("EAAAkept") if isinstance(state, SquareState) else state.account("kept-app")


@pytest.mark.parametrize("state_type", [StripeState, SquareState, PayPalState])
async def test_a_kept_idempotency_record_is_replayed_not_refused(state_type: type[SimState]) -> None:
    """The records' request fingerprints are (method, path, body) tuples, which JSON returns as
    lists: restored as they were, the same retry is a replay, not "key used for another request"."""
    state = state_type()
    store = owner_of(state).idempotency
    fingerprint = ("POST", "/v1/payments", {"amount": 4250, "tags": ["a", "b"]})
    assert store.claim("key-1", fingerprint, "req-1").outcome == "new"
    store.finish("key-1", web.json_response({"id": "pay_1"}, status=201))
    assert store.claim("key-2", fingerprint, "req-2").outcome == "new"  # never answered: not kept
    assert store.claim("key-old", fingerprint, "req-0").outcome == "new"
    store.finish("key-old", web.json_response({"id": "pay_0"}))
    store.records["key-old"].created -= KEPT_IDEMPOTENCY_SECONDS + 60  # as Stripe, gone after a day

    restored = state_type()
    restored.restore(state.dump())
    kept = owner_of(restored).idempotency
    claim = kept.claim("key-1", ("POST", "/v1/payments", {"amount": 4250, "tags": ["a", "b"]}), "req-3")
    assert (claim.outcome, claim.record.status, json.loads(claim.record.body)) == ("replay", 201, {"id": "pay_1"})
    assert kept.claim("key-1", ("POST", "/v1/payments", {"amount": 1}), "req-4").outcome == "mismatch"
    assert "key-2" not in kept and "key-old" not in kept
    assert kept.key_source is store.key_source


async def test_a_state_file_that_cannot_be_written_does_not_spoil_the_stop(tmp_path: Path) -> None:
    (tmp_path / "not-a-directory").write_text("")
    state_file = tmp_path / "not-a-directory" / "stripe.json"
    proc, url = start_sim("sandbox.stripe_sim", "--state-file", str(state_file))
    objects(url)
    stop(proc)  # exits 0 (a stop that raised would not), saying it could not keep the file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-directory"]


async def test_expired_paypal_tokens_are_not_kept() -> None:
    state = PayPalState()
    state.tokens = {"A21-live": ("kept-app", time.time() + 600), "A21-dead": ("kept-app", time.time() - 1)}
    restored = PayPalState()
    restored.restore(state.dump())
    assert list(restored.tokens) == ["A21-live"] and restored.tokens["A21-live"] == state.tokens["A21-live"]
