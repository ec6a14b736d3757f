"""`gl-orchestrator serve` as the fault tests meet it: one replica the test stops with SIGTERM or SIGKILL
and starts again on the same port, store and Redis, with short lock and heartbeat TTLs so that a
takeover after SIGKILL happens within seconds. The DAG pauses in its middle node (`builtin.sleep`) so a
run can be caught running; its first node is checkpointed, so a resume skips it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port, wait_for_port

TOKEN = "fault-orchestrator-token-0123456789"
CLI = str(Path(sys.executable).with_name("gl-orchestrator"))
PAUSE_SECONDS = 4.0
DAG: dict[str, Any] = {
    "dag_id": "pausing",
    "nodes": {
        "load": {"agent_id": "builtin.echo"},
        "pause": {"agent_id": "builtin.sleep", "depends_on": ["load"], "params": {"seconds": PAUSE_SECONDS}},
        "report": {"agent_id": "builtin.echo", "depends_on": ["pause"]},
    },
}


class OrchestratorServe:
    """One orchestrator replica in a subprocess: `start()`, `stop(signal)`, `start()` again."""

    def __init__(self, workdir: Path, database_url: str, redis_url: str | None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "orchestrator.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GL_ORCHESTRATOR_")},
            "GL_ORCHESTRATOR_DATABASE_URL": database_url,
            "GL_ORCHESTRATOR_API_TOKENS": json.dumps([TOKEN]),
            "GL_ORCHESTRATOR_REPLICA_ID": "orchestrator-1",
            "GL_ORCHESTRATOR_SHUTDOWN_GRACE_SECONDS": "1",
            "GL_ORCHESTRATOR_LOCK_TTL_SECONDS": "3",
            "GL_ORCHESTRATOR_HEARTBEAT_TTL_SECONDS": "3",
        }
        if redis_url is not None:
            self.env["GL_ORCHESTRATOR_REDIS_URL"] = redis_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.AsyncClient(
            base_url=self.url + "/api/v1/orchestrator",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [CLI, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.workdir,
            )
        if not wait_for_port(self.port, timeout=30):
            raise AssertionError(f"gl-orchestrator did not start:\n{self.log()}")

    def stop(self, how: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(how)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    async def close(self) -> None:
        self.stop()
        await self.http.aclose()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    async def start_paused_run(self) -> str:
        """Register the DAG and start a run of it; once its `pause` node runs, its id."""
        assert (await self.http.post("/dags", json=DAG)).status_code in (200, 201)
        started = await self.http.post(
            "/dags/pausing/execute", json={"execution_options": {"checkpoint_enabled": True}}
        )
        assert started.status_code == 202, started.text
        execution_id: str = started.json()["execution_id"]
        await self.wait_for(
            execution_id, lambda record, trace: trace["node_traces"]["pause"]["status"] == "running"
        )
        return execution_id

    async def status(self, execution_id: str) -> str:
        status: str = (await self.http.get(f"/executions/{execution_id}")).json()["status"]
        return status

    async def wait_for(
        self, execution_id: str, done: Callable[[dict[str, Any], dict[str, Any]], bool], seconds: float = 30.0
    ) -> None:
        """Poll the run and its trace until `done(record, trace)` holds, within `seconds` (it is another
        process: polling is the only way to see it)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                record = (await self.http.get(f"/executions/{execution_id}")).json()
                trace = (await self.http.get(f"/executions/{execution_id}/trace")).json()
                if done(record, trace):
                    return
            except (httpx.TransportError, KeyError):
                pass  # restarting, or not answering yet
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"run {execution_id} did not get there within {seconds:g}s:\n{self.log()}"
                )
            await asyncio.sleep(0.1)
