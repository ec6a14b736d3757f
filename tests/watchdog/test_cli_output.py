"""The CLI's output modes: JSON by default off a terminal, a table on one; YAML; colour only on a
terminal and never with NO_COLOR; `--version`; the same exit code for a usage error everywhere."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.text import Text

from watchdog.cli import main
from watchdog.cli.operate import decision_line
from watchdog.cli.output import Output, cell_text, table


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


DATA = {"items": [{"id": 1, "status": "open", "opened_at": "2026-12-06T08:00:00.123456+00:00"}]}


def rows(data: dict[str, list[dict[str, object]]]) -> object:
    return table(("ID", "STATUS", "OPENED"), ((i["id"], i["status"], i["opened_at"]) for i in data["items"]))


def test_without_a_terminal_the_default_is_json_and_with_one_a_table() -> None:
    piped = io.StringIO()
    Output.of(None, piped, io.StringIO()).emit(DATA, rows)
    assert json.loads(piped.getvalue()) == DATA
    terminal = Terminal()
    Output.of(None, terminal, io.StringIO()).emit(DATA, rows)
    header, row = terminal.getvalue().splitlines()[:2]
    assert "ID" in header and "STATUS" in header
    assert "2026-12-06 08:00:00" in row and ".123456" not in row


def test_yaml_and_an_explicit_table_off_a_terminal() -> None:
    out = io.StringIO()
    Output.of("yaml", out, io.StringIO()).emit(DATA, rows)
    assert yaml.safe_load(out.getvalue()) == DATA
    out = io.StringIO()
    Output.of("table", out, io.StringIO()).emit(DATA, rows)
    assert out.getvalue().split()[:3] == ["ID", "STATUS", "OPENED"] and "\x1b[" not in out.getvalue()


@pytest.mark.parametrize(("no_color", "coloured"), [("", True), ("1", False)])
def test_colour_only_on_a_terminal_and_never_with_no_color(
    no_color: str, coloured: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", no_color)
    monkeypatch.setenv("TERM", "xterm-256color")
    terminal = Terminal()
    Output.of("table", terminal, io.StringIO()).emit({}, lambda _: Text("alert", style="bold red"))
    assert ("31m" in terminal.getvalue()) is coloured  # red's SGR code (bold may stay: it is no colour)


def test_cells_show_nothing_as_a_dash_and_structures_as_json() -> None:
    assert [cell_text(v) for v in (None, "", {"b": 1, "a": 2}, 3)] == ["-", "-", '{"a": 2, "b": 1}', "3"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("gl-watchdog, version ")


@pytest.mark.parametrize(
    "argv",
    [
        ["incidents", "list", "-o", "xml"],
        ["no-such-command"],
        ["approve"],
        ["incidents", "show", "abc", "--server", "http://127.0.0.1:9"],
        ["--server", "http://127.0.0.1:9", "incidents", "list", "--status", "stuck"],
        ["--server", "http://127.0.0.1:9", "approve", "../etc"],
        ["--server", "http://127.0.0.1:9", "playbook", "run", "cancel"],
        ["--timeout", "0", "incidents", "list"],
    ],
)
def test_bad_usage_is_exit_2_with_one_line_and_no_traceback(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip()


def test_local_commands_say_so_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert all("(local)" in lines[name] for name in ("serve", "demo", "replay"))
    assert "(local)" not in lines["incidents"] and "(local)" not in lines["approve"]
    assert main(["policy", "--help"]) == 0
    assert "(local) validate a policy file" in capsys.readouterr().out


def test_shell_completion_comes_from_click() -> None:
    binary = str(Path(sys.executable).with_name("gl-watchdog"))
    env = {**os.environ, "_GL_WATCHDOG_COMPLETE": "bash_source"}
    script = subprocess.run([binary], env=env, capture_output=True, text=True, timeout=60)
    assert script.returncode == 0 and "complete -o nosort -F" in script.stdout
    env = {
        **os.environ,
        "_GL_WATCHDOG_COMPLETE": "bash_complete",
        "COMP_WORDS": "gl-watchdog inc",
        "COMP_CWORD": "1",
    }
    words = subprocess.run([binary], env=env, capture_output=True, text=True, timeout=60)
    assert words.stdout.split() == ["plain,incidents"]


def test_a_decision_says_who_decided_and_how_many_approvals_a_two_person_plan_still_needs() -> None:
    approval = {"id": "apr_1", "incident_id": 7, "state": "pending", "votes": ["token:alice"]}
    first = {"approval": approval, "approvals_required": 2, "actor": "token:alice"}
    assert decision_line(first) == (
        "approval apr_1: pending (incident 7) by token:alice; 1 of 2 approvals, another approver is needed"
    )
    second = {"approval": {**approval, "state": "approved"}, "approvals_required": 2, "actor": "proxy:bob"}
    assert decision_line(second) == "approval apr_1: approved (incident 7) by proxy:bob"
