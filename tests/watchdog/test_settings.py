"""WatchdogSettings: defaults, env > YAML precedence, secret files, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from watchdog.settings import Mode, load_settings
from watchdog_sdk.errors import ConfigError


def test_defaults_match_the_architecture_doc(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GL_WATCHDOG_"):
            monkeypatch.delenv(name)
    s = load_settings()
    assert (s.host, s.port, s.mode, s.namespace) == ("127.0.0.1", 8081, Mode.RECOMMEND, "greenlang")
    assert (s.sweep_interval_seconds, s.for_duration_seconds, s.approval_ttl_seconds) == (60, 600, 900)
    assert s.step_timeout_seconds == 10 and s.redis_url is None and s.prometheus_url is None
    assert s.kubernetes_enabled is False and s.orchestrator_url == "http://127.0.0.1:8080"


def test_env_overrides_yaml_and_overrides_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "watchdog.yaml"
    config.write_text("port: 9000\nnamespace: from-yaml\nmode: auto\n")
    monkeypatch.setenv("GL_WATCHDOG_NAMESPACE", "from-env")
    s = load_settings(config)
    assert (s.port, s.namespace, s.mode) == (9000, "from-env", Mode.AUTO)
    assert load_settings(config, namespace="explicit").namespace == "explicit"


def test_secret_files_override_plain_values(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("  TOKEN-FROM-FILE \n")
    (tmp_path / "api").write_text("one\n\ntwo\n")
    (tmp_path / "key").write_text("KEY-FROM-FILE")
    s = load_settings(
        orchestrator_token="plain",
        orchestrator_token_file=tmp_path / "tok",
        api_tokens=["x"],
        api_token_file=tmp_path / "api",
        approval_signing_key_file=tmp_path / "key",
    )
    assert s.orchestrator_token_value() == "TOKEN-FROM-FILE"
    assert s.api_token_values() == ["one", "two"]
    assert s.approval_signing_key is not None and s.approval_signing_key.get_secret_value() == "KEY-FROM-FILE"
    assert "TOKEN-FROM-FILE" not in repr(s) and "KEY-FROM-FILE" not in repr(s)


def test_api_tokens_from_env_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GL_WATCHDOG_API_TOKENS", '["a", "b"]')
    assert load_settings().api_token_values() == ["a", "b"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": "x"}, "port"),
        ({"mode": "yolo"}, "mode"),
        ({"orchestrator_token_file": "/nonexistent/token"}, "orchestrator_token_file"),
        ({"unknown_setting": 1}, "unknown_setting"),
    ],
)
def test_bad_values_raise_config_error_naming_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(**kwargs)  # type: ignore[arg-type]


def test_bad_yaml_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")


def test_bad_env_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GL_WATCHDOG_API_TOKENS", "not-json")
    with pytest.raises(ConfigError, match="GL_WATCHDOG_"):
        load_settings()
