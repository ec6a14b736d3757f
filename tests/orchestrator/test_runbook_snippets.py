"""The runbook's curl | python3 -c commands, copied verbatim from
`runbook/dag-execution-stuck.md`, run with bash against the real service on loopback. Only the URL
(`http://localhost:8080` -> the test server), `$ACCESS_TOKEN` (env) and the `<...>` placeholders are
substituted. What they print is checked."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from typing import Any

import pytest

from tests.conftest import missing_service
from tests.orchestrator.service_harness import (
    TOKEN,
    Gates,
    Harness,
)


@pytest.fixture(autouse=True)
def _needs_curl() -> None:
    """The runbook's commands use curl: skipped locally without it, a failure under CI."""
    if shutil.which("curl") is None:
        missing_service("curl not installed (the runbook's commands use it)")


# ---- verbatim from the runbook -------------------------------------------------------------------

STEP1_LIST_RUNNING = r"""
curl -s "http://localhost:8080/api/v1/orchestrator/executions?status=running" \
  -H "Authorization: Bearer $ACCESS_TOKEN" | python3 -c "
import sys, json
from datetime import datetime, timezone
data = json.load(sys.stdin)
now = datetime.now(timezone.utc)
for exec in data.get('items', []):
    started = datetime.fromisoformat(exec['started_at'].replace('Z', '+00:00'))
    duration = (now - started).total_seconds()
    print(f\"ID: {exec['execution_id']}\")
    print(f\"  DAG: {exec['dag_id']}\")
    print(f\"  Started: {exec['started_at']}\")
    print(f\"  Duration: {duration:.0f}s ({duration/60:.1f}m)\")
    print()
"
"""

STEP2_TRACE = r"""
curl -s "http://localhost:8080/api/v1/orchestrator/executions/<execution_id>/trace" \
  -H "Authorization: Bearer $ACCESS_TOKEN" | python3 -c "
import sys, json
data = json.load(sys.stdin)
print(f\"Execution: {data['execution_id']}\")
print(f\"Status: {data['status']}\")
print(f\"Topology levels: {data.get('topology_levels', [])}\")
print()
print('Node Status:')
for node_id, trace in data.get('node_traces', {}).items():
    status = trace.get('status', 'unknown')
    duration = trace.get('duration_ms', 0)
    attempts = trace.get('attempt_count', 0)
    error = trace.get('error', '')
    marker = '  ** STUCK **' if status == 'running' else ''
    print(f\"  {node_id}: {status} (duration={duration:.0f}ms, attempts={attempts}){marker}\")
    if error:
        print(f\"    Error: {error}\")
"
"""

STEP3_BOTTLENECK = r"""
curl -s "http://localhost:8080/api/v1/orchestrator/executions/<execution_id>/trace" \
  -H "Authorization: Bearer $ACCESS_TOKEN" | python3 -c "
import sys, json
data = json.load(sys.stdin)
for node_id, trace in data.get('node_traces', {}).items():
    if trace.get('status') == 'running':
        print(f\"STUCK NODE: {node_id}\")
        print(f\"  Agent ID: {trace.get('agent_id', 'N/A')}\")
        print(f\"  Started at: {trace.get('started_at', 'N/A')}\")
        print(f\"  Attempt count: {trace.get('attempt_count', 0)}\")
        print(f\"  Input hash: {trace.get('input_hash', 'N/A')}\")
"
"""

STEP5_CONTENTION = r"""
curl -s "http://localhost:8080/api/v1/orchestrator/metrics" \
  -H "Authorization: Bearer $ACCESS_TOKEN" | python3 -c "
import sys, json
data = json.load(sys.stdin)
print(f\"Active executions: {data.get('active_executions', 'N/A')}\")
print(f\"Max concurrent: {data.get('max_concurrent_executions', 'N/A')}\")
print(f\"Queued executions: {data.get('queued_executions', 'N/A')}\")
"
"""

STEP8_CHECKPOINTS = r"""
curl -s "http://localhost:8080/api/v1/orchestrator/checkpoints/<execution_id>" \
  -H "Authorization: Bearer $ACCESS_TOKEN" | python3 -c "
import sys, json
data = json.load(sys.stdin)
print(f\"Checkpoints for execution: {len(data.get('checkpoints', []))}\")
for cp in data.get('checkpoints', []):
    print(f\"  Node: {cp['node_id']} | Status: {cp['status']} | Created: {cp['created_at']}\")
"
"""

