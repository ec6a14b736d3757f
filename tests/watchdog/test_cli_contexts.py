"""The CLI's contexts: which file, which context, and flags over environment over the context; the
`config` commands that write the file (mode 0600) and never print a token."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from watchdog.cli import main
from watchdog.cli.contexts import Overrides, config_path, resolve
from watchdog.exit_codes import EXIT_NOT_FOUND, EXIT_USAGE, CliError

SECRET = "glw_not-to-be-printed-0123456789"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "cfg").mkdir()
    write(tmp_path / "cfg" / "prod.token", f"{SECRET}\n")
    write(tmp_path / "cfg" / "ca.pem", "-----BEGIN CERTIFICATE-----\n")
    return write(
        tmp_path / "cfg" / "config.yaml",
        "current-context: prod\n"
        "contexts:\n"
        "  prod: {server: 'https://wd.example.com/', token_file: prod.token, ca_bundle: ca.pem}\n"
        "  lab: {server: 'http://10.0.0.5:8081', token: lab-token, insecure_skip_tls_verify: true}\n",
    )


def test_the_file_is_the_flag_then_the_variable_then_xdg_then_home() -> None:
    env = {"GL_WATCHDOG_CONFIG": "/env/c.yaml", "XDG_CONFIG_HOME": "/xdg", "HOME": "/home/u"}
    assert config_path("/flag/c.yaml", env) == Path("/flag/c.yaml")
    assert config_path(None, env) == Path("/env/c.yaml")
    del env["GL_WATCHDOG_CONFIG"]
    assert config_path(None, env) == Path("/xdg/gl-watchdog/config.yaml")
    del env["XDG_CONFIG_HOME"]
    assert config_path(None, env) == Path("/home/u/.config/gl-watchdog/config.yaml")


def test_the_current_context_gives_server_token_file_and_ca_bundle_relative_to_the_file(config: Path) -> None:
    connection = resolve(config, Overrides(), {})
    assert connection.server == "https://wd.example.com" and connection.context == "prod"
    assert connection.token == SECRET and connection.verify == str(config.parent / "ca.pem")
    assert SECRET not in repr(connection)


def test_flags_win_over_the_environment_which_wins_over_the_context(config: Path) -> None:
    env = {"GL_WATCHDOG_CONTEXT": "lab", "GL_WATCHDOG_SERVER": "http://env:1", "GL_WATCHDOG_TOKEN": "env-t"}
    from_env = resolve(config, Overrides(), env)
    assert (from_env.context, from_env.server, from_env.token, from_env.verify) == (
        "lab",
        "http://env:1",
        "env-t",
        False,
    )
    flags = resolve(config, Overrides(context="prod", server="http://flag:2", token="flag-t"), env)
    assert (flags.context, flags.server, flags.token) == ("prod", "http://flag:2", "flag-t")
    context_only = resolve(config, Overrides(context="lab"), {})
    assert (context_only.server, context_only.token) == ("http://10.0.0.5:8081", "lab-token")


@pytest.mark.parametrize(
    ("overrides", "env", "code", "message"),
    [
        (Overrides(context="staging"), {}, EXIT_NOT_FOUND, "no context 'staging'"),
        (Overrides(server="ftp://x"), {}, EXIT_USAGE, "is not an http:// or https:// URL"),
    ],
)
def test_an_unknown_context_or_a_bad_server_is_named(
    config: Path, overrides: Overrides, env: dict[str, str], code: int, message: str
) -> None:
    with pytest.raises(CliError) as failure:
        resolve(config, overrides, env)
    assert failure.value.exit_code == code and message in str(failure.value)


def test_without_any_server_it_says_how_to_set_one_up(tmp_path: Path) -> None:
    with pytest.raises(CliError) as failure:
        resolve(tmp_path / "none.yaml", Overrides(), {})
    assert failure.value.exit_code == EXIT_USAGE and "config set-context" in str(failure.value)


def test_a_missing_token_file_or_a_broken_file_is_a_usage_error(config: Path) -> None:
    (config.parent / "prod.token").unlink()
    with pytest.raises(CliError) as failure:
        resolve(config, Overrides(), {})
    assert failure.value.exit_code == EXIT_USAGE and "prod.token" in str(failure.value)
    config.write_text("contexts: {x: {server: 'http://a', colour: red}}\n")
    with pytest.raises(CliError) as failure:
        resolve(config, Overrides(), {})
    assert "contexts.x.colour" in str(failure.value)
    config.write_text("contexts: [unclosed\n")
    with pytest.raises(CliError) as failure:
        resolve(config, Overrides(), {})
    assert "not valid YAML" in str(failure.value)


def test_config_commands_write_the_file_privately_and_never_print_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("GL_WATCHDOG_CONFIG", raising=False)
    path = tmp_path / "xdg" / "gl-watchdog" / "config.yaml"
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(f"{SECRET}\n"))
    assert main(["config", "set-context", "prod", "--server", "https://wd.example.com", "--token-stdin"]) == 0
    assert main(["config", "set-context", "lab", "--server", "http://127.0.0.1:8081"]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and SECRET in path.read_text()
    assert main(["config", "current-context"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "prod"  # the first context became current
    assert main(["config", "use-context", "lab"]) == 0
    assert main(["config", "get-contexts", "-o", "table"]) == 0
    listing = capsys.readouterr().out
    assert SECRET not in listing and "token (in the file)" in listing
    assert [line.split()[:2] for line in listing.splitlines() if line.startswith("*")] == [["*", "lab"]]
    assert main(["config", "use-context", "nope"]) == EXIT_NOT_FOUND
    assert main(["config", "set-context", "new"]) == EXIT_USAGE  # a new context needs --server
    assert main(["config", "delete-context", "lab"]) == 0
    assert main(["config", "current-context"]) == EXIT_NOT_FOUND
    assert SECRET not in capsys.readouterr().err
