"""Code all four services share: config, db, events and outbox, auth, money, errors, observability."""
