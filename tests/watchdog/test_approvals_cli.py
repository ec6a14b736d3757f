"""`gl-watchdog approve|deny APPROVAL_ID` (subprocesses, `--server` and `GL_WATCHDOG_TOKEN`) against the
running watchdog's API."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.watchdog.approval_stack import API_TOKEN, Stack, approval_id_of, links

GL_WATCHDOG = str(Path(sys.executable).with_name("gl-watchdog"))


async def cli(*args: str, token: str = API_TOKEN) -> tuple[int, str]:
    env = {**os.environ, "GL_WATCHDOG_TOKEN": token}
    proc = await asyncio.create_subprocess_exec(
        GL_WATCHDOG, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    return proc.returncode or 0, out.decode()


async def test_cli_approve_then_second_answer_is_refused(stack: Stack) -> None:
    message = await stack.stuck_incident()
    approval_id = approval_id_of(links(message)["approve"].split("?")[0])
    code, out = await cli("--server", stack.url, "approve", approval_id, "-o", "table")
    assert code == 0, out
    assert out.strip() == f"approval {approval_id}: approved (incident {stack.incident_id})"
    code, out = await cli("--server", stack.url, "deny", approval_id)
    assert code == 1 and ("already approved" in out or "already used" in out), out
    await stack.wd.jobs.wait_idle()
    assert (await stack.wd.incidents.get(stack.incident_id)).status == "resolved"


async def test_cli_deny_and_errors(stack: Stack) -> None:
    message = await stack.stuck_incident()
    approval_id = approval_id_of(links(message)["deny"].split("?")[0])
    code, out = await cli("--server", stack.url, "deny", approval_id, token="wrong-token")
    assert code == 4 and "answered 401" in out and "the token was refused" in out  # our credential: 4
    assert "wrong-token" not in out
    code, out = await cli("--server", stack.url, "approve", "apr_missing")
    assert code == 3 and "no approval" in out  # not found: exit 3
    code, out = await cli("--server", "http://127.0.0.1:9", "deny", approval_id)
    assert code == 5 and "unreachable" in out
    code, out = await cli("--server", stack.url, "deny", approval_id)
    assert code == 0 and "denied" in out
    await stack.wd.jobs.wait_idle()
    assert (await stack.wd.incidents.get(stack.incident_id)).status == "escalated"
    assert "Traceback" not in out
    await stack.wd.clients.orchestrator.cancel(stack.execution_id)
