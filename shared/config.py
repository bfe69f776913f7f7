"""Settings: one msgspec Struct per service, read once from the environment and `.env`.

Each field maps to the upper-cased environment variable of the same name. A bad value stops
the service at start with a `SettingsError` that names the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import msgspec

LogLevel = Literal["debug", "info", "warning", "error"]


class SettingsError(ValueError):
    """A setting is missing or malformed; the message starts with the variable's name."""


def require_range(var: str, value: Decimal, low: Decimal | None = None, high: Decimal | None = None) -> None:
    """Range checks for Decimal settings (msgspec constraints do not apply to Decimal)."""
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if low is not None and high is not None else (
            f"at least {low}" if low is not None else f"at most {high}")
        raise SettingsError(f"{var}: must be {bounds}, got {value}")


class BaseSettings(msgspec.Struct, kw_only=True, frozen=True):
    """What every service needs: where its database and NATS are, who it trusts, how it logs."""

    service_name: str = "service"
    # SQLAlchemy URL; `postgresql://` is accepted and driven through asyncpg.
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/hybrid_payments"
    db_pool_size: Annotated[int, msgspec.Meta(ge=1, le=200)] = 10
    nats_url: str = "nats://127.0.0.1:4222"
    # JetStream stream and subject prefix; tests give each run its own so runs never collide.
    event_stream: str = "PAYMENTS"
    event_subject_prefix: str = ""
    # Copies of the stream kept by a NATS cluster when a service creates it (3 on a 3-node cluster:
    # deploy/nats/cluster/); an existing stream keeps its own.
    event_stream_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    # Exactly one of these verifies tokens: HS256 shared secret or RS256 public key (PEM).
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    log_level: LogLevel = "info"
    log_json: bool = True
    rate_limit_per_minute: Annotated[int, msgspec.Meta(ge=1)] = 600
    # Seconds after which a request still "in progress" under an Idempotency-Key is taken to have
    # died with its process (SIGKILL, OOM) and a retry with the same key may run it again.
    idempotency_claim_timeout: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 60.0
    max_payment_amount: Decimal = Decimal("100000.00")
    # How often the outbox relay looks for events without being woken (seconds): a safety net, for
    # every commit that writes outbox rows notifies the relay (LISTEN/NOTIFY).
    outbox_poll_interval: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # Worker processes serving this service on its port (granian); `make run` picks it by cores.
    web_concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1

    def __post_init__(self) -> None:
        if not self.jwt_secret and not self.jwt_public_key:
            raise SettingsError("JWT_SECRET: set JWT_SECRET (HS256) or JWT_PUBLIC_KEY (RS256)")
        if self.max_payment_amount <= 0:
            raise SettingsError(f"MAX_PAYMENT_AMOUNT: must be greater than zero, got {self.max_payment_amount}")
        if self.event_subject_prefix and not self.event_subject_prefix.endswith("."):
            raise SettingsError("EVENT_SUBJECT_PREFIX: must end with '.' (e.g. 'test42.')")

    def __repr__(self) -> str:
        # Settings get logged; secrets, keys and passwords inside URLs must not be.
        def shown(name: str) -> str:
            value = getattr(self, name)
            if _is_secret(name) and value:
                return "'***'"
            return repr(mask_url(value) if isinstance(value, str) else value)

        return f"{type(self).__name__}({', '.join(f'{f}={shown(f)}' for f in self.__struct_fields__)})"

    @property
    def async_database_url(self) -> str:
        return normalise_database_url(self.database_url)


class PlatformStripeSettings(BaseSettings, kw_only=True, frozen=True):
    """Settings of a service that uses the platform's own Stripe account (router: centralized
    payments; collections: charging barbers). The API base points at a simulator in the sandbox."""

    stripe_secret_key: str | None = None
    stripe_api_base: str = "https://api.stripe.com"
    # Seconds before a Stripe call counts as timed out (its outcome is then unknown).
    stripe_timeout: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.stripe_api_base.startswith(("http://", "https://")):
            raise SettingsError(f"STRIPE_API_BASE: expected an http(s) URL, got {self.stripe_api_base!r}")


S = TypeVar("S", bound=BaseSettings)


_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:\s]*:)[^/\s]*@", re.IGNORECASE)


def mask_url(text: str) -> str:
    """`postgresql://app:s3cret@db/x` -> `postgresql://app:***@db/x`; other text unchanged."""
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


def libpq_url(url: str) -> str:
    """The `postgresql://` form of a database URL, for asyncpg.connect and the Postgres client tools
    (the services' SQLAlchemy URLs say `postgresql+asyncpg://`)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def normalise_database_url(url: str) -> str:
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise SettingsError(f"DATABASE_URL: expected a postgresql:// URL, got {url.split(':')[0]}://…")


def read_dotenv(path: Path) -> dict[str, str]:
    """Minimal `.env` reader: KEY=VALUE lines, optional quotes, `#` comments."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_settings(
    cls: type[S], env: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env"), **overrides: object
) -> S:
    """Build `cls` from the environment (which wins over `.env`) and explicit overrides."""
    source: dict[str, str] = {}
    if dotenv is not None:
        source.update(read_dotenv(dotenv))
    source.update(os.environ if env is None else env)
    values: dict[str, object] = {}
    for field in msgspec.structs.fields(cls):
        var = field.name.upper()
        if field.name in overrides:
            values[field.name] = overrides[field.name]
            continue
        if var not in source:
            continue
        raw = source[var]
        if raw == "" and _accepts_none(field.type):
            values[field.name] = None
            continue
        try:
            values[field.name] = msgspec.convert(raw, type=field.type, strict=False)
        except msgspec.ValidationError as exc:
            raise SettingsError(f"{var}: {_clean(exc)} (got {raw!r})") from None
    try:
        return cls(**values)
    except SettingsError:
        raise
    except (TypeError, ValueError) as exc:
        raise SettingsError(str(exc)) from None


def _is_secret(name: str) -> bool:
    return any(word in name for word in ("secret", "key", "password", "token"))


def _accepts_none(tp: object) -> bool:
    return type(None) in getattr(tp, "__args__", ())


def _clean(exc: msgspec.ValidationError) -> str:
    return str(exc).replace(" - at `$`", "")
