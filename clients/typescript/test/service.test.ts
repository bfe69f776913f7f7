// The client against a running suite (`make run`): the pytest e2e test
// (tests/e2e/test_typescript_client.py) starts one and passes HP_BASE_URL, HP_BARBER_ID and
// HP_BARBER_TOKEN (a barber with a Connect account to be paid out to). Without them: skipped.
import assert from "node:assert/strict";
import { test } from "node:test";

import { HybridPaymentService, PaymentDeclinedError, ValidationError, UnauthorizedError } from "../src/index.js";

const BASE = process.env.HP_BASE_URL;
const BARBER = Number(process.env.HP_BARBER_ID);
const skip = !BASE || !process.env.HP_BARBER_TOKEN ? "HP_BASE_URL and HP_BARBER_TOKEN not set (no suite)" : false;
const service = () => new HybridPaymentService({ baseUrl: BASE ?? "", token: process.env.HP_BARBER_TOKEN ?? "" });

test("getPaymentOptions: the barber's own config and modes", { skip }, async () => {
  const options = await service().getPaymentOptions(BARBER);
  assert.equal(options.config.barber_id, BARBER);
  assert.ok(options.available_modes.includes("centralized"));
  assert.equal(typeof options.config.commission_rate, "string");
  await assert.rejects(service().getPaymentOptions(BARBER + 1), /not barber/);
});

test("processPayment pays once per Idempotency-Key, money as strings", { skip }, async () => {
  const client = service();
  const paid = await client.processPayment(
    { appointment_id: 101, amount: "45.00", payment_method: "pm_card_visa" }, { idempotencyKey: `ts-pay-${BARBER}` });
  assert.equal(paid.status, "completed");
  assert.equal(paid.amount, "45.00");
  assert.equal(paid.payment_type, "centralized");
  const again = await client.processPayment(
    { appointment_id: 101, amount: "45.00", payment_method: "pm_card_visa" }, { idempotencyKey: `ts-pay-${BARBER}` });
  assert.equal(again.transaction_id, paid.transaction_id);
  const other = await client.processPayment({ appointment_id: 102, amount: "45.00", payment_method: "pm_card_visa" });
  assert.notEqual(other.transaction_id, paid.transaction_id); // a fresh key per call by default
});

test("refund: part of a payment, then the rest", { skip }, async () => {
  const client = service();
  const paid = await client.processPayment({ appointment_id: 103, amount: "30.00", payment_method: "pm_card_visa" });
  const part = await client.refund(paid.transaction_id, "10.00");
  assert.equal(part.refund_amount, "10.00");
  assert.equal(part.status, "partially_refunded");
  assert.equal((await client.getTransaction(paid.transaction_id)).refunded_amount, "10.00");
  await client.refund(paid.transaction_id);
  const after = await client.getTransaction(paid.transaction_id);
  assert.equal(after.refunded_amount, "30.00");
  assert.equal(after.status, "refunded");
});

test("a declined card is a PaymentDeclinedError with the failed payment's id", { skip }, async () => {
  await assert.rejects(
    service().processPayment({ appointment_id: 104, amount: "12.00", payment_method: "pm_card_chargeDeclined" }),
    (error: unknown) => {
      assert.ok(error instanceof PaymentDeclinedError);
      assert.equal(error.status, 402);
      assert.equal(error.code, "payment_declined");
      assert.match(error.transactionId ?? "", /^[0-9a-f-]{36}$/);
      return true;
    },
  );
});

test("bad input: refused before sending, or the service's ValidationError naming the field", { skip }, async () => {
  const client = service();
  await assert.rejects(client.processPayment({ appointment_id: 105, amount: "12.5.0", payment_method: "pm_card_visa" }),
    TypeError);
  await assert.rejects(
    client.processPayment({ appointment_id: 105, amount: "0.00", payment_method: "pm_card_visa" }),
    (error: unknown) => error instanceof ValidationError && error.status === 422 && /amount/.test(error.message),
  );
  const stranger = new HybridPaymentService({ baseUrl: BASE ?? "", token: "not-a-token" });
  await assert.rejects(stranger.getPaymentOptions(), UnauthorizedError);
});