OPTION1_CANCEL = r"""
curl -X POST "http://localhost:8080/api/v1/orchestrator/executions/<execution_id>/cancel" \
  -H "Authorization: Bearer $ACCESS_TOKEN" \
  -H "Content-Type: application/json" | python3 -m json.tool
"""

OPTION1_EXECUTE = r"""
curl -X POST "http://localhost:8080/api/v1/orchestrator/dags/<dag_id>/execute" \
  -H "Authorization: Bearer $ACCESS_TOKEN" \
  -H "Content-Type: application/json" \
  -d '{
    "input_data": <original_input_data>,
    "execution_options": {
      "checkpoint_enabled": true,
      "deterministic_mode": true
    }
  }' | python3 -m json.tool
"""

OPTION2_RESUME = r"""
curl -X POST "http://localhost:8080/api/v1/orchestrator/executions/<execution_id>/resume" \
  -H "Authorization: Bearer $ACCESS_TOKEN" \
  -H "Content-Type: application/json" | python3 -c "
import sys, json
data = json.load(sys.stdin)
print(f\"Execution ID: {data.get('execution_id')}\")
print(f\"Status: {data.get('status')}\")
print(f\"Nodes skipped (from checkpoint): {data.get('nodes_skipped', [])}\")
print(f\"Nodes to execute: {data.get('nodes_remaining', [])}\")
"
"""

OPTION3_TRACE = r"""
curl -s "http://localhost:8080/api/v1/orchestrator/executions/<execution_id>/trace" \
  -H "Authorization: Bearer $ACCESS_TOKEN" | python3 -m json.tool
"""

OPTION6_TIMEOUT = r"""
curl -X PUT "http://localhost:8080/api/v1/orchestrator/dags/<dag_id>" \
  -H "Authorization: Bearer $ACCESS_TOKEN" \
  -H "Content-Type: application/json" \
  -d '{
    "nodes": {
      "<node_id>": {
        "timeout_policy": {
          "timeout_seconds": 300,
          "on_timeout": "fail"
        }
      }
    }
  }' | python3 -m json.tool
"""

VERIFY1_STATUS = r"""
curl -s "http://localhost:8080/api/v1/orchestrator/executions/<execution_id>" \
  -H "Authorization: Bearer $ACCESS_TOKEN" | python3 -c "
import sys, json
data = json.load(sys.stdin)
print(f\"Status: {data.get('status')}\")
print(f\"Completed at: {data.get('completed_at', 'N/A')}\")
print(f\"Error: {data.get('error', 'None')}\")
"
"""

VERIFY2_RUNNING = r"""
curl -s "http://localhost:8080/api/v1/orchestrator/executions?status=running" \
  -H "Authorization: Bearer $ACCESS_TOKEN" | python3 -c "
import sys, json
data = json.load(sys.stdin)
count = len(data.get('items', []))
print(f\"Running executions: {count}\")
"
"""

VERIFY3_PROVENANCE = r"""
curl -s "http://localhost:8080/api/v1/orchestrator/executions/<execution_id>/provenance" \
  -H "Authorization: Bearer $ACCESS_TOKEN" | python3 -c "
import sys, json
data = json.load(sys.stdin)
print(f\"Chain valid: {data.get('chain_valid', 'N/A')}\")
"
"""

# --------------------------------------------------------------------------------------------------

DAG = {
    "dag_id": "emissions-report",
    "execution_timeout_seconds": 300,
    "nodes": {
        "intake": {"agent_id": "builtin.echo"},
        "scope2": {"agent_id": "test.gate", "depends_on": ["intake"], "params": {"gate": "scope2"}},
    },
}
INPUT = {"company": "acme", "year": 2025}


async def run_snippet(h: Harness, snippet: str, **placeholders: str) -> str:
    command = snippet.replace("http://localhost:8080", h.base_url)
    for name, value in placeholders.items():
        command = command.replace(f"<{name}>", value)
    assert not re.search(r"<(execution_id|dag_id|node_id|original_input_data)>", command)
    env = {
        **os.environ,
        "ACCESS_TOKEN": TOKEN,
        # `python3` in the snippets is this interpreter (only the standard library is used).
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    }
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-o",
        "pipefail",
        "-c",
        command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(30):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, (
        f"snippet failed ({process.returncode}):\n{stdout.decode()}\n{stderr.decode()}"
    )
    return stdout.decode()


async def stuck_run(h: Harness, gates: Gates) -> dict[str, Any]:
    await h.register(DAG)
    run = await h.execute("emissions-report", INPUT)
    await gates.wait_started(1)
    return run


