"""The shared attempt pipeline (`shared.attempts`), against a fake processor that counts what it is
asked: when it sends, when it only looks, and how a sweep backs off a row."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shared import attempts
from shared.circuit import Circuit
from shared.processors.base import (
    OutcomeUnknown,
    PaymentDeclined,
    PaymentResult,
    ProcessorRequestError,
    ProcessorTimeout,
    ProcessorUnavailable,
)

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)


def result(status: str = "completed", pid: str = "pi_1") -> PaymentResult:
    return PaymentResult(processor_payment_id=pid, status=status, amount=Decimal("10.00"), currency="USD",
                         created_at=NOW)


class FakeProcessor:
    """Counts creates, retrievals and look-ups; each answers what the test set."""

    def __init__(self, *, create=None, retrieve=None, found=None, lag: timedelta = timedelta(0)) -> None:
        self.calls: list[str] = []
        self._create, self._retrieve, self._found = create, retrieve, found
        self.LISTING_LAG = lag

    def operation(self) -> attempts.Operation[PaymentResult]:
        async def create():
            self.calls.append("create")
            if isinstance(self._create, Exception):
                raise self._create
            return self._create or result()

        async def retrieve(pid: str):
            self.calls.append(f"retrieve {pid}")
            return self._retrieve or result(pid=pid)

        async def find():
            self.calls.append("find")
            return self._found

        return attempts.Operation(create=create, retrieve=retrieve, find=find, processor=self)


async def test_a_fresh_attempt_is_sent_with_its_key():
    fake = FakeProcessor()
    outcome = await attempts.call(fake.operation(), attempts.Attempt(None, NOW, fresh=True), now=NOW)
    assert (outcome.kind, fake.calls) == ("answered", ["create"])


async def test_an_attempt_the_processor_named_is_retrieved_never_sent_again():
    """Re-sending a create with its key only replays the first answer (a pending one never settles)."""
    fake = FakeProcessor(retrieve=result("completed", "pi_9"))
    outcome = await attempts.call(fake.operation(), attempts.Attempt("pi_9", NOW - timedelta(minutes=5)), now=NOW)
    assert (outcome.kind, outcome.result.status, fake.calls) == ("answered", "completed", ["retrieve pi_9"])


async def test_an_attempt_old_enough_that_its_key_may_be_gone_is_only_looked_up():
    """After half of the key's lifetime (Stripe keeps keys 24 h) the same key may charge again."""
    fake = FakeProcessor(found=None)
    old = attempts.Attempt(None, NOW - timedelta(hours=13))
    outcome = await attempts.call(fake.operation(), old, now=NOW)
    assert (outcome.kind, fake.calls) == ("absent", ["find"])
    young = attempts.Attempt(None, NOW - timedelta(hours=11))
    assert (await attempts.call(fake.operation(), young, now=NOW)).kind == "answered"
    assert fake.calls[-1] == "create"  # within the key's lifetime a retry re-sends the same key


@pytest.mark.parametrize(("error", "kind"), [
    (PaymentDeclined("no", code="card_declined", processor_payment_id="pi_2"), "declined"),
    (ProcessorRequestError("bad"), "rejected"), (ProcessorUnavailable("down"), "refused"),
    (OutcomeUnknown("5xx"), "unknown"), (ProcessorTimeout("slow"), "unknown"),
])
async def test_each_failure_is_named_for_what_it_means_for_the_money(error, kind):
    outcome = await attempts.call(FakeProcessor(create=error).operation(), attempts.Attempt(None, NOW, fresh=True),
                                  now=NOW)
    assert outcome.kind == kind and outcome.error is error


async def test_an_open_circuit_sends_nothing():
    fake = FakeProcessor()
    circuit = Circuit(failure_threshold=1, reset_after=3600)
    circuit.record_failure(now=time.monotonic())
    outcome = await attempts.call(fake.operation(), attempts.Attempt(None, NOW, fresh=True), now=NOW, circuit=circuit)
    assert (outcome.kind, fake.calls) == ("refused", [])
    problem = attempts.problem_for(outcome, fresh=True, transaction_id="t", who="Stripe")
    assert (problem.status, problem.code, problem.extra["nothing_happened"]) == (503, "processor_unavailable", True)


async def test_a_look_up_waits_out_the_listing_lag_before_calling_an_attempt_absent():
    fake = FakeProcessor(found=None, lag=timedelta(hours=3))
    recent = attempts.Attempt(None, NOW - timedelta(hours=1))
    assert (await attempts.look_up(fake.operation(), recent, now=NOW)).kind == "not_yet"
    old = attempts.Attempt(None, NOW - timedelta(hours=4))
    assert (await attempts.look_up(fake.operation(), old, now=NOW)).kind == "absent"
    found = FakeProcessor(found=result("pending", "pi_3"))
    assert (await attempts.look_up(found.operation(), old, now=NOW)).result.processor_payment_id == "pi_3"


async def test_a_sweep_backs_off_the_rows_it_cannot_settle_and_goes_on():
    from types import SimpleNamespace

    backed_off: list[str] = []

    async def settle(row):
        if row.id == "broken":
            raise ProcessorUnavailable("its account is down")
        if row.id == "bug":
            raise RuntimeError("a bug")
        return "completed"

    async def back_off(row):
        backed_off.append(row.id)

    rows = [SimpleNamespace(id=name) for name in ("broken", "bug", "fine")]
    outcomes = await attempts.sweep(rows, settle, back_off)
    assert outcomes == {"lookup_failed": 1, "error": 1, "completed": 1}
    assert backed_off == ["broken", "bug"]


def test_back_off_doubles_and_is_capped():
    delays = [attempts.next_check(n, NOW) - NOW for n in range(12)]
    assert delays[:4] == [timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert delays[-1] == attempts.BACK_OFF_CAP and all(a <= b for a, b in zip(delays, delays[1:]))
