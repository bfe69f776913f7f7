// HybridPaymentService: what the booking app calls. It adds the bearer token, a fresh
// Idempotency-Key per payment and refund (or the caller's, to retry the same one), and turns
// problem documents into typed errors (./errors.ts). Money is a decimal string, never a float.

import createClient, { type Client } from "openapi-fetch";

import { errorFor } from "./errors.js";
import type { components as RouterComponents, paths as RouterPaths } from "./generated/router.js";

type Schemas = RouterComponents["schemas"];
export type PaymentOptions = Schemas["MyOptions"];
export type Payment = Schemas["ProcessOut"];
export type Refund = Schemas["RefundOut"];
export type Transaction = Schemas["TransactionOut"];
export type Route = Schemas["RouteOut"];

/** A decimal amount as a string, e.g. "45.00" (never a float: 0.1 + 0.2 is not money). */
export type Money = string;

export interface PaymentRequest {
  appointment_id: number;
  amount: Money;
  currency?: string;
  /** A processor payment method: a Stripe PaymentMethod id, a Square card nonce, a PayPal order. */
  payment_method: string;
  /** For an admin or service token: which barber is paid (a barber's token pays itself). */
  barber_id?: number;
  client_id?: number;
}

export interface CallOptions {
  /** Reuse the key of an earlier attempt to retry it safely: same answer, no second charge. */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

export interface HybridPaymentServiceOptions {
  /** The gateway, e.g. "https://payments.example.com" (or http://127.0.0.1:8000 under `make run`). */
  baseUrl: string;
  /** The caller's JWT, or a function returning the current one (refreshed by the app). */
  token: string | (() => string | Promise<string>);
  fetch?: typeof globalThis.fetch;
}

const MONEY = /^[0-9]+(\.[0-9]{1,2})?$/;

export class HybridPaymentService {
  private readonly router: Client<RouterPaths>;
  private readonly token: () => Promise<string>;

  constructor(options: HybridPaymentServiceOptions) {
    const token = options.token;
    this.token = async () => (typeof token === "function" ? await token() : token);
    this.router = createClient<RouterPaths>({ baseUrl: options.baseUrl.replace(/\/$/, ""), fetch: options.fetch });
    this.router.use({
      onRequest: async ({ request }) => {
        request.headers.set("Authorization", `Bearer ${await this.token()}`);
        return request;
      },
    });
  }

  /** The signed-in barber's options: its config, the modes it may use, its processors and whether each is usable. */
  async getPaymentOptions(barberId?: number): Promise<PaymentOptions> {
    const options = await unwrap(this.router.GET("/api/v1/hybrid-payments/my-options"));
    if (barberId !== undefined && options.config.barber_id !== barberId) {
      throw new Error(`getPaymentOptions: the token is barber ${options.config.barber_id}'s, not barber ${barberId}'s`);
    }
    return options;
  }

  /** Route and pay in one call. Declined cards throw PaymentDeclinedError; a retry with the same
   * `idempotencyKey` returns the first answer and never charges twice. */
  async processPayment(payment: PaymentRequest, options: CallOptions = {}): Promise<Payment> {
    if (!MONEY.test(payment.amount)) {
      throw new TypeError(`amount: a decimal string like "45.00", got ${JSON.stringify(payment.amount)}`);
    }
    return unwrap(this.router.POST("/api/v1/hybrid-payments/process", {
      body: { currency: "USD", ...payment },
      params: { header: { "Idempotency-Key": options.idempotencyKey ?? newKey("pay") } },
      signal: options.signal,
    }));
  }

  /** Refund a payment: in full without `amount`, else that much. */
  async refund(transactionId: string, amount?: Money, options: CallOptions = {}): Promise<Refund> {
    if (amount !== undefined && !MONEY.test(amount)) {
      throw new TypeError(`amount: a decimal string like "10.00", got ${JSON.stringify(amount)}`);
    }
    return unwrap(this.router.POST("/api/v1/hybrid-payments/transactions/{transaction_id}/refund", {
      params: { path: { transaction_id: transactionId }, header: { "Idempotency-Key": options.idempotencyKey ?? newKey("refund") } },
      // The refund body is optional (`{}` or none: in full), so the document declares none: typed here.
      body: (amount === undefined ? {} : { amount }) as never,
      signal: options.signal,
    }) as Promise<ApiResult<Refund>>);
  }

  async getTransaction(transactionId: string): Promise<Transaction> {
    return unwrap(this.router.GET("/api/v1/hybrid-payments/transactions/{transaction_id}", {
      params: { path: { transaction_id: transactionId } },
    }));
  }
}

interface ApiResult<T> {
  data?: T;
  error?: unknown;
  response: Response;
}

async function unwrap<T>(call: Promise<ApiResult<T>>): Promise<T> {
  const { data, error, response } = await call;
  if (response.ok && data !== undefined) return data;
  throw errorFor(response.status, error, response.headers);
}

function newKey(kind: string): string {
  return `${kind}-${globalThis.crypto.randomUUID()}`;
}
