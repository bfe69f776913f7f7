// Problem documents (RFC 9457) from the suite, as typed errors: `code` is the stable member every
// service sends; a subclass per kind a caller acts on differently.

export interface Problem {
  type?: string;
  title?: string;
  status: number;
  code: string;
  detail?: string;
  field?: string;
  [extra: string]: unknown;
}

export class HybridPaymentsError extends Error {
  readonly status: number;
  readonly code: string;
  readonly detail: string | undefined;
  readonly field: string | undefined;
  readonly problem: Problem;

  constructor(problem: Problem) {
    super(problem.detail ?? problem.title ?? problem.code);
    this.name = new.target.name;
    this.status = problem.status;
    this.code = problem.code;
    this.detail = problem.detail;
    this.field = problem.field;
    this.problem = problem;
  }
}

/** 401: no token, a bad one, or an expired one. */
export class UnauthorizedError extends HybridPaymentsError {}
/** 403: the token is valid but not for this (another barber's data, or the wrong role). */
export class ForbiddenError extends HybridPaymentsError {}
/** 404 */
export class NotFoundError extends HybridPaymentsError {}
/** 422 (and 400): the request names the problem in `field` and `detail`. */
export class ValidationError extends HybridPaymentsError {}
/** 409: a version conflict, or an action the object's state does not allow. */
export class ConflictError extends HybridPaymentsError {}
/** 402 `payment_declined`: the processor declined; `transactionId` is the failed payment's record. */
export class PaymentDeclinedError extends HybridPaymentsError {
  get transactionId(): string | undefined {
    return typeof this.problem.transaction_id === "string" ? this.problem.transaction_id : undefined;
  }
  get declineCode(): string | undefined {
    return typeof this.problem.decline_code === "string" ? this.problem.decline_code : undefined;
  }
}
/** 429: `retryAfterSeconds` from the Retry-After header. */
export class RateLimitedError extends HybridPaymentsError {
  retryAfterSeconds: number | undefined;
}
/** 5xx: the suite (or a processor behind it) failed or did not answer; retry with the same Idempotency-Key. */
export class ServiceUnavailableError extends HybridPaymentsError {}

export function errorFor(status: number, body: unknown, headers?: Headers): HybridPaymentsError {
  const problem: Problem =
    body && typeof body === "object" && "code" in body
      ? { ...(body as Problem), status }
      : { status, code: status >= 500 ? "service_unavailable" : "error", detail: typeof body === "string" ? body : undefined };
  if (status === 402 && problem.code === "payment_declined") return new PaymentDeclinedError(problem);
  if (status === 401) return new UnauthorizedError(problem);
  if (status === 403) return new ForbiddenError(problem);
  if (status === 404) return new NotFoundError(problem);
  if (status === 409) return new ConflictError(problem);
  if (status === 400 || status === 422) return new ValidationError(problem);
  if (status === 429) {
    const error = new RateLimitedError(problem);
    const after = Number(headers?.get("Retry-After"));
    error.retryAfterSeconds = Number.isFinite(after) ? after : undefined;
    return error;
  }
  if (status >= 500) return new ServiceUnavailableError(problem);
  return new HybridPaymentsError(problem);
}
