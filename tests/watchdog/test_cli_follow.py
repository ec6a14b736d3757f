"""Following an incident from the CLI (`watchdog.cli.follow`) against the real watchdog app served on
loopback (SQLite; its orchestrator unreachable): a run the bootstrap (admin) token may start alone
(restart_agent, medium risk) whose preconditions cannot pass is reported refused with exit 1, a
follow that outlives its timeout says how to follow on, and the clock and the pause between polls
are the test's (no sleeping)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.watchdog.served import TOKEN, ServedWatchdog, served_watchdog
from watchdog.cli import main
from watchdog.cli.follow import Follower, Pacer, run_ended
from watchdog.cli.output import Output
from watchdog.client import ApiClient
from watchdog.exit_codes import EXIT_FAILED, CliError

GL_WATCHDOG = str(Path(sys.executable).with_name("gl-watchdog"))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServedWatchdog]:
    with served_watchdog(f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}") as running:
        yield running


class SteppedClock:
    """A clock that moves only when the follower pauses."""

    def __init__(self) -> None:
        self.now, self.pauses = 0.0, 0

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.pauses += 1


def test_a_run_refused_by_its_preconditions_ends_the_follow_with_exit_1(
    server: ServedWatchdog, capsys: pytest.CaptureFixture[str]
) -> None:
    assert server.seeded is not None
    incident = str(server.seeded.incident_id)
    argv = [
        "--server",
        server.base_url,
        "--token",
        TOKEN,
        "playbook",
        "run",
        "restart_agent",
        "--param",
        "agent_id=a1",
        "--incident",
        incident,
    ]
    assert main([*argv, "-o", "json"]) == EXIT_FAILED
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    result = lines[-1]["result"]
    assert result["refused"].startswith("preconditions: ") and result["incident_id"] == int(incident)
    kinds = [line["event"]["kind"] for line in lines if "event" in line]
    assert kinds[0] == "playbook_requested" and "preconditions" in kinds
    assert TOKEN not in json.dumps(lines)


def test_a_follow_past_its_timeout_says_how_to_follow_on(server: ServedWatchdog) -> None:
    assert server.seeded is not None
    clock = SteppedClock()
    with ApiClient(server.base_url, TOKEN) as client:
        output = Output.of("json", io.StringIO(), io.StringIO())
        follower = Follower(
            client, output, server.seeded.incident_id, pacer=Pacer(2.0, clock.sleep, lambda: clock.now)
        )
        with pytest.raises(CliError) as ran_out:
            follower.until(run_ended, timeout=5.0)
    assert ran_out.value.exit_code == EXIT_FAILED and clock.pauses == 3
    assert f"follow on with `gl-watchdog events {server.seeded.incident_id} --follow`" in str(ran_out.value)
    assert follower.status == "open" and follower.refusal is None and follower.after is not None


def test_on_a_terminal_a_run_shows_its_events_as_lines_and_the_ending(server: ServedWatchdog) -> None:
    assert server.seeded is not None
    incident = str(server.seeded.incident_id)
    argv = [
        "--server",
        server.base_url,
        "playbook",
        "run",
        "restart_agent",
        "--param",
        "agent_id=a1",
        "--incident",
        incident,
    ]
    controller, terminal = pty.openpty()
    env = {"PATH": os.environ["PATH"], "HOME": str(Path.cwd()), "GL_WATCHDOG_TOKEN": TOKEN, "TERM": "xterm"}
    proc = subprocess.Popen([GL_WATCHDOG, *argv], stdin=terminal, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    screen = b""
    with contextlib.suppress(OSError):  # EIO once the CLI has exited and the terminal closed
        while chunk := os.read(controller, 4096):
            screen += chunk
    os.close(controller)
    assert proc.wait(timeout=60) == EXIT_FAILED
    text = screen.decode(errors="replace")
    assert "playbook_requested" in text and TOKEN not in text
    assert "refused (preconditions:" in text and not text.lstrip().startswith("{")  # lines, not JSON
