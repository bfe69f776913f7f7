"""External service: Owns barbers' own processor connections (Stripe, Square, PayPal), their transactions, signed webhooks and reconciliation."""
