"""Where operator tools find the suite's stream and subject prefix (`tools.runstate`)."""

import pytest

import shared.config
from tools import runstate


@pytest.fixture
def sources(monkeypatch):
    found = {"env": {}, "dotenv": {}, "state": {}}
    for var in ("EVENT_STREAM", "EVENT_SUBJECT_PREFIX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(shared.config, "read_dotenv", lambda path: found["dotenv"])
    monkeypatch.setattr(runstate, "_run_state", lambda: found["state"])

    def set_env(**values):
        for var, value in values.items():
            monkeypatch.setenv(var, value)

    found["set_env"] = set_env
    return found


def test_defaults_are_the_services_defaults(sources):
    assert runstate.pick_event_names() == ("PAYMENTS", "")


def test_make_runs_record_is_used_when_nothing_else_says(sources):
    sources["state"].update(event_stream="PAYMENTS_DEV", event_subject_prefix="dev.")
    assert runstate.pick_event_names() == ("PAYMENTS_DEV", "dev.")


def test_dotenv_then_environment_then_flags_win(sources):
    sources["state"].update(event_stream="FROM_RUN", event_subject_prefix="run.")
    sources["dotenv"].update(EVENT_STREAM="FROM_DOTENV", EVENT_SUBJECT_PREFIX="dotenv.")
    assert runstate.pick_event_names() == ("FROM_DOTENV", "dotenv.")
    sources["set_env"](EVENT_STREAM="FROM_ENV", EVENT_SUBJECT_PREFIX="")
    assert runstate.pick_event_names() == ("FROM_ENV", "")  # an empty prefix set on purpose is kept
    assert runstate.pick_event_names("FLAG", "flag.") == ("FLAG", "flag.")
