"""Approval prompts: create them, sign their links, settle decisions and expiry atomically in the store.

The responder (`watchdog.responder`) creates a prompt when the plan needs a human; the prompt
goes out through the notifier (`watchdog.notifier`) with approve/deny links, is shown on the web page
(`watchdog.web`, `/approvals/{id}?token=...`), and can be answered through the API
(`POST /api/v1/approvals/{id}/approve|deny`, bearer token or link token) and the CLI
(`gl-watchdog approve|deny APPROVAL_ID`). Stored in the store's `approvals` table (`watchdog.store`).

Link tokens: `<expires_unix>.<signature>`, where the signature is HMAC-SHA256 under
`settings.approval_signing_key` over the approval id, the prompt's random nonce (kept only in the store)
and the expiry. A token is therefore bound to one prompt, cannot be forged without the key, and expires.
It is single-use because a decision is a conditional UPDATE (`state = 'pending' AND expires_at > now`):
of an approve, a deny, a double click and the expiry sweep, exactly one wins; every other gets
`ApprovalClosed` with the state that won. The loop then moves `approved` to `used` (again conditional)
right before it acts, so one approval never drives two remediations.

Who decides (docs/operations.md "Identity and roles"): the policy's approval rule of the plan
(`Policy.approval_for`: per playbook, else per risk level; by default high risk needs two distinct
approvers) names the least role, optionally groups, and how many distinct approvers. Under a rule an
approval needs an identity (`watchdog.identity`: a named token, or the authenticating proxy's user,
with or without the link); the link alone approves only plans without a rule, and denies any. With
two approvers required, the first approval is a vote (`votes`, audited `approval_vote`, "1 of 2";
the prompt stays pending) and a second, distinct identity settles it; the same identity twice is
refused (`SameApprover`). Each vote is a compare-and-set on `vote_count`, so concurrent votes never
both count as the first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from gl_common.clock import Clock
from watchdog.errors import ApprovalClosed, ApprovalNotFound, ApproverRefused, InvalidToken, SameApprover
from watchdog.identity import Identity, Role
from watchdog.migrations import approvals as approvals_table
from watchdog.plan import Plan
from watchdog.policy import ApprovalRule
from watchdog.records import Approval
from watchdog.store import Tx, WatchdogStore


class Decision(StrEnum):
    """What a human answered."""

    APPROVE = "approve"
    DENY = "deny"


DECIDED_STATE = {Decision.APPROVE: "approved", Decision.DENY: "denied"}
VOTE_ATTEMPTS = 5  # compare-and-set rounds of one vote against concurrent ones
# What `sign` makes: the expiry (unix seconds), a dot, and the unpadded base64url of a SHA-256 HMAC.
_TOKEN_SHAPE = re.compile(r"[0-9]{1,12}\.[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class Links:
    """Where a human answers a prompt. GET of any of them only shows the page; a click decides."""

    page: str
    approve: str
    deny: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign(key: bytes, approval_id: str, nonce: str, expires_unix: int) -> str:
    """The link token of one prompt."""
    message = f"{approval_id}\n{nonce}\n{expires_unix}".encode()
    return f"{expires_unix}.{_b64(hmac.new(key, message, hashlib.sha256).digest())}"


def well_formed(token: str) -> bool:
    """True when `token` has the shape of a link token (checked before any prompt is looked up)."""
    return _TOKEN_SHAPE.fullmatch(token) is not None


class ApprovalService:
    """Approval prompts over the store; one transaction per operation, each audited with its incident."""

    def __init__(
        self,
        store: WatchdogStore,
        signing_key: bytes,
        *,
        ttl_seconds: float,
        public_url: str,
        clock: Clock | None = None,
        rules: Callable[[Plan], ApprovalRule | None] | None = None,
    ) -> None:
        if len(signing_key) < 16:
            raise ValueError("approval signing key must be at least 16 bytes")
        self.store = store
        self._key = signing_key
        self.ttl = timedelta(seconds=ttl_seconds)
        self.public_url = public_url.rstrip("/")
        self.clock = clock or store.clock
        self._rules = rules

    # -- tokens and links

    def token_for(self, approval: Approval) -> str:
        """The signed link token of `approval`."""
        return sign(self._key, approval.id, approval.token_nonce, int(approval.expires_at.timestamp()))

    def links(self, approval: Approval) -> Links:
        """The page and approve/deny links carrying the token."""
        token = quote(self.token_for(approval))
        page = f"{self.public_url}/approvals/{quote(approval.id, safe='')}?token={token}"
        return Links(page=page, approve=f"{page}&decision=approve", deny=f"{page}&decision=deny")

    def check_token(self, approval: Approval, token: str, *, allow_expired: bool = False) -> None:
        """Raise InvalidToken unless `token` is this prompt's signed token; ApprovalClosed if expired.

        `allow_expired` is for viewing the page (its result stays readable); deciding never allows it.
        """
        try:
            expires_text, _ = token.split(".", 1)
            expires_unix = int(expires_text)
        except ValueError:
            raise InvalidToken("malformed approval token") from None
        expected = sign(self._key, approval.id, approval.token_nonce, expires_unix)
        if not hmac.compare_digest(expected.encode(), token.encode()):
            raise InvalidToken(
                "approval token does not match this prompt (forged, altered, or for another prompt)"
            )
        if not allow_expired and self.clock.now().timestamp() >= expires_unix:
            raise ApprovalClosed(
                "expired", f"approval {approval.id} expired at {approval.expires_at.isoformat()}"
            )

    # -- lifecycle

    async def create_in(
        self, tx: Tx, *, incident_id: int, plan: Plan, summary: str, actor: str = "watchdog"
    ) -> Approval:
        """Insert a pending prompt inside `tx` (audited as `approval_requested`)."""
        approval = await tx.insert_approval(
            approval_id=f"apr_{secrets.token_urlsafe(12)}",
            incident_id=incident_id,
            plan=plan,
            summary=summary,
            token_nonce=secrets.token_urlsafe(24),
            expires_at=self.clock.now() + self.ttl,
        )
        await tx.add_audit(
            incident_id,
            "approval_requested",
            actor=actor,
            data={
                "approval_id": approval.id,
                "expires_at": approval.expires_at.isoformat(),
                "plan": plan.model_dump(mode="json"),
            },
        )
        return approval

    async def get(self, approval_id: str) -> Approval:
        """The prompt, or ApprovalNotFound."""
        async with self.store.transaction() as tx:
            approval = await tx.get_approval(approval_id)
        if approval is None:
            raise ApprovalNotFound(f"no approval {approval_id!r}")
        return approval

    def rule_for(self, approval: Approval) -> ApprovalRule | None:
        """The policy's approval rule of the prompt's plan (None: its link alone may decide)."""
        return None if self._rules is None else self._rules(approval.plan)

    async def decide(
        self,
        approval_id: str,
        decision: Decision,
        *,
        actor: str | None = None,
        token: str | None = None,
        authenticated: bool = False,
        identity: Identity | None = None,
        reason: str | None = None,
    ) -> Approval:
        """Settle a prompt, or record one vote of a two-person approval; exactly one of concurrent
        decisions and the expiry wins.

        The decider is an `identity` (API, page behind the proxy; audited as `identity.actor`), an
        `authenticated` in-process caller (CLI with store access, the demo's terminal; audited as
        `actor`), or the holder of the link `token` alone (audited as `link`), which may approve only
        a plan without an approval rule. Raises ApprovalNotFound, InvalidToken, ApproverRefused,
        SameApprover, or ApprovalClosed naming the state that won.
        """
        approval = await self.get(approval_id)
        who = identity.actor if identity is not None else actor or "link"
        if token is not None:
            try:
                self.check_token(approval, token)
            except InvalidToken as exc:
                await self.record_rejected_token(approval, actor=who, reason=str(exc))
                raise
        elif identity is None and not authenticated:
            raise InvalidToken("an approval token or API authentication is required")
        rule = self.rule_for(approval)
        if decision is Decision.APPROVE and rule is not None:
            _check_approver(approval, rule, identity, trusted=authenticated)
        for _ in range(VOTE_ATTEMPTS):
            via = "token" if token else "auth"
            decided = await self._settle(approval_id, decision, who, rule, via=via, reason=reason)
            if decided is not None:
                return decided
        raise ApprovalClosed("pending", f"approval {approval_id} changed under concurrent votes; try again")

    async def _settle(
        self,
        approval_id: str,
        decision: Decision,
        who: str,
        rule: ApprovalRule | None,
        *,
        via: str,
        reason: str | None,
    ) -> Approval | None:
        """One compare-and-set of a decision (or vote); None when a concurrent vote came first."""
        async with self.store.transaction() as tx:
            current = await tx.get_approval(approval_id)
            votes = list(current.votes or []) if current is not None else []
            pending = current is not None and current.state == "pending"
            if decision is Decision.APPROVE and pending and _person(who) in map(_person, votes):
                raise SameApprover(
                    f"{who} already approved {approval_id}; a second, different approver is needed "
                    f"({len(votes)} of {rule.approvers_required if rule else 1})"
                )
            required = rule.approvers_required if rule is not None and decision is Decision.APPROVE else 1
            final = len(votes) + 1 >= required
            now = self.clock.now()
            values: dict[str, Any] = {"vote_count": len(votes) + 1}
            if decision is Decision.APPROVE:
                values["votes"] = [*votes, who]
            if final:
                values.update(state=DECIDED_STATE[decision], decided_at=now, decided_by=who)
            result = await tx.conn.execute(
                sa.update(approvals_table)
                .where(
                    approvals_table.c.id == approval_id,
                    approvals_table.c.state == "pending",
                    approvals_table.c.expires_at > now,
                    sa.func.coalesce(approvals_table.c.vote_count, 0) == len(votes),
                )
                .values(**values)
                .returning(*approvals_table.c)
            )
            row = result.first()
            if row is None:
                if current is not None and current.state == "pending" and current.expires_at > now:
                    return None  # a concurrent vote: read again
                raise _closed(approval_id, current)
            decided = Approval.model_validate(dict(row._mapping))
            data = {"approval_id": approval_id, "decision": decision.value, "via": via}
            if required > 1:
                data["votes"] = f"{len(votes) + 1} of {required}"
            if reason:
                data["reason"] = reason
            await tx.add_audit(
                decided.incident_id, "approval_decided" if final else "approval_vote", actor=who, data=data
            )
        return decided

    async def pending_of(self, incident_id: int) -> Approval | None:
        """The incident's pending prompt (the newest one), or None."""
        async with self.store.read() as tx:
            pending = await tx.list_approvals(states=["pending"], incident_id=incident_id)
        return pending[-1] if pending else None

    async def record_rejected_token(self, approval: Approval, *, actor: str, reason: str) -> None:
        """Audit a refused link token of `approval` (`approval_token_rejected`), in a transaction of
        its own so that the refusal is kept. The HTTP routes call it at a bounded rate per source."""
        async with self.store.transaction() as tx:
            await tx.add_audit(
                approval.incident_id,
                "approval_token_rejected",
                actor=actor,
                data={"approval_id": approval.id, "reason": reason},
            )

    async def expire_due(self, actor: str = "watchdog") -> list[Approval]:
        """Mark every pending prompt past its expiry `expired` (conditional, audited); returns them."""
        now = self.clock.now()
        async with self.store.transaction() as tx:
            result = await tx.conn.execute(
                sa.update(approvals_table)
                .where(approvals_table.c.state == "pending", approvals_table.c.expires_at <= now)
                .values(state="expired", decided_at=now, decided_by=actor)
                .returning(*approvals_table.c)
            )
            expired = [Approval.model_validate(dict(r._mapping)) for r in result]
            for approval in expired:
                await tx.add_audit(
                    approval.incident_id,
                    "approval_expired",
                    actor=actor,
                    data={"approval_id": approval.id, "expires_at": approval.expires_at.isoformat()},
                )
        return expired

    async def consume_in(self, tx: Tx, approval_id: str, actor: str = "watchdog") -> Approval | None:
        """Move an approved prompt to `used` (the loop, right before acting); None if it is not approved."""
        used = await tx.update_approval(approval_id, expected_state=["approved"], state="used")
        if used is not None:
            await tx.add_audit(
                used.incident_id, "approval_used", actor=actor, data={"approval_id": approval_id}
            )
        return used


