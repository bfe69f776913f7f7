"""Adapters for barbers' own processor accounts: the credentials each processor takes, and the one
place that turns a connection row into a `PaymentProcessor` (cached per connection and credentials).
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog

from services.external.settings import ExternalSettings
from services.external.store import ConnectionRow
from services.external.vault import CredentialVault, VaultError, hint
from shared.errors import ProblemError
from shared.processors.base import PaymentProcessor, Secret
from shared.requests import text

log = structlog.get_logger("external.processors")
Text = text(512)
LocationId = text(64)


class StripeCredentialsIn(msgspec.Struct, forbid_unknown_fields=True):
    secret_key: Text  # the barber's own secret (or restricted) key


class SquareCredentialsIn(msgspec.Struct, forbid_unknown_fields=True):
    access_token: Text
    location_id: LocationId


class PayPalCredentialsIn(msgspec.Struct, forbid_unknown_fields=True):
    client_id: Text
    client_secret: Text


CREDENTIALS: dict[str, type[msgspec.Struct]] = {
    "stripe": StripeCredentialsIn, "square": SquareCredentialsIn, "paypal": PayPalCredentialsIn,
}
# The field of each that is the secret; the others may be shown.
_SECRET_FIELD = {"stripe": "secret_key", "square": "access_token", "paypal": "client_secret"}


def parse_credentials(processor: str, raw: Any) -> msgspec.Struct:
    """The request's `credentials` object as this processor's credentials (ValidationError naming
    the field otherwise)."""
    return msgspec.convert(raw, CREDENTIALS[processor])


def credentials_hint(processor: str, credentials: msgspec.Struct) -> str:
    return hint(getattr(credentials, _SECRET_FIELD[processor]))


def build_adapter(processor: str, credentials: msgspec.Struct, settings: ExternalSettings) -> PaymentProcessor:
    base, timeout = settings.api_base(processor), settings.processor_timeout
    if isinstance(credentials, StripeCredentialsIn):
        from shared.processors.stripe import StripeCredentials, StripeProcessor

        return StripeProcessor(StripeCredentials(Secret(credentials.secret_key)), api_base=base, timeout=timeout)
    if isinstance(credentials, SquareCredentialsIn):
        from shared.processors.square import SquareCredentials, SquareProcessor

        return SquareProcessor(SquareCredentials(Secret(credentials.access_token), credentials.location_id),
                               api_base=base, timeout=timeout)
    if isinstance(credentials, PayPalCredentialsIn):
        from shared.processors.paypal import PayPalCredentials, PayPalProcessor

        return PayPalProcessor(PayPalCredentials(credentials.client_id, Secret(credentials.client_secret)),
                               api_base=base, timeout=timeout)
    raise TypeError(f"no {processor} adapter for {type(credentials).__name__}")  # parse_credentials made them


class Adapters:
    """One adapter per connection (and per version of its credentials), reused across requests so
    each keeps its HTTP session and (PayPal) its access token."""

    def __init__(self, settings: ExternalSettings, vault: CredentialVault) -> None:
        self.settings = settings
        self.vault = vault
        self._cache: dict[int, tuple[str, PaymentProcessor]] = {}
        self._secrets: dict[int, tuple[str, Secret]] = {}  # opened webhook secrets, by sealed token
        self._stale: list[PaymentProcessor] = []  # replaced by new credentials; closed at shutdown

    def for_connection(self, connection: ConnectionRow) -> PaymentProcessor:
        cached = self._cache.get(connection.id)
        if cached is not None and cached[0] == connection.credentials:
            return cached[1]
        processor = connection.processor_type
        credentials = parse_credentials(processor, self._open(connection.credentials, connection.id))
        adapter = build_adapter(processor, credentials, self.settings)
        if cached is not None:
            self._stale.append(cached[1])
        self._cache[connection.id] = (connection.credentials, adapter)
        return adapter

    def webhook_secret(self, connection: ConnectionRow) -> Secret | None:
        """The connection's webhook secret, opened once per sealed token (a rotated secret or a
        re-sealed token is a new token, opened afresh)."""
        token = connection.webhook_secret
        if token is None:
            return None
        cached = self._secrets.get(connection.id)
        if cached is not None and cached[0] == token:
            return cached[1]
        secret = Secret(self._open(token, connection.id))
        self._secrets[connection.id] = (token, secret)
        return secret

    def _open(self, token: str, connection_id: int) -> Any:
        try:
            return self.vault.open(token)
        except VaultError:
            # An operator dropped a key that still seals this connection: nothing can be done here.
            log.error("connection_secret_unopenable", connection_id=connection_id)
            raise ProblemError(503, "connection_secret_unavailable",
                               f"connection {connection_id}: none of CONNECTION_ENCRYPTION_KEYS opens its "
                               "secrets (was a key removed before `python -m tools.rotate_keys` ran?)") from None

    async def close(self) -> None:
        for _, adapter in self._cache.values():
            await adapter.close()
        for adapter in self._stale:
            await adapter.close()
        self._cache.clear()
        self._stale.clear()
        self._secrets.clear()
