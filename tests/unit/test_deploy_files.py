"""What operators deploy from stays true to the code: `deploy/.env.example` names every setting
any service reads (set, or commented out with its default), and `deploy/nats/consumers` are the
durable consumers the services create."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest

from services.analytics.settings import AnalyticsSettings
from services.collections.settings import CollectionsSettings
from services.console.settings import ConsoleSettings
from services.external.settings import ExternalSettings
from services.router.settings import RouterSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("settings", [RouterSettings, ExternalSettings, CollectionsSettings, AnalyticsSettings,
                                      ConsoleSettings])
def test_env_example_lists_every_setting(settings):
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / "deploy" / ".env.example").read_text(), re.M))
    missing = [f.name.upper() for f in msgspec.structs.fields(settings) if f.name.upper() not in listed]
    assert missing == [], f"deploy/.env.example does not mention {', '.join(missing)}"


def test_the_nats_consumer_definitions_are_the_consumers_the_services_declare():
    """deploy/nats/consumers holds one file per durable consumer the code creates, alike in name,
    subject and delivery (never given up on: the services park what they cannot apply)."""
    from shared.migrations import SERVICES
    from tools.validate import declared_consumers

    declared = {c.durable: c for service in SERVICES for c in declared_consumers(service)}
    files = {p.stem: json.loads(p.read_text()) for p in (ROOT / "deploy" / "nats" / "consumers").glob("*.json")}
    assert set(files) == set(declared)
    for name, body in files.items():
        assert body["durable_name"] == name
        assert (body["filter_subject"],) == declared[name].event_types
        assert (body["ack_policy"], body["deliver_policy"], body["max_deliver"]) == ("explicit", "all", -1)
        assert body["ack_wait"] == 30_000_000_000
