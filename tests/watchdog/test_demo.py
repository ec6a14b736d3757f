"""`gl-watchdog demo --yes` as users run it (a subprocess), and the terminal-approval path in-process."""

from __future__ import annotations

import asyncio
import io
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from watchdog.demo import paused, read_answer, run_demo

pytestmark = pytest.mark.slow
GL_WATCHDOG = str(Path(sys.executable).with_name("gl-watchdog"))


def test_demo_yes_detects_diagnoses_remediates_and_verifies_within_a_minute(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [GL_WATCHDOG, "demo", "--yes"], capture_output=True, text=True, timeout=90, cwd=tmp_path, check=False
    )
    elapsed = time.monotonic() - started
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert elapsed < 60
    for expected in (
        "detected: run over its timeout",
        "diagnosed: external_api_slow at node scope2 (agent emissions.scope2)",
        "STEP  NAME",  # the diagnosis table
        "approval needed",
        "plan: run restart_agent(agent_id=emissions.scope2",
        "approved (--yes)",
        "incident resolved",
        "run completed; report node completed; provenance chain valid",
        "what was done      restart_agent.restart_worker (succeeded)",
        "result             OK",
    ):
        assert expected in out, f"missing {expected!r} in:\n{out}"
    order = [
        out.index(s) for s in ("detected:", "diagnosed:", "approval needed", "verifying", "incident resolved")
    ]
    assert order == sorted(order)
    for label in ("time to detect", "time to diagnose", "time to remediate"):
        assert re.search(rf"{label}\s+\d+\.\ds", out), label
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing left behind in the working directory


async def test_denied_at_the_terminal_escalates_and_fails() -> None:
    asked: list[str] = []

    async def say_no(question: str) -> bool:
        asked.append(question)
        return False

    out = io.StringIO()
    result = await run_demo(out, ask=say_no, deadline_seconds=50)
    assert asked == ["          Approve? [y/N] "]
    assert not result.ok and result.approved is False
    assert result.incident_status == "escalated"
    assert result.actions == []  # nothing was done
    assert "denied by terminal" in out.getvalue()
    assert "result             FAILED" in out.getvalue()
    assert "time to remediate  -" in out.getvalue()


# -- remediation demo ------------------------------------------------------------------------------------
# The interactive demo as a newcomer meets it: Ctrl-C at the prompt, a slow answer, the page link.
#
# `make demo` asks at the terminal. Ctrl-C there must end the demo (no thread left blocked in `input()`
# keeping the process alive), time spent reading the diagnosis must not count against the demo's
# deadline, and approving through the printed page link must carry the demo on instead of leaving the
# terminal prompt waiting.


async def test_read_answer_returns_the_typed_line() -> None:
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, b"y\n")
        assert await asyncio.wait_for(read_answer(read_fd), 5) == "y\n"
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def test_read_answer_returns_empty_at_end_of_input() -> None:
    read_fd, write_fd = os.pipe()
    os.close(write_fd)
    try:
        assert await asyncio.wait_for(read_answer(read_fd), 5) == ""
    finally:
        os.close(read_fd)


async def test_read_answer_is_cancelled_at_once_and_stops_watching_the_input() -> None:
    read_fd, write_fd = os.pipe()
    try:
        task = asyncio.create_task(read_answer(read_fd))
        await asyncio.sleep(0)  # let it start watching
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        # the reader was removed: nothing consumes what is typed afterwards
        os.write(write_fd, b"n\n")
        assert os.read(read_fd, 10) == b"n\n"
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def test_the_deadline_stops_while_the_human_thinks() -> None:
    async def slow_human(question: str) -> bool:
        await asyncio.sleep(0.3)  # longer than the whole deadline below
        return True

    async with asyncio.timeout(0.2) as deadline:
        assert await paused(deadline, slow_human)("Approve? ") is True
    # the machine's remaining time is kept, not lost nor extended for ever
    when = deadline.when()
    assert when is not None


async def test_the_deadline_still_applies_after_the_answer() -> None:
    async def quick_human(question: str) -> bool:
        return True

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2) as deadline:
            await paused(deadline, quick_human)("Approve? ")
            await asyncio.sleep(5)


@pytest.mark.slow
async def test_approving_on_the_page_carries_the_demo_on_while_the_terminal_asks() -> None:
    out = io.StringIO()
    asked = asyncio.Event()

    async def click_the_page_then_never_answer(question: str) -> bool:
        page = re.search(r"page: (\S+)", out.getvalue())
        assert page is not None
        url = urlsplit(page.group(1))
        token = parse_qs(url.query)["token"][0]
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(
                f"{url.scheme}://{url.netloc}{url.path}", data={"token": token, "decision": "approve"}
            )
        assert response.status_code == 303
        asked.set()
        await asyncio.Event().wait()  # the human never types anything at the terminal
        raise AssertionError("unreachable")

    result = await run_demo(out, ask=click_the_page_then_never_answer, deadline_seconds=50)
    text = out.getvalue()
    assert asked.is_set()
    assert result.ok, text
    assert "approved by link (not at the terminal)" in text
    assert result.actions == ["restart_agent.restart_worker (succeeded)"]
    assert re.search(r"time to remediate\s+\d+\.\ds", text)


@pytest.mark.slow
def test_ctrl_c_at_the_terminal_prompt_ends_the_demo_without_a_traceback(tmp_path: Path) -> None:
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: the demo, as `make demo` runs it, on a terminal
        os.chdir(tmp_path)
        os.execv(GL_WATCHDOG, [GL_WATCHDOG, "demo"])
    output = b""
    interrupted_at = None
    deadline = time.monotonic() + 60
    status = None
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    break
                output += chunk
            if interrupted_at is None and b"Approve? [y/N]" in output:
                os.kill(pid, signal.SIGINT)
                interrupted_at = time.monotonic()
        done = 0
        exit_by = time.monotonic() + 15  # bounded wait for a real process to exit
        while done == 0 and time.monotonic() < exit_by:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == 0:
                time.sleep(0.1)
        if done == 0:  # still alive: the bug this test is about
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the demo did not exit after Ctrl-C:\n{output.decode(errors='replace')}")
    finally:
        os.close(fd)
    text = output.decode(errors="replace")
    assert interrupted_at is not None, text
    assert os.waitstatus_to_exitcode(status) == 130, text
    assert "Traceback" not in text
    assert "interrupted" in text
    assert list(tmp_path.iterdir()) == []
