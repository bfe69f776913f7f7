"""Settings: environment and .env are read, bad values name their variable, secrets never print."""

from decimal import Decimal

import pytest

from services.analytics.settings import AnalyticsSettings
from services.collections.settings import CollectionsSettings
from services.external.settings import ExternalSettings
from services.router.settings import RouterSettings
from shared.config import SettingsError, load_settings, normalise_database_url

BASE = {"JWT_SECRET": "s3cret-value"}
FERNET = "Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE="  # 32 bytes, url-safe base64


def test_defaults_follow_the_contract():
    router = load_settings(RouterSettings, env=BASE, dotenv=None)
    assert router.hybrid_payments_enabled is True
    assert router.default_payment_mode == "centralized"
    assert router.default_commission_rate == Decimal("0.20")
    assert router.max_payment_amount == Decimal("100000.00")
    assert router.rate_limit_per_minute == 600
    assert router.event_stream == "PAYMENTS"
    collections = load_settings(CollectionsSettings, env=BASE, dotenv=None)
    assert collections.commission_collection_frequency == "weekly"
    assert collections.minimum_collection_amount == Decimal("25.00")
    assert load_settings(AnalyticsSettings, env=BASE, dotenv=None).six_figure_target == Decimal("100000")
    external = load_settings(ExternalSettings, env={**BASE, "CONNECTION_ENCRYPTION_KEYS": FERNET}, dotenv=None)
    assert external.external_paypal_enabled is True
    assert external.api_base("square") == "https://connect.squareupsandbox.com"  # SQUARE_SANDBOX=true


def test_environment_values_are_converted():
    s = load_settings(
        RouterSettings,
        env={**BASE, "HYBRID_PAYMENTS_ENABLED": "false", "PORT": "9001", "DEFAULT_COMMISSION_RATE": "0.125"},
        dotenv=None,
    )
    assert (s.hybrid_payments_enabled, s.port, s.default_commission_rate) == (False, 9001, Decimal("0.125"))


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"DEFAULT_PAYMENT_MODE": "sometimes"}, "DEFAULT_PAYMENT_MODE"),
        ({"DEFAULT_COMMISSION_RATE": "1.2"}, "DEFAULT_COMMISSION_RATE"),
        ({"HYBRID_PAYMENTS_ENABLED": "perhaps"}, "HYBRID_PAYMENTS_ENABLED"),
        ({"MAX_PAYMENT_AMOUNT": "-5"}, "MAX_PAYMENT_AMOUNT"),
        ({"EVENT_SUBJECT_PREFIX": "nodot"}, "EVENT_SUBJECT_PREFIX"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_variable(env, variable):
    with pytest.raises(SettingsError) as info:
        load_settings(RouterSettings, env={**BASE, **env}, dotenv=None)
    assert str(info.value).startswith(variable + ":")


def test_missing_jwt_configuration_is_refused():
    with pytest.raises(SettingsError, match="^JWT_SECRET"):
        load_settings(RouterSettings, env={}, dotenv=None)


def test_dotenv_is_read_and_environment_wins(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text('# local\nJWT_SECRET="from-file"\nexport PORT=9100\nLOG_LEVEL=debug\n')
    s = load_settings(RouterSettings, env={"LOG_LEVEL": "warning"}, dotenv=dotenv)
    assert (s.jwt_secret, s.port, s.log_level) == ("from-file", 9100, "warning")


def test_repr_masks_secrets():
    s = load_settings(RouterSettings, env={**BASE, "STRIPE_SECRET_KEY": "sk_live_abc"}, dotenv=None)
    assert "s3cret-value" not in repr(s) and "sk_live_abc" not in repr(s)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_database_urls_are_driven_through_asyncpg(url, expected):
    assert normalise_database_url(url) == expected
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        normalise_database_url("mysql://u@h/db")


def test_passwords_in_urls_never_print():
    s = load_settings(RouterSettings, env={**BASE, "DATABASE_URL": "postgresql://app:pa%40ss@db:5432/hp",
                                           "NATS_URL": "nats://user:n4ts-secret@nats:4222"}, dotenv=None)
    shown = repr(s)
    assert "pa%40ss" not in shown and "n4ts-secret" not in shown
    assert "postgresql://app:***@db:5432/hp" in shown and "nats://user:***@nats:4222" in shown


def test_the_sweeper_never_races_a_live_processor_call():
    with pytest.raises(SettingsError, match="^PENDING_SWEEP_AFTER"):
        load_settings(RouterSettings, env={**BASE, "STRIPE_TIMEOUT": "30", "PENDING_SWEEP_AFTER": "45"}, dotenv=None)


@pytest.mark.parametrize(("keys", "message"), [(None, "set one or more"), ("not-a-key", "key 1 is not a Fernet key"),
                                              (FERNET + ",short", "key 2 is not a Fernet key")])
def test_the_external_service_needs_real_encryption_keys(keys, message):
    env = {**BASE, **({"CONNECTION_ENCRYPTION_KEYS": keys} if keys else {})}
    with pytest.raises(SettingsError, match="^CONNECTION_ENCRYPTION_KEYS: .*" + message):
        load_settings(ExternalSettings, env=env, dotenv=None)
