"""Credentials before lookups on the approval routes, and unauthenticated refusals at a bounded rate.

The real watchdog app on loopback (SQLite and PostgreSQL) with a prompt created in its store: an
anonymous caller, or one with a malformed link token, is refused without the store being read; a
link to a prompt that does not exist is refused exactly as a forged token is; every refusal is
counted, and the log lines and audit rows they cause are bounded per source (`AuthFailures`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import free_port
from tests.watchdog.conftest import WATCHDOG_TOKEN, FakeClock, ScriptedDiagnose, make_plan
from watchdog.assembly import Watchdog, build_watchdog, create_app
from watchdog.auth_failures import DEFAULT_BURST, AuthFailures
from watchdog.records import Approval
from watchdog.settings import WatchdogSettings
from watchdog.store import Tx

Client = TestClient[web.Request, web.Application]
AUTH = {"Authorization": f"Bearer {WATCHDOG_TOKEN}"}
WELL_FORMED_BUT_FORGED = "1900000000." + "A" * 43


class SteppedClock(FakeClock):
    """A FakeClock whose monotonic time only moves when told (the refill of the refusal buckets)."""

    def __init__(self) -> None:
        super().__init__()
        self.ticks = 1000.0

    def monotonic(self) -> float:
        return self.ticks


class Served:
    def __init__(self, wd: Watchdog, client: Client, clock: SteppedClock, approval: Approval) -> None:
        self.wd, self.client, self.clock, self.approval = wd, client, clock, approval
        self.reads = 0

    @property
    def token(self) -> str:
        return self.wd.approvals.token_for(self.approval)

    def count_reads(self) -> None:
        """From now on, count the store's transactions."""
        opened: Callable[[], AbstractAsyncContextManager[Tx]] = self.wd.store.transaction

        def counting() -> AbstractAsyncContextManager[Tx]:
            self.reads += 1
            return opened()

        self.wd.store.transaction = counting  # type: ignore[method-assign]

    async def rejected_rows(self) -> int:
        async with self.wd.store.transaction() as tx:
            audit = await tx.list_audit(self.approval.incident_id)
        return sum(1 for entry in audit if entry.kind == "approval_token_rejected")

    async def metric(self, reason: str) -> float:
        text = await (await self.client.get("/metrics")).text()
        prefix = f'gl_watchdog_auth_failures_total{{reason="{reason}"}} '
        found = [line for line in text.splitlines() if line.startswith(prefix)]
        return float(found[0].removeprefix(prefix)) if found else 0.0


@pytest.fixture
async def served(_no_pending_tasks: None, database_url: str) -> AsyncIterator[Served]:
    clock = SteppedClock()
    settings = WatchdogSettings(
        database_url=database_url,
        api_tokens=[WATCHDOG_TOKEN],
        orchestrator_url=f"http://127.0.0.1:{free_port()}",
        orchestrator_timeout_seconds=0.5,
        approval_signing_key="k" * 32,
    )
    wd = await build_watchdog(settings, clock=clock, diagnose=ScriptedDiagnose(), respond=False)
    client: Client = TestClient(TestServer(create_app(wd), host="127.0.0.1"))
    await client.start_server()
    try:
        opened = await wd.incidents.open_or_join(
            "exec-1", dag_id="dag-1", source="manual", detection_source="api"
        )
        async with wd.store.transaction() as tx:
            approval = await wd.approvals.create_in(
                tx, incident_id=opened.incident.id, plan=make_plan("exec-1"), summary="hung node"
            )
        yield Served(wd, client, clock, approval)
    finally:
        await client.close()
        await wd.aclose(grace_seconds=2)


def _shape(answer: dict[str, Any], approval_id: str) -> dict[str, Any]:
    return {key: str(value).replace(approval_id, "<id>") for key, value in answer.items()}


async def test_an_anonymous_caller_gets_401_for_any_prompt_without_a_store_read(served: Served) -> None:
    served.count_reads()
    answers = []
    for approval_id in (served.approval.id, "apr_doesnotexist0"):
        response = await served.client.get(f"/api/v1/approvals/{approval_id}")
        assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
        answers.append(_shape(await response.json(), approval_id))
        decided = await served.client.post(f"/api/v1/approvals/{approval_id}/approve")
        assert decided.status == 401
    assert answers[0] == answers[1]
    assert served.reads == 0


async def test_a_malformed_link_token_is_403_without_a_store_read(served: Served) -> None:
    served.count_reads()
    answers = []
    for approval_id in (served.approval.id, "apr_doesnotexist0"):
        for token in ("1.x", "a\x00b", served.token + "x"):
            response = await served.client.get(f"/api/v1/approvals/{approval_id}", params={"token": token})
            assert response.status == 403, await response.text()
            answers.append(_shape(await response.json(), approval_id))
        page = await served.client.get(f"/approvals/{approval_id}", params={"token": "1.x"})
        assert page.status == 403 and "Invalid link" in await page.text()
    assert all(answer == answers[0] for answer in answers)
    assert served.reads == 0


async def test_a_link_to_a_prompt_that_does_not_exist_is_refused_as_a_forged_token_is(served: Served) -> None:
    unknown = await served.client.get(
        "/api/v1/approvals/apr_doesnotexist0", params={"token": WELL_FORMED_BUT_FORGED}
    )
    forged = await served.client.get(
        f"/api/v1/approvals/{served.approval.id}", params={"token": WELL_FORMED_BUT_FORGED}
    )
    assert unknown.status == forged.status == 403
    assert _shape(await unknown.json(), "apr_doesnotexist0") == _shape(
        await forged.json(), served.approval.id
    )
    assert (await forged.json())["error"] == "invalid_token"


