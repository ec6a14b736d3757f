"""A watchdog with its incident console over a real PostgreSQL database, seeded with incidents that
have a diagnosis, a plan and an approval prompt (the `console` fixtures of the console tests; holds
no tests of its own)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

from tests.conftest import free_port, serving
from tests.watchdog.conftest import ScriptedDiagnose, make_diagnosis, make_plan
from watchdog.assembly import Watchdog, build_watchdog, create_app
from watchdog.migrations import held_of
from watchdog.policy import Policy
from watchdog.records import Approval, Incident
from watchdog.settings import WatchdogSettings
from watchdog_sdk.outcomes import PlannedAction, Risk
from watchdog_sdk.registry import Registry

API_TOKEN = "console-api-token-0123456789"
# The console behind a proxy on 127.0.0.1: the group oncall approves, everyone else views.
PROXY: dict[str, Any] = {
    "proxy_auth_enabled": True,
    "trusted_proxies": ["127.0.0.1/32"],
    "proxy_role_map": {"oncall": "approver"},
}
GRAFANA = "https://grafana.example.com/d/gl-dag/stuck-dag"


@dataclass
class Console:
    wd: Watchdog
    http: httpx.AsyncClient

    async def incident(
        self,
        execution_id: str,
        *,
        dag_id: str = "dag-1",
        cause: str = "hung_node",
        prompt: bool = True,
        risk: Risk | None = None,
    ) -> tuple[Incident, Approval | None]:
        """An incident of `execution_id`, diagnosed (`cause`), planned (at `risk`: high needs two
        approvers), and with a pending prompt."""
        wd = self.wd
        opened = await wd.incidents.open_or_join(
            execution_id, dag_id=dag_id, source="alert", detection_source="prometheus"
        )
        diagnosis = make_diagnosis(execution_id, cause=cause).model_dump(mode="json")
        plan = make_plan(execution_id).model_copy(
            update={
                "risk": risk,
                "params": {"agent_id": "a1"},
                "actions": [
                    PlannedAction(
                        step="restart", description="restart the in-process agent worker", target="agent"
                    )
                ],
            }
        )
        incident = await wd.incidents.update(
            opened.incident.id, kind="diagnosed", actor="watchdog", diagnosis=diagnosis, plan=plan
        )
        if not prompt:
            return incident, None
        async with wd.store.transaction() as tx:
            approval = await wd.approvals.create_in(
                tx, incident_id=incident.id, plan=plan, summary=f"{cause} on {execution_id}"
            )
        return incident, approval

    async def hold(self, incident_id: int, suppressed_by: list[dict[str, Any]]) -> None:
        """Hold the incident as the suppression gate does: its `suppressed` entry and, in the same
        transaction, its row's `held_kind`/`held_by`."""
        kind, holding = held_of({"suppressed_by": suppressed_by})
        async with self.wd.store.transaction() as tx:
            await tx.add_audit(incident_id, "suppressed", data={"suppressed_by": suppressed_by})
            await tx.hold_incident(incident_id, kind, holding)

    async def form(
        self,
        path: str,
        data: dict[str, str],
        origin: str | None = "self",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """A form post as a browser on the console's page sends it (`origin`: "self", another, None;
        `headers`: e.g. the proxy's identity)."""
        headers = dict(headers or {})
        if origin is not None:
            headers["Origin"] = str(self.http.base_url).rstrip("/") if origin == "self" else origin
        headers["Content-Type"] = "application/x-www-form-urlencoded"  # an empty form's too
        return await self.http.post(path, content=urlencode(data), headers=headers)


def signed_in(user: str, groups: str = "oncall") -> dict[str, str]:
    """The headers oauth2-proxy (`--set-xauthrequest`: the default `proxy_headers`) adds for a user."""
    return {
        "X-Auth-Request-User": user,
        "X-Auth-Request-Email": f"{user}@example.com",
        "X-Auth-Request-Groups": groups,
    }


def console_settings(database_url: str, **overrides: Any) -> WatchdogSettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "api_tokens": [API_TOKEN],
        "orchestrator_url": f"http://127.0.0.1:{free_port()}",
        "orchestrator_public_url": "https://orchestrator.example.com",
        "grafana_url": GRAFANA,
        "approval_signing_key": "c" * 32,
        **overrides,
    }
    return WatchdogSettings(**values)


@contextlib.asynccontextmanager
async def running_console(
    settings: WatchdogSettings,
    *,
    diagnose: ScriptedDiagnose | None = None,
    registry: Registry | None = None,
    policy: Policy | None = None,
) -> AsyncIterator[Console]:
    """The watchdog of `settings` served on loopback (diagnoses scripted, no automatic response), with
    the playbook `registry` and `policy` given, else the shipped ones."""
    wd = await build_watchdog(
        settings, diagnose=diagnose or ScriptedDiagnose(), respond=False, registry=registry, policy=policy
    )
    try:
        async with serving(create_app(wd)) as http:
            yield Console(wd, http)
    finally:
        await wd.aclose(grace_seconds=2)
