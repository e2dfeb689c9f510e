"""Each function builds only the settings it reads, and PROBLEM_TYPE_BASE has one reading.

The scheduled functions' settings live in ``capacity.scheduled_settings``, the booking
function's in ``capacity.settings``.
"""

from __future__ import annotations

import pytest

from capacity import scheduled_settings, settings
from capacity.outcomes import DEFAULT_PROBLEM_TYPE_BASE, ProblemCode, problem_body
from capacity.settings import BookingSettings, SettingsError, problem_type_base
from tests.unit.test_cold_start import cold_start

# Every pydantic settings class of the layer that the function's import left in memory.
BUILT_SETTINGS = (
    "sorted({c.__name__ for m in list(sys.modules.values()) if (getattr(m, '__name__', '') or '').startswith('capacity')"
    " for c in vars(m).values() if isinstance(c, type) and c.__name__.endswith('Settings')"
    " and hasattr(c, 'model_fields')})"
)


def _cold_start(function: str) -> dict[str, list[str]]:
    loaded: dict[str, list[str]] = cold_start(
        function,
        f"{{'modules': sorted(m for m in sys.modules if m.startswith('capacity')), 'settings': {BUILT_SETTINGS}}}",
    )
    return loaded


def test_the_booking_function_builds_only_its_own_settings_at_cold_start():
    loaded = _cold_start("create_booking")
    assert "capacity.booking" in loaded["modules"]
    assert loaded["settings"] == ["BookingSettings", "DatabaseSettings", "_Settings"]


@pytest.mark.parametrize(("function", "own"), [("check_alerts", "AlertSettings"), ("rollup_metrics", "RollupSettings")])
def test_the_scheduled_functions_build_their_own_settings(function, own):
    loaded = _cold_start(function)
    assert "capacity.scheduled_settings" in loaded["modules"]
    assert own in loaded["settings"]


def test_the_scheduled_settings_are_not_in_the_booking_functions_module():
    assert issubclass(scheduled_settings.AlertSettings, settings.DatabaseSettings)
    assert not hasattr(settings, "AlertSettings") and not hasattr(settings, "RollupSettings")


def test_the_split_settings_validate_as_before():
    alert = scheduled_settings.AlertSettings.from_env(
        {"CONFLICT_RATE_THRESHOLD": "0.1", "RUNBOOK_URL": "https://w.example/r#x"}
    )
    assert (alert.conflict_rate_threshold, alert.runbook_url) == (0.1, "https://w.example/r")
    assert scheduled_settings.RollupSettings.from_env({"ROLLUP_HOURS": "6"}).rollup_hours == 6
    with pytest.raises(SettingsError, match=r"^invalid setting ALERT_TOPIC_ARN: must be an SNS topic ARN"):
        scheduled_settings.AlertSettings.from_env({"ALERT_TOPIC_ARN": "topic"})
    with pytest.raises(SettingsError, match=r"^invalid setting ROLLUP_HOURS: "):
        scheduled_settings.RollupSettings.from_env({"ROLLUP_HOURS": "0"})


BASES = [
    ("https://docs.example.org/problems#", True),
    ("http://intranet/problems/", True),
    ("/problems/", False),
    ("docs/problems.md#", False),
    ("https://has space/#", False),
    ("ftp://docs.example.org/#", False),
]


@pytest.mark.parametrize(("base", "valid"), BASES)
def test_problem_type_base_is_read_and_checked_as_the_settings_check_it(base, valid):
    env = {"PROBLEM_TYPE_BASE": base}
    if valid:
        assert problem_type_base(env) == BookingSettings.from_env(env).problem_type_base == base
    else:
        message = r"^invalid setting PROBLEM_TYPE_BASE: must be an absolute http\(s\):// URL"
        with pytest.raises(SettingsError, match=message):
            problem_type_base(env)
        with pytest.raises(SettingsError, match=message):
            BookingSettings.from_env(env)


def test_problem_type_base_defaults_when_unset_or_empty():
    assert problem_type_base({}) == problem_type_base({"PROBLEM_TYPE_BASE": ""}) == DEFAULT_PROBLEM_TYPE_BASE
    assert BookingSettings.from_env({"PROBLEM_TYPE_BASE": ""}).problem_type_base == DEFAULT_PROBLEM_TYPE_BASE


def test_a_problem_names_the_base_the_environment_names(monkeypatch):
    monkeypatch.setenv("PROBLEM_TYPE_BASE", "https://docs.example.org/p#")
    assert problem_body(ProblemCode.SLOT_CLOSED, "x")["type"] == "https://docs.example.org/p#slot_closed"
    monkeypatch.setenv("PROBLEM_TYPE_BASE", "not a url")
    with pytest.raises(SettingsError, match="PROBLEM_TYPE_BASE"):
        problem_body(ProblemCode.SLOT_CLOSED, "x")
