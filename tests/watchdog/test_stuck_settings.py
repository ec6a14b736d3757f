"""The stuck-run thresholds as an operator sets them (issue 16): `stuck_runs` from the environment as
JSON or from the YAML file, reaching the sweep's and the diagnosis' settings alike; a bad value is a
configuration error naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from watchdog.settings import load_settings
from watchdog_sdk.errors import ConfigError


def test_the_thresholds_come_from_the_environment_as_json_and_reach_the_diagnosis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GL_WATCHDOG_STUCK_RUNS", '{"queued_max_seconds": 600, "stall": {"multiple": 4}}')
    settings = load_settings()
    assert settings.stuck_runs.queued_max_seconds == 600 and settings.stuck_runs.stall.multiple == 4
    assert settings.stuck_runs.stall.floor_seconds == 300  # the rest keep their defaults
    assert settings.diagnostics().stuck == settings.stuck_runs


def test_the_thresholds_come_from_the_yaml_file(tmp_path: Path) -> None:
    config = tmp_path / "watchdog.yaml"
    config.write_text(
        "stuck_runs:\n  retry_storm_attempts: 8\n  stall: {quantile: 0.99}\nstuck_run_detection: false\n"
    )
    settings = load_settings(config)
    assert settings.stuck_runs.retry_storm_attempts == 8 and settings.stuck_runs.stall.quantile == 0.99
    assert settings.stuck_run_detection is False


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            '{"resume_loop_count": 1}',
            "stuck_runs.resume_loop_count: Input should be greater than or equal to 2",
        ),
        ('{"stall": {"quantile": 0.9}}', "stuck_runs.stall: Value error, stall.quantile 0.9 is not one"),
        ('{"queued_max_seconds": 0}', "stuck_runs.queued_max_seconds: Input should be greater than 0"),
        ('{"cancel_after": 5}', "stuck_runs.cancel_after: Extra inputs are not permitted"),
    ],
)
def test_a_bad_threshold_is_a_configuration_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("GL_WATCHDOG_STUCK_RUNS", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert problem in str(caught.value)
