"""The CLI as an operator uses it from a laptop: `gl-watchdog` run as a subprocess in another
directory with only a context file (no database, Redis or orchestrator credentials there), against a
`gl-watchdog serve` started by the test on real PostgreSQL and Redis, watching the real orchestrator
with a hung run. It diagnoses the run, lists and shows the incident, makes named tokens, and approves
the plan as a named approver (a viewer is refused with 403, exit 4; the audit names the approver); a
refused or revoked token, an unknown incident and an unreachable server give their exit codes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_for_port
from tests.watchdog.orchestrators import OrchestratorProcess

pytestmark = pytest.mark.slow
GL_WATCHDOG = str(Path(sys.executable).with_name("gl-watchdog"))
ADMIN_TOKEN = "cli-remote-bootstrap-token-0123456789"


@dataclass
class Served:
    url: str
    log: Path
    laptop: Path  # the CLI's working directory and HOME: a context file and nothing else

    def cli(self, *args: str, token_file: str = "admin.token") -> tuple[int, str, str]:
        """`gl-watchdog ARGS` as the operator runs it: only PATH, HOME and the context file."""
        env = {"PATH": os.environ["PATH"], "HOME": str(self.laptop), "NO_COLOR": "1", "LANG": "C.UTF-8"}
        config = self.laptop / ".config" / "gl-watchdog" / "config.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            f"current-context: test\ncontexts:\n  test: {{server: '{self.url}', token_file: {token_file}}}\n"
        )
        done = subprocess.run(
            [GL_WATCHDOG, *args], cwd=self.laptop, env=env, capture_output=True, text=True, timeout=240
        )
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode, done.stdout, done.stderr

    def token_file(self, name: str, token: str) -> str:
        path = self.laptop / ".config" / "gl-watchdog" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(token + "\n")
        return name


@pytest.fixture
def serve(
    orchestrator_service: OrchestratorProcess, postgres_url: str, redis_url: str, tmp_path: Path
) -> Iterator[Served]:
    server_dir, laptop = tmp_path / "server", tmp_path / "laptop"
    server_dir.mkdir()
    laptop.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GL_WATCHDOG_")}
    env.update(
        {
            "GL_WATCHDOG_DATABASE_URL": postgres_url,
            "GL_WATCHDOG_REDIS_URL": redis_url,
            "GL_WATCHDOG_ORCHESTRATOR_URL": orchestrator_service.url,
            "GL_WATCHDOG_ORCHESTRATOR_TOKEN": orchestrator_service.token,
            "GL_WATCHDOG_API_TOKENS": json.dumps([ADMIN_TOKEN]),
            "GL_WATCHDOG_APPROVAL_SIGNING_KEY": "s" * 32,
            "GL_WATCHDOG_MODE": "recommend",
            "GL_WATCHDOG_SWEEP_INTERVAL_SECONDS": "3600",
        }
    )
    log = server_dir / "serve.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [GL_WATCHDOG, "serve", "--port", str(port)],
            cwd=server_dir,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_for_port(port, timeout=60), log.read_text()
        served = Served(f"http://127.0.0.1:{port}", log, laptop)
        served.token_file("admin.token", ADMIN_TOKEN)
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert ADMIN_TOKEN not in log.read_text()


async def test_from_another_directory_the_cli_diagnoses_lists_shows_and_approves(
    serve: Served, orchestrator_service: OrchestratorProcess
) -> None:
    execution_id = orchestrator_service.start_hung_run()
    orchestrator_service.wait_over_timeout(execution_id)
    assert not list(serve.laptop.glob("*.db")) and not (serve.laptop / ".gl-watchdog").exists()

    code, out, err = await asyncio.to_thread(serve.cli, "diagnose", "--execution", execution_id, "-o", "json")
    assert code == 0, err
    incident = json.loads(out)
    incident_id = incident["id"]
    assert incident["execution_id"] == execution_id and incident["diagnosis"]["stuck_node_id"] == "wedged"
    assert [f["step"] for f in incident["diagnosis"]["findings"]][:8] == [1, 2, 3, 4, 5, 6, 7, 8]

    code, out, err = await asyncio.to_thread(serve.cli, "incidents", "list", "-o", "json")
    assert code == 0, err
    [listed] = json.loads(out)["items"]
    assert listed["id"] == incident_id and listed["status"] == "awaiting_approval"
    approval_id = listed["pending_approval"]
    assert approval_id

    code, out, err = await asyncio.to_thread(serve.cli, "incidents", "show", str(incident_id), "-o", "table")
    assert code == 0, err
    assert "wedged" in out and "approvals" in out and approval_id in out and "timeline" in out

    code, out, err = await asyncio.to_thread(
        serve.cli, "incidents", "list", "--status", "resolved", "-o", "table"
    )
    assert code == 0 and out.strip() == "no incidents", err

    # Named tokens, made by the bootstrap (admin) token from the CLI; a viewer may not approve.
    tokens = {}
    for name, role in (("alice", "approver"), ("victor", "viewer")):
        code, out, err = await asyncio.to_thread(
            serve.cli, "tokens", "create", name, "--role", role, "-o", "json"
        )
        assert code == 0, err
        tokens[name] = serve.token_file(f"{name}.token", json.loads(out)["token"])
    code, out, err = await asyncio.to_thread(serve.cli, "whoami", "-o", "json", token_file=tokens["victor"])
    assert code == 0 and json.loads(out)["actor"] == "token:victor" and json.loads(out)["role"] == "viewer", (
        err
    )
    code, out, err = await asyncio.to_thread(
        serve.cli, "approve", str(incident_id), token_file=tokens["victor"]
    )
    assert (
        code == 4 and "answered 403" in err and "role viewer cannot approve: approver or higher needed" in err
    )
    assert out == ""

    code, out, err = await asyncio.to_thread(
        serve.cli,
        "approve",
        str(incident_id),
        "--reason",
        "agent wedged",
        "-o",
        "table",
        token_file=tokens["alice"],
    )
    assert code == 0, err
    assert out.strip() == f"approval {approval_id}: approved (incident {incident_id}) by token:alice"
    code, out, err = await asyncio.to_thread(serve.cli, "deny", approval_id, token_file=tokens["alice"])
    assert code == 1 and "already" in err, err  # refused by its state: one line, exit 1

    code, out, err = await asyncio.to_thread(serve.cli, "incidents", "show", str(incident_id), "-o", "json")
    assert code == 0, err
    actors = {entry["actor"] for entry in json.loads(out)["audit"]}
    assert "token:alice" in actors and "token:victor" not in actors  # the audit names who approved

    code, out, err = await asyncio.to_thread(serve.cli, "tokens", "list", "-o", "table")
    assert code == 0 and "alice" in out and "approver" in out and "glw_" not in out, err
    code, _, err = await asyncio.to_thread(serve.cli, "tokens", "revoke", "victor")
    assert code == 0, err
    code, _, err = await asyncio.to_thread(serve.cli, "incidents", "list", token_file=tokens["victor"])
    assert code == 4 and "answered 401" in err, err


async def test_refusals_and_failures_exit_by_kind_with_one_line(serve: Served) -> None:
    wrong = serve.token_file("wrong.token", "glw_not-a-token")
    code, _, err = await asyncio.to_thread(serve.cli, "incidents", "list", token_file=wrong)
    assert code == 4 and "answered 401" in err and "glw_not-a-token" not in err, err
    code, _, err = await asyncio.to_thread(serve.cli, "incidents", "show", "424242")
    assert code == 3 and "404" in err, err
    code, _, err = await asyncio.to_thread(
        serve.cli, "--server", f"http://127.0.0.1:{free_port()}", "incidents", "list"
    )
    assert code == 5 and "unreachable" in err, err
    async with httpx.AsyncClient(base_url=serve.url) as http:
        assert (await http.get("/healthz")).status_code == 200  # the failures left it serving


async def test_a_high_risk_playbook_run_from_the_cli_is_proposed_approved_by_another_and_followed(
    serve: Served, orchestrator_service: OrchestratorProcess
) -> None:
    execution_id = orchestrator_service.start_hung_run()
    orchestrator_service.wait_over_timeout(execution_id)
    code, out, err = await asyncio.to_thread(
        serve.cli, "tokens", "create", "olga", "--role", "operator", "-o", "json"
    )
    assert code == 0, err
    olga = serve.token_file("olga.token", json.loads(out)["token"])
    code, out, err = await asyncio.to_thread(
        serve.cli, "diagnose", "--execution", execution_id, "--no-wait", "-o", "json", token_file=olga
    )
    assert code == 0, err
    incident_id = json.loads(out)["incident_id"]

    code, out, err = await asyncio.to_thread(
        serve.cli,
        "playbook",
        "propose",
        "cancel",
        "--incident",
        str(incident_id),
        "-o",
        "json",
        token_file=olga,
    )
    assert code == 0, err
    dry = json.loads(out)
    assert dry["state"] == "dry_run" and dry["precheck"]["ok"] is True
    assert orchestrator_service.http.get(f"/executions/{execution_id}").json()["status"] == "running"

    # cancel is high risk: two approvers. The operator's run is proposed with her vote; a second
    # person's approval runs it, in the service, and the events show it to the end.
    code, out, err = await asyncio.to_thread(
        serve.cli, "playbook", "run", "cancel", "--incident", str(incident_id), "-o", "json", token_file=olga
    )
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["accepted"]["state"] == "awaiting_approval"
    assert lines[0]["accepted"]["approval"]["votes"] == ["token:olga"]
    assert lines[-1]["result"]["status"] == "awaiting_approval"
    assert orchestrator_service.http.get(f"/executions/{execution_id}").json()["status"] == "running"
    code, out, err = await asyncio.to_thread(
        serve.cli, "tokens", "create", "alice", "--role", "approver", "-o", "json"
    )
    assert code == 0, err
    alice = serve.token_file("alice.token", json.loads(out)["token"])
    code, out, err = await asyncio.to_thread(
        serve.cli, "approve", str(incident_id), "-o", "table", token_file=alice
    )
    assert code == 0 and "approved" in out and "by token:alice" in out, err

    code, out, err = await asyncio.to_thread(serve.cli, "events", str(incident_id), "--follow", "-o", "json")
    assert code == 0, err  # until the incident is final, every event once, in order
    followed = [json.loads(line)["event"] for line in out.splitlines()]
    assert [e["seq"] for e in followed] == sorted({e["seq"] for e in followed})
    kinds = [e["kind"] for e in followed]
    assert "playbook_requested" in kinds and "approval_vote" in kinds and "verify" in kinds
    code, out, err = await asyncio.to_thread(serve.cli, "incidents", "show", str(incident_id), "-o", "json")
    assert code == 0 and json.loads(out)["status"] == "resolved", err
    assert orchestrator_service.http.get(f"/executions/{execution_id}").json()["status"] == "cancelled"

    code, out, err = await asyncio.to_thread(serve.cli, "events", str(incident_id), "-o", "table")
    assert code == 0 and "token:olga" in out and "playbook_requested" in out, err
    code, out, err = await asyncio.to_thread(serve.cli, "sweep", "-o", "json", token_file=olga)
    assert code == 0 and json.loads(out)["result"] == "ok", err
    code, out, err = await asyncio.to_thread(serve.cli, "policy", "show", "-o", "json")
    assert code == 0 and "cancel" in json.loads(out)["plugins"]["playbooks"], err
    code, out, err = await asyncio.to_thread(serve.cli, "modes", "-o", "json")
    assert code == 0 and json.loads(out)["mode"] == "recommend", err
