"""The remediation side's rows inside one store transaction: approval prompts, actions, rate events.

Where it sits: `watchdog.store.Tx` (one open transaction of `WatchdogStore`) takes these queries from
`RemediationRows`, its base, so `async with store.transaction() as tx` offers them beside the incident,
audit and delivery queries; the callers are `watchdog.approvals` (prompts), `watchdog.ledger` and the
remediation (actions) and `watchdog.limits` (rate events). The same rules as the rest of the store: a
conflict on a unique key is answered with None, the clock is the transaction's, and the `Plan` of an
approval is dumped here on the way in and parsed into its model on the way out.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from gl_common.clock import Clock
from watchdog.migrations import actions, approvals, rate_events
from watchdog.plan import Plan
from watchdog.records import Action, Approval

LIMITS_LOCK_KEY: Final = 0x676C5744  # "glWD": the PostgreSQL advisory lock around limit checks


def model_of(model: type[Any], row: sa.Row[Any] | None) -> Any:
    """`row` as `model`, or None when there is no row."""
    return None if row is None else model.model_validate(dict(row._mapping))


class RemediationRows:
    """Approval prompts, actions and rate events, on the open transaction's connection."""

    conn: AsyncConnection
    clock: Clock

    def _insert(self, table: sa.Table) -> Any:
        if self.conn.dialect.name == "postgresql":
            return pg_dialect.insert(table)
        return sqlite_dialect.insert(table)

    # -- approvals

    async def insert_approval(
        self,
        *,
        approval_id: str,
        incident_id: int,
        plan: Plan,
        summary: str,
        token_nonce: str,
        expires_at: datetime,
    ) -> Approval:
        """Record a new pending approval prompt."""
        result = await self.conn.execute(
            approvals.insert()
            .values(
                id=approval_id,
                incident_id=incident_id,
                plan=plan.model_dump(mode="json"),
                summary=summary,
                state="pending",
                token_nonce=token_nonce,
                created_at=self.clock.now(),
                expires_at=expires_at,
            )
            .returning(*approvals.c)
        )
        approval: Approval = model_of(Approval, result.first())
        return approval

    async def get_approval(self, approval_id: str) -> Approval | None:
        """The approval prompt with this id, or None."""
        result = await self.conn.execute(sa.select(approvals).where(approvals.c.id == approval_id))
        approval: Approval | None = model_of(Approval, result.first())
        return approval

    async def list_approvals(
        self, *, states: Collection[str] | None = None, incident_id: int | None = None
    ) -> list[Approval]:
        """Approval prompts, oldest first, optionally filtered."""
        stmt = sa.select(approvals).order_by(approvals.c.created_at, approvals.c.id)
        if states is not None:
            stmt = stmt.where(approvals.c.state.in_(list(states)))
        if incident_id is not None:
            stmt = stmt.where(approvals.c.incident_id == incident_id)
        result = await self.conn.execute(stmt)
        return [Approval.model_validate(dict(r._mapping)) for r in result]

    async def update_approval(
        self, approval_id: str, *, expected_state: Collection[str] | None = None, **values: Any
    ) -> Approval | None:
        """Compare-and-set on an approval: None when it is missing or not in `expected_state`."""
        stmt = sa.update(approvals).where(approvals.c.id == approval_id)
        if expected_state is not None:
            stmt = stmt.where(approvals.c.state.in_(list(expected_state)))
        result = await self.conn.execute(stmt.values(**values).returning(*approvals.c))
        approval: Approval | None = model_of(Approval, result.first())
        return approval

    # -- actions

    async def insert_action(
        self,
        *,
        incident_id: int,
        playbook: str,
        step: str,
        idempotency_key: str,
        params: Mapping[str, Any] | None = None,
        approval_id: str | None = None,
    ) -> Action | None:
        """Record an action as started; None when `idempotency_key` was already recorded."""
        stmt = (
            self._insert(actions)
            .values(
                incident_id=incident_id,
                approval_id=approval_id,
                playbook=playbook,
                step=step,
                idempotency_key=idempotency_key,
                params=None if params is None else dict(params),
                state="started",
                started_at=self.clock.now(),
            )
            .on_conflict_do_nothing()
            .returning(*actions.c)
        )
        result = await self.conn.execute(stmt)
        action: Action | None = model_of(Action, result.first())
        return action

    async def get_action(self, idempotency_key: str) -> Action | None:
        """The action recorded under `idempotency_key`, or None."""
        result = await self.conn.execute(
            sa.select(actions).where(actions.c.idempotency_key == idempotency_key)
        )
        action: Action | None = model_of(Action, result.first())
        return action

    async def list_actions(
        self, *, incident_id: int | None = None, states: Collection[str] | None = None
    ) -> list[Action]:
        """Actions, oldest first, optionally filtered."""
        stmt = sa.select(actions).order_by(actions.c.id)
        if incident_id is not None:
            stmt = stmt.where(actions.c.incident_id == incident_id)
        if states is not None:
            stmt = stmt.where(actions.c.state.in_(list(states)))
        result = await self.conn.execute(stmt)
        return [Action.model_validate(dict(r._mapping)) for r in result]

    async def finish_action(
        self, action_id: int, state: str, result: Mapping[str, Any] | None = None
    ) -> Action | None:
        """Move a started action to its final state; None when it was not in `started`."""
        res = await self.conn.execute(
            sa.update(actions)
            .where(actions.c.id == action_id, actions.c.state == "started")
            .values(
                state=state, result=None if result is None else dict(result), finished_at=self.clock.now()
            )
            .returning(*actions.c)
        )
        action: Action | None = model_of(Action, res.first())
        return action

    # -- rate events

    async def serialize_limits(self) -> None:
        """Hold the limits lock until this transaction ends, so that two replicas checking and counting
        rate events cannot both pass a limit. PostgreSQL: a transaction-level advisory lock; SQLite:
        nothing to do, `BEGIN IMMEDIATE` already holds the database's write lock."""
        if self.conn.dialect.name == "postgresql":
            await self.conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LIMITS_LOCK_KEY})

    async def add_rate_event(self, kind: str, key: str, at: datetime | None = None) -> None:
        """Record one rate-limited event (e.g. kind="restart_agent", key=agent id)."""
        await self.conn.execute(rate_events.insert().values(kind=kind, key=key, at=at or self.clock.now()))

    async def count_rate_events(self, kind: str, key: str, since: datetime) -> int:
        """How many events of (kind, key) happened at or after `since`."""
        result = await self.conn.execute(
            sa.select(sa.func.count())
            .select_from(rate_events)
            .where(rate_events.c.kind == kind, rate_events.c.key == key, rate_events.c.at >= since)
        )
        return int(result.scalar_one())

    async def prune_rate_events(self, before: datetime) -> int:
        """Delete events older than `before`; returns how many."""
        result = await self.conn.execute(sa.delete(rate_events).where(rate_events.c.at < before))
        return int(result.rowcount)