async def test_a_bearer_caller_is_told_that_a_prompt_does_not_exist(served: Served) -> None:
    response = await served.client.get("/api/v1/approvals/apr_doesnotexist0", headers=AUTH)
    assert response.status == 404 and (await response.json())["error"] == "not_found"


async def test_a_wrong_bearer_token_is_refused_even_beside_a_valid_link_token(served: Served) -> None:
    response = await served.client.get(
        f"/api/v1/approvals/{served.approval.id}",
        params={"token": served.token},
        headers={"Authorization": "Bearer wrong"},
    )
    assert response.status == 401


async def test_forged_tokens_are_all_counted_but_audited_at_a_bounded_rate(served: Served) -> None:
    tries = 3 * DEFAULT_BURST
    for _ in range(tries):
        response = await served.client.post(
            f"/api/v1/approvals/{served.approval.id}/approve", json={"token": WELL_FORMED_BUT_FORGED}
        )
        assert response.status == 403
    assert await served.rejected_rows() == DEFAULT_BURST
    assert await served.metric("forged_link_token") == tries
    served.clock.ticks += 60  # one source's bucket refills one token a minute
    await served.client.get(f"/approvals/{served.approval.id}", params={"token": WELL_FORMED_BUT_FORGED})
    assert await served.rejected_rows() == DEFAULT_BURST + 1
    assert (await served.wd.approvals.get(served.approval.id)).state == "pending"


async def test_bearer_refusals_are_all_counted_and_logged_at_a_bounded_rate(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="watchdog.auth_failures")
    tries = 2 * DEFAULT_BURST
    for _ in range(tries):
        response = await served.client.get("/api/v1/incidents", headers={"Authorization": "Bearer wrong"})
        assert response.status == 401
    assert await served.metric("invalid_token") == tries
    assert len(caplog.records) == DEFAULT_BURST
    served.clock.ticks += 60
    await served.client.get("/api/v1/incidents")
    assert await served.metric("missing_token") == 1
    assert f"({tries - DEFAULT_BURST} more from this source not logged)" in caplog.records[-1].getMessage()


async def test_the_signed_link_opens_the_page_and_its_form_decides_once(served: Served) -> None:
    page = await served.client.get(f"/approvals/{served.approval.id}", params={"token": served.token})
    assert page.status == 200 and 'id="approve"' in await page.text()
    decided = await served.client.post(
        f"/approvals/{served.approval.id}",
        data={"token": served.token, "decision": "deny"},
        allow_redirects=False,
    )
    assert decided.status == 303
    assert (await served.wd.approvals.get(served.approval.id)).state == "denied"
    again = await served.client.post(
        f"/approvals/{served.approval.id}", data={"token": served.token, "decision": "approve"}
    )
    assert again.status == 200 and "already denied" in await again.text()


async def test_a_tampered_form_is_refused_and_decides_nothing(served: Served) -> None:
    path = f"/approvals/{served.approval.id}"
    wrong_decision = await served.client.post(path, data={"token": served.token, "decision": "maybe"})
    assert wrong_decision.status == 422 and (await wrong_decision.json())["field"] == "decision"
    twice = await served.client.post(
        path,
        data=f"token={served.token}&decision=deny&decision=approve",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert twice.status == 422 and (await twice.json())["field"] == "decision"
    as_json = await served.client.post(path, json={"token": served.token, "decision": "deny"})
    assert as_json.status == 415
    assert (await served.wd.approvals.get(served.approval.id)).state == "pending"


async def test_an_actor_name_with_control_characters_is_refused(served: Served) -> None:
    response = await served.client.post(
        f"/api/v1/approvals/{served.approval.id}/deny", json={"actor": "bob\x00"}, headers=AUTH
    )
    assert response.status == 422 and (await response.json())["field"] == "actor"
    assert (await served.wd.approvals.get(served.approval.id)).state == "pending"


# -- the buckets alone --------------------------------------------------------------------------------


def test_each_source_has_its_own_bucket() -> None:
    clock = SteppedClock()
    counted: list[str] = []
    failures = AuthFailures(clock, counted.append, burst=2, per_minute=1)
    assert [failures.refused("a", "r", "d") for _ in range(3)] == [True, True, False]
    assert failures.refused("b", "r", "d") is True
    clock.ticks += 30
    assert failures.refused("a", "r", "d") is False
    clock.ticks += 30
    assert failures.refused("a", "r", "d") is True
    assert len(counted) == 6


def test_all_sources_together_are_bounded_too() -> None:
    failures = AuthFailures(SteppedClock(), burst=5, all_per_minute=3)
    assert [failures.refused(f"10.0.0.{n}", "r", "d") for n in range(5)] == [True, True, True, False, False]


def test_the_sources_remembered_are_bounded() -> None:
    failures = AuthFailures(SteppedClock(), burst=1, max_sources=2, all_per_minute=100)
    assert failures.refused("a", "r", "d") is True
    assert failures.refused("a", "r", "d") is False
    failures.refused("b", "r", "d")
    failures.refused("c", "r", "d")  # "a", refused longest ago, is forgotten
    assert failures.refused("a", "r", "d") is True
