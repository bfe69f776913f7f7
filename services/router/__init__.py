"""Router service: Decides the route of every payment (centralized or external), records it, and runs centralized payments on the platform's Stripe Connect account."""
