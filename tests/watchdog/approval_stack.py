"""The approval flow over the real orchestrator service: a stuck emissions run, its incident opened
through the watchdog API, and the Slack-format prompt its links come from (the `stack` fixture in
tests/watchdog/conftest.py; used by the web, browser and CLI-approve tests)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from orchestrator_core.emissions import emissions_dag, emissions_demo_input
from tests.orchestrator.service_harness import Harness
from watchdog.assembly import Watchdog

API_TOKEN = "watchdog-api-token-0123456789"


@dataclass
class Stack:
    orch: Harness
    wd: Watchdog
    url: str
    messages: list[dict[str, Any]]
    arrived: asyncio.Event
    token_file: Path
    execution_id: str = ""
    incident_id: int = 0

    def client(self, token: str | None = API_TOKEN) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10.0)

    async def stuck_incident(self) -> dict[str, Any]:
        """Start a stuck emissions run, open its incident via the API, and wait for the approval prompt."""
        dag = emissions_dag(dag_id="emissions-web", execution_timeout_seconds=1.0, log_interval_seconds=0.2)
        await self.orch.register(dag)
        self.execution_id = (await self.orch.execute("emissions-web", emissions_demo_input()))["execution_id"]
        async with asyncio.timeout(15):  # bounded polls of real processes
            while True:
                trace = await self.wd.clients.orchestrator.get_trace(self.execution_id)
                if trace.node_traces["scope2"].status == "running":
                    break
                await asyncio.sleep(0.05)
            async with self.client() as api:
                response = await api.post("/api/v1/incidents", json={"execution_id": self.execution_id})
                assert response.status_code == 201, response.text
                self.incident_id = response.json()["incident"]["id"]
            await self.arrived.wait()
        return self.messages[-1]


def links(message: dict[str, Any]) -> dict[str, str]:
    buttons = message["blocks"][-1]["elements"]
    return {b["text"]["text"].lower(): b["url"] for b in buttons}


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def approval_id_of(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[1]
