"""Settings of the console (environment and `.env`; see deploy/.env.example)."""

from __future__ import annotations

import hashlib
import hmac
from functools import cache
from typing import Annotated

import msgspec

from shared.config import BaseSettings, SettingsError, load_settings


class ConsoleSettings(BaseSettings, kw_only=True, frozen=True):
    service_name: str = "console"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8005
    # Where the console calls the services (directly, not through the gateway).
    router_url: str = "http://127.0.0.1:8001"
    external_url: str = "http://127.0.0.1:8002"
    collections_url: str = "http://127.0.0.1:8003"
    analytics_url: str = "http://127.0.0.1:8004"
    # Seconds one API call may take before the page says the service did not answer.
    console_api_timeout: Annotated[float, msgspec.Meta(gt=0, le=120)] = 15.0
    # Send the sign-in and CSRF cookies only over HTTPS (set it behind TLS; `make run` is plain HTTP).
    console_cookie_secure: bool = False
    # Signs the CSRF cookie. Unset: derived from JWT_SECRET (the same on every replica).
    console_csrf_secret: str | None = None
    # Shown on the barber's pages: the sandbox's test payment methods (`make run`).
    console_sandbox: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("router_url", "external_url", "collections_url", "analytics_url"):
            if not getattr(self, name).startswith(("http://", "https://")):
                raise SettingsError(f"{name.upper()}: expected an http(s) URL, got {getattr(self, name)!r}")
        if not self.console_csrf_secret and not self.jwt_secret:
            raise SettingsError("CONSOLE_CSRF_SECRET: set it when tokens are verified by JWT_PUBLIC_KEY")

    @property
    def csrf_secret(self) -> str:
        if self.console_csrf_secret:
            return self.console_csrf_secret
        return hmac.new(str(self.jwt_secret).encode(), b"hybrid-payments-console-csrf", hashlib.sha256).hexdigest()

    def service_url(self, service: str) -> str:
        return getattr(self, f"{service}_url").rstrip("/")


@cache
def load() -> ConsoleSettings:
    return load_settings(ConsoleSettings)
