"""Zero-configuration start-up keeps auth on: both services generate a local token on loopback.

`gl-orchestrator serve` and `gl-watchdog serve` with no token configured write one into the state
directory (mode 0600) and require it; the watchdog and its client commands started in the same
directory find the orchestrator's token and their own there. Off loopback, both refuse to start.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_for_port
from watchdog.settings import WatchdogSettings

BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GL_ORCHESTRATOR_", "GL_WATCHDOG_"))}
    env.update(extra)
    return env


@pytest.fixture
def orchestrator(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "gl-orchestrator"), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for_port(port, timeout=30), "gl-orchestrator serve did not start"
        yield port
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
        token = (tmp_path / ".gl-watchdog" / "orchestrator.token").read_text().strip()
        assert token not in stderr, "the generated token must never be logged"


def test_orchestrator_without_config_generates_and_requires_a_local_token(
    tmp_path: Path, orchestrator: int
) -> None:
    token_file = tmp_path / ".gl-watchdog" / "orchestrator.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    url = f"http://127.0.0.1:{orchestrator}/api/v1/orchestrator/executions?status=running"
    assert httpx.get(url, timeout=5).status_code == 401
    answer = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert answer.status_code == 200 and answer.json()["items"] == [] and answer.json()["total"] == 0


def test_watchdog_client_commands_find_the_local_orchestrator_token(
    tmp_path: Path, orchestrator: int
) -> None:
    result = subprocess.run(
        [str(BIN / "gl-watchdog"), "diagnose", "--local", "no-such-run"],
        cwd=tmp_path,
        env=_env(GL_WATCHDOG_ORCHESTRATOR_URL=f"http://127.0.0.1:{orchestrator}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Authenticated: the orchestrator answered "unknown execution", not 401.
    assert result.returncode == 3, result.stderr
    assert "no-such-run" in result.stderr and "401" not in result.stderr


@pytest.mark.parametrize("command", ["gl-orchestrator", "gl-watchdog"])
def test_serve_without_tokens_off_loopback_refuses_to_start(tmp_path: Path, command: str) -> None:
    result = subprocess.run(
        [str(BIN / command), "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "without API tokens" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / ".gl-watchdog").exists()


def test_watchdog_local_secrets_are_created_once_and_reused(tmp_path: Path) -> None:
    base = WatchdogSettings(state_dir=tmp_path / "state")
    first = base.with_local_secrets(create=True)
    second = base.with_local_secrets(create=True)
    assert first.api_token_values() == second.api_token_values() and len(first.api_token_values()) == 1
    assert first.approval_signing_key is not None and second.approval_signing_key is not None
    assert first.approval_signing_key.get_secret_value() == second.approval_signing_key.get_secret_value()
    for name in ("watchdog.token", "signing.key"):
        assert stat.S_IMODE((tmp_path / "state" / name).stat().st_mode) == 0o600


def test_configured_secrets_win_over_local_ones(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "orchestrator.token").write_text("local-orchestrator\n")
    settings = WatchdogSettings(
        state_dir=state, api_tokens=["configured"], orchestrator_token="configured-orch"
    ).with_local_secrets(create=True)
    assert settings.api_token_values() == ["configured"]
    assert settings.orchestrator_token_value() == "configured-orch"
    assert not (state / "watchdog.token").exists()


def test_client_commands_never_create_secrets(tmp_path: Path) -> None:
    settings = WatchdogSettings(state_dir=tmp_path / "state").with_local_secrets(create=False)
    assert settings.api_tokens == [] and settings.approval_signing_key is None
    assert not (tmp_path / "state").exists()


def test_orchestrator_with_an_empty_token_file_refuses_to_start_naming_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "tokens"
    empty.write_text("\n")
    result = subprocess.run(
        [str(BIN / "gl-orchestrator"), "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env=_env(GL_ORCHESTRATOR_API_TOKEN_FILE=str(empty)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{empty} holds no token" in result.stderr


def test_the_watchdog_uses_the_first_line_of_a_rotating_orchestrator_token_file(tmp_path: Path) -> None:
    tokens = tmp_path / "orchestrator-tokens"
    tokens.write_text("new-token\nold-token\n")
    settings = WatchdogSettings(orchestrator_token_file=tokens)
    assert settings.orchestrator_token_value() == "new-token"
