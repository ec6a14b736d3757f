"""OrchestratorSettings: defaults, environment, YAML file (environment wins), clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator_core.errors import ConfigError
from orchestrator_core.settings import OrchestratorSettings, load_settings


def test_defaults_match_the_architecture_doc(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GL_ORCHESTRATOR_"):
            monkeypatch.delenv(name)
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.database_url == "sqlite+aiosqlite:///gl-orchestrator.db"
    assert settings.max_parallel_nodes == 10 and settings.max_concurrent_executions == 50
    assert settings.namespace == "greenlang" and settings.redis_url is None
    assert settings.agent_url_template == "http://{agent_id}.{namespace}.svc:8080/run"


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "orchestrator.yaml"
    config.write_text("max_parallel_nodes: 7\nmax_concurrent_executions: 30\nport: 9000\n")
    monkeypatch.setenv("GL_ORCHESTRATOR_MAX_PARALLEL_NODES", "5")
    monkeypatch.setenv("GL_ORCHESTRATOR_API_TOKENS", '["t-one", "t-two"]')
    settings = load_settings(config)
    assert settings.max_parallel_nodes == 5  # the runbook's `kubectl set env` must win
    assert settings.max_concurrent_executions == 30 and settings.port == 9000
    assert settings.resolved_api_tokens() == ["t-one", "t-two"]
    assert "t-one" not in repr(settings)  # secrets are masked


def test_token_file_is_read(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alpha\n\n beta \n")
    settings = OrchestratorSettings(api_token_file=tokens)
    assert settings.resolved_api_tokens() == ["alpha", "beta"]
    with pytest.raises(ConfigError, match="cannot read api_token_file"):
        OrchestratorSettings(api_token_file=tmp_path / "missing").resolved_api_tokens()


def test_bad_values_name_the_field(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GL_ORCHESTRATOR_MAX_PARALLEL_NODES", "zero")
    with pytest.raises(ConfigError, match="max_parallel_nodes"):
        load_settings()
    monkeypatch.delenv("GL_ORCHESTRATOR_MAX_PARALLEL_NODES")
    bad = tmp_path / "bad.yaml"
    bad.write_text("unknown_setting: 1\n")
    with pytest.raises(ConfigError, match="unknown_setting"):
        load_settings(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("port: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(broken)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.yaml")


@pytest.mark.parametrize("name", ["API_TOKENS", "HTTP_AGENTS"])
def test_a_list_variable_that_is_not_json_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(f"GL_ORCHESTRATOR_{name}", "plain-value")
    with pytest.raises(ConfigError, match=f"GL_ORCHESTRATOR_{name} must be a JSON list"):
        load_settings()


def test_runbook_option_4_variables_set_the_limits_and_refuse_nonsense(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GL_ORCHESTRATOR_MAX_PARALLEL_NODES", "5")
    monkeypatch.setenv("GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS", "25")
    settings = load_settings()
    assert (settings.max_parallel_nodes, settings.max_concurrent_executions) == (5, 25)
    for value in ("0", "-5", "100001"):
        monkeypatch.setenv("GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS", value)
        with pytest.raises(ConfigError, match="max_concurrent_executions"):
            load_settings()


@pytest.mark.parametrize("template", ["http://{agent}.svc/run", "http://{0}.svc/run", "{agent_id}:8080/run"])
def test_a_bad_agent_url_template_fails_at_start_up(monkeypatch: pytest.MonkeyPatch, template: str) -> None:
    monkeypatch.setenv("GL_ORCHESTRATOR_AGENT_URL_TEMPLATE", template)
    with pytest.raises(ConfigError, match="agent_url_template"):
        load_settings()
