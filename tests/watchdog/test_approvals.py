"""Approval prompts on the real store (SQLite and PostgreSQL): signed, expiring, single-use decisions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.watchdog.conftest import FakeClock, make_plan
from watchdog.approvals import ApprovalService, Decision, public_view, sign
from watchdog.errors import ApprovalClosed, ApprovalNotFound, InvalidToken
from watchdog.incidents import IncidentService
from watchdog.records import Approval
from watchdog.store import WatchdogStore

KEY = b"k" * 32


@pytest.fixture
async def store(database_url: str, clock: FakeClock) -> AsyncIterator[WatchdogStore]:
    s = await WatchdogStore.open(database_url, clock=clock)
    yield s
    await s.close()


@pytest.fixture
def service(store: WatchdogStore, clock: FakeClock) -> ApprovalService:
    return ApprovalService(store, KEY, ttl_seconds=900, public_url="http://wd.example:8081/", clock=clock)


async def new_prompt(store: WatchdogStore, service: ApprovalService, execution_id: str = "e1") -> Approval:
    opened = await IncidentService(store).open_or_join(
        execution_id, dag_id="d", source="sweep", detection_source="api"
    )
    async with store.transaction() as tx:
        return await service.create_in(
            tx, incident_id=opened.incident.id, plan=make_plan(), summary="agent hung"
        )


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


async def test_prompt_is_pending_with_expiry_and_audited(
    store: WatchdogStore, service: ApprovalService, clock: FakeClock
) -> None:
    approval = await new_prompt(store, service)
    assert approval.state == "pending"
    assert approval.expires_at == clock.now() + timedelta(seconds=900)
    async with store.transaction() as tx:
        audit = await tx.list_audit(approval.incident_id)
    assert [a.kind for a in audit][-1] == "approval_requested"
    view = public_view(approval)
    assert "token_nonce" not in view and view["state"] == "pending"


async def test_links_carry_a_token_that_approves_once(store: WatchdogStore, service: ApprovalService) -> None:
    approval = await new_prompt(store, service)
    links = service.links(approval)
    assert links.page.startswith(f"http://wd.example:8081/approvals/{approval.id}?token=")
    assert links.approve.endswith("&decision=approve") and links.deny.endswith("&decision=deny")
    token = token_of(links.approve)
    decided = await service.decide(approval.id, Decision.APPROVE, actor="alice", token=token)
    assert decided.state == "approved" and decided.decided_by == "alice"
    with pytest.raises(ApprovalClosed) as reused:
        await service.decide(approval.id, Decision.APPROVE, actor="alice", token=token)
    assert reused.value.state == "approved"
    with pytest.raises(ApprovalClosed):
        await service.decide(approval.id, Decision.DENY, actor="mallory", token=token)
    assert (await service.get(approval.id)).state == "approved"


async def test_forged_and_foreign_tokens_are_refused(store: WatchdogStore, service: ApprovalService) -> None:
    first = await new_prompt(store, service, "e1")
    second = await new_prompt(store, service, "e2")
    expires = int(first.expires_at.timestamp())
    forged = [
        sign(b"not-the-key-at-all-0123", first.id, first.token_nonce, expires),  # wrong key
        sign(KEY, first.id, "guessed-nonce", expires),  # nonce not known outside the store
        service.token_for(second),  # another prompt's valid token
        f"{expires + 3600}.{service.token_for(first).split('.', 1)[1]}",  # expiry extended, signature kept
        "garbage",
        "",
    ]
    for token in forged:
        with pytest.raises(InvalidToken):
            await service.decide(first.id, Decision.APPROVE, actor="mallory", token=token)
    assert (await service.get(first.id)).state == "pending"
    async with store.transaction() as tx:
        kinds = [a.kind for a in await tx.list_audit(first.incident_id)]
    assert kinds.count("approval_token_rejected") == len(forged)


async def test_decision_needs_token_or_authentication(store: WatchdogStore, service: ApprovalService) -> None:
    approval = await new_prompt(store, service)
    with pytest.raises(InvalidToken):
        await service.decide(approval.id, Decision.APPROVE, actor="anon")
    denied = await service.decide(approval.id, Decision.DENY, actor="bob (api)", authenticated=True)
    assert denied.state == "denied"


async def test_unknown_approval(service: ApprovalService) -> None:
    with pytest.raises(ApprovalNotFound):
        await service.decide("apr_nope", Decision.APPROVE, actor="a", authenticated=True)
    with pytest.raises(ApprovalNotFound):
        await service.get("apr_nope")


async def test_expired_token_and_prompt_cannot_be_approved(
    store: WatchdogStore, service: ApprovalService, clock: FakeClock
) -> None:
    approval = await new_prompt(store, service)
    token = service.token_for(approval)
    clock.advance(901)
    with pytest.raises(ApprovalClosed) as by_token:
        await service.decide(approval.id, Decision.APPROVE, actor="late", token=token)
    assert by_token.value.state == "expired"
    with pytest.raises(ApprovalClosed) as by_auth:  # the store's expires_at condition, even without a token
        await service.decide(approval.id, Decision.APPROVE, actor="late", authenticated=True)
    assert by_auth.value.state == "expired"
    expired = await service.expire_due()
    assert [a.id for a in expired] == [approval.id]
    assert (await service.get(approval.id)).state == "expired"
    assert await service.expire_due() == []  # nothing expires twice


async def test_approve_racing_expiry_has_exactly_one_winner(
    database_url: str, clock: FakeClock, store: WatchdogStore, service: ApprovalService
) -> None:
    other_replica = await WatchdogStore.open(database_url, clock=clock)
    try:
        other = ApprovalService(other_replica, KEY, ttl_seconds=900, public_url="http://x", clock=clock)
        for i in range(5):
            approval = await new_prompt(store, service, f"race-{i}")
            clock.set(approval.expires_at)  # the exact instant: expiry sweep and approval both try
            results = await asyncio.gather(
                service.decide(approval.id, Decision.APPROVE, actor="alice", authenticated=True),
                other.expire_due(),
                return_exceptions=True,
            )
            final = (await service.get(approval.id)).state
            approved = not isinstance(results[0], BaseException)
            expired = not isinstance(results[1], BaseException) and any(
                a.id == approval.id for a in results[1]
            )
            assert approved + expired == 1, results
            assert final == ("approved" if approved else "expired")
            clock.set(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    finally:
        await other_replica.close()


async def test_double_click_from_two_replicas_has_one_winner(
    database_url: str, clock: FakeClock, store: WatchdogStore, service: ApprovalService
) -> None:
    other_replica = await WatchdogStore.open(database_url, clock=clock)
    try:
        other = ApprovalService(other_replica, KEY, ttl_seconds=900, public_url="http://x", clock=clock)
        approval = await new_prompt(store, service)
        token = service.token_for(approval)
        results = await asyncio.gather(
            *(
                (service if i % 2 else other).decide(
                    approval.id, Decision.APPROVE, actor=f"click{i}", token=token
                )
                for i in range(6)
            ),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, Approval)]
        assert len(winners) == 1
        assert all(isinstance(r, ApprovalClosed) for r in results if not isinstance(r, Approval))
    finally:
        await other_replica.close()


async def test_consume_moves_approved_to_used_once(store: WatchdogStore, service: ApprovalService) -> None:
    approval = await new_prompt(store, service)
    async with store.transaction() as tx:
        assert await service.consume_in(tx, approval.id) is None  # pending is not consumable
    await service.decide(approval.id, Decision.APPROVE, actor="a", authenticated=True)
    async with store.transaction() as tx:
        used = await service.consume_in(tx, approval.id)
    assert used is not None and used.state == "used"
    async with store.transaction() as tx:
        assert await service.consume_in(tx, approval.id) is None


def test_short_signing_key_is_refused(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        ApprovalService(None, b"short", ttl_seconds=1, public_url="http://x")  # type: ignore[arg-type]