async def test_step1_lists_the_running_execution(h: Harness, gates: Gates) -> None:
    run = await stuck_run(h, gates)
    out = await run_snippet(h, STEP1_LIST_RUNNING)
    assert f"ID: {run['execution_id']}\n  DAG: emissions-report\n  Started: " in out
    assert re.search(r"  Duration: \d+s \(\d+\.\dm\)", out)
    gates.open("scope2")


async def test_steps_2_and_3_show_the_stuck_node(h: Harness, gates: Gates) -> None:
    run = await stuck_run(h, gates)
    out = await run_snippet(h, STEP2_TRACE, execution_id=run["execution_id"])
    assert f"Execution: {run['execution_id']}\nStatus: running\n" in out
    assert "Topology levels: [['intake'], ['scope2']]" in out
    assert re.search(r"  intake: completed \(duration=\d+ms, attempts=1\)\n", out)
    assert re.search(r"  scope2: running \(duration=\d+ms, attempts=1\)  \*\* STUCK \*\*", out)
    out = await run_snippet(h, STEP3_BOTTLENECK, execution_id=run["execution_id"])
    assert out.startswith("STUCK NODE: scope2\n  Agent ID: test.gate\n  Started at: ")
    assert "  Attempt count: 1\n" in out
    assert re.search(r"  Input hash: [0-9a-f]{16,}", out)
    gates.open("scope2")


async def test_step5_and_step8_contention_and_checkpoints(h: Harness, gates: Gates) -> None:
    run = await stuck_run(h, gates)
    out = await run_snippet(h, STEP5_CONTENTION)
    assert out == "Active executions: 1\nMax concurrent: 50\nQueued executions: 0\n"
    out = await run_snippet(h, STEP8_CHECKPOINTS, execution_id=run["execution_id"])
    assert out.startswith("Checkpoints for execution: 1\n  Node: intake | Status: completed | Created: ")
    gates.open("scope2")


async def test_option1_cancel_and_start_a_new_execution(h: Harness, gates: Gates) -> None:
    run = await stuck_run(h, gates)
    out = await run_snippet(h, OPTION1_CANCEL, execution_id=run["execution_id"])
    cancelled = json.loads(out)
    assert cancelled["execution_id"] == run["execution_id"] and cancelled["status"] == "cancelled"
    out = await run_snippet(
        h, OPTION1_EXECUTE, dag_id="emissions-report", original_input_data=json.dumps(INPUT)
    )
    fresh = json.loads(out)
    assert fresh["execution_id"] != run["execution_id"]
    assert fresh["input_data"] == INPUT and fresh["execution_options"]["deterministic_mode"] is True
    await gates.wait_started(2)
    gates.open("scope2")
    await h.wait_status(fresh["execution_id"], "completed")


async def test_option2_resume_then_verification(h: Harness, gates: Gates) -> None:
    run = await stuck_run(h, gates)
    execution_id = run["execution_id"]
    await h.api("POST", f"/executions/{execution_id}/cancel")
    gates.open("scope2")
    out = await run_snippet(h, OPTION2_RESUME, execution_id=execution_id)
    assert out.startswith(f"Execution ID: {execution_id}\nStatus: ")
    assert "Nodes skipped (from checkpoint): ['intake']\nNodes to execute: ['scope2']\n" in out
    await h.wait_status(execution_id, "completed")

    out = await run_snippet(h, VERIFY1_STATUS, execution_id=execution_id)
    assert re.fullmatch(r"Status: completed\nCompleted at: \S+Z\nError: None\n", out)
    out = await run_snippet(h, VERIFY2_RUNNING)
    assert out == "Running executions: 0\n"
    out = await run_snippet(h, VERIFY3_PROVENANCE, execution_id=execution_id)
    assert out == "Chain valid: True\n"


async def test_option3_trace_and_option6_timeout_update(h: Harness, gates: Gates) -> None:
    run = await stuck_run(h, gates)
    trace = json.loads(await run_snippet(h, OPTION3_TRACE, execution_id=run["execution_id"]))
    assert trace["node_traces"]["scope2"]["status"] == "running"
    dag = json.loads(await run_snippet(h, OPTION6_TIMEOUT, dag_id="emissions-report", node_id="scope2"))
    assert dag["version"] == 2
    assert dag["nodes"]["scope2"]["timeout_policy"] == {"timeout_seconds": 300, "on_timeout": "fail"}
    gates.open("scope2")