def _person(actor: str) -> str:
    """Who stands behind a vote: the bootstrap token is one person whatever name it decides for."""
    return "bootstrap" if actor.startswith("bootstrap:") else actor


def _closed(approval_id: str, current: Approval | None) -> ApprovalClosed:
    state = current.state if current is not None else "missing"
    if state == "pending":  # not yet swept, but past its expiry
        state = "expired"
    said = "approved and acted on" if state == "used" else state
    return ApprovalClosed(state, f"approval {approval_id} is already {said}; nothing was changed")


def _check_approver(
    approval: Approval, rule: ApprovalRule, identity: Identity | None, *, trusted: bool
) -> None:
    """Raise ApproverRefused unless the decider satisfies `rule` (role, groups); a trusted in-process
    caller (CLI with store access) stands for an admin."""
    if identity is None:
        if trusted:
            return
        raise ApproverRefused(
            f"approval {approval.id} needs {rule.describe()}, signed in: an approval link alone is not "
            "enough; sign in through the proxy (or use a named API token) and approve again"
        )
    problem = approver_problem(rule, identity)
    if problem is not None:
        raise ApproverRefused(f"{problem} (approval {approval.id})")


def approver_problem(rule: ApprovalRule, identity: Identity) -> str | None:
    """Why `identity` may not approve under `rule` (role, groups), or None when it may."""
    if identity.role < Role(rule.role):
        return f"role {identity.role} cannot approve: {rule.role} or higher needed"
    if rule.groups and identity.role < Role.ADMIN and not set(rule.groups) & set(identity.groups):
        return f"{identity.actor} is not in {' or '.join(rule.groups)}: a member is needed"
    return None


def public_view(approval: Approval) -> dict[str, Any]:
    """The prompt as the API shows it (never the nonce)."""
    return {
        "id": approval.id,
        "incident_id": approval.incident_id,
        "state": approval.state,
        "summary": approval.summary,
        "plan": approval.plan.model_dump(mode="json"),
        "created_at": approval.created_at.isoformat(),
        "expires_at": approval.expires_at.isoformat(),
        "decided_at": approval.decided_at.isoformat() if approval.decided_at else None,
        "decided_by": approval.decided_by,
    }
