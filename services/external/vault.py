"""Credentials at rest: Fernet under CONNECTION_ENCRYPTION_KEYS (the first key encrypts, every key
decrypts, so keys rotate by prepending a new one and running `python -m tools.rotate_keys`)."""

from __future__ import annotations

from typing import Any

import msgspec
from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class VaultError(Exception):
    """A stored secret could not be decrypted with any configured key."""


class CredentialVault:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("at least one key is required")
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    def seal(self, secret: Any) -> str:
        """A JSON-able value (a credentials object, a signing secret) as a token."""
        return self._fernet.encrypt(msgspec.json.encode(secret)).decode()

    def open(self, token: str) -> Any:
        try:
            return msgspec.json.decode(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            raise VaultError("no configured CONNECTION_ENCRYPTION_KEYS key opens this secret") from None

    def rotate(self, token: str) -> str:
        """The same secret under the newest key."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise VaultError("no configured CONNECTION_ENCRYPTION_KEYS key opens this secret") from None


def hint(value: str) -> str:
    """What a response may show of a secret: its last four characters at most."""
    return f"…{value[-4:]}" if len(value) > 8 else "…"
