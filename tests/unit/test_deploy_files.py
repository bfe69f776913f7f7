"""What operators deploy from stays true to the code: `deploy/.env.example` names every setting
any service reads (set, or commented out with its default)."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from services.analytics.settings import AnalyticsSettings
from services.collections.settings import CollectionsSettings
from services.external.settings import ExternalSettings
from services.router.settings import RouterSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("settings", [RouterSettings, ExternalSettings, CollectionsSettings, AnalyticsSettings])
def test_env_example_lists_every_setting(settings):
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / "deploy" / ".env.example").read_text(), re.M))
    missing = [f.name.upper() for f in msgspec.structs.fields(settings) if f.name.upper() not in listed]
    assert missing == [], f"deploy/.env.example does not mention {', '.join(missing)}"
