"""What a remediation is set up with: a playbook's context (clients, the policy's bounds, the clock, a
ledger), its typed params, a dry run; a run asked for by hand (`ManualRun`) and what its caller sees
of it as it goes (`RemediationProgress`).

Used by the remediation state machine (`watchdog.remediation`), which builds each playbook's context
here, and by `gl-watchdog playbook run` (`watchdog.remediation_cli`), which previews a playbook
without a store (`--dry-run`) and runs one by hand. `PlaybookContexts` is built by the composition
root (`watchdog.assembly`) from the clients and the policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from gl_common.clock import Clock
from watchdog.policy import Policy
from watchdog_sdk.clients import Clients
from watchdog_sdk.errors import PlaybookError
from watchdog_sdk.ledger import ActionLedger, InMemoryLedger
from watchdog_sdk.outcomes import ApplyResult, PlannedAction, Precheck, VerifyResult
from watchdog_sdk.playbook import Playbook, PlaybookContext, PlaybookLimits


@dataclass(frozen=True)
class ManualRun:
    """A playbook run asked for by a person rather than planned from a diagnosis.

    `params` are the playbook's params in their JSON form (its params model validates them).
    `interrupted_by` names what may interrupt the run (the CLI's Ctrl-C): a run interrupted so is
    escalated rather than left `remediating` for a restart to resume, since no service owns it.
    """

    playbook: str
    execution_id: str
    params: dict[str, Any]
    actor: str = "cli"
    rationale: str = "run by hand"
    interrupted_by: str | None = None


class RemediationProgress:
    """What a caller sees of a run as it goes (the CLI prints it); here every event is ignored."""

    def checked(
        self, playbook: Playbook[Any], precheck: Precheck, actions: tuple[PlannedAction, ...]
    ) -> None:
        """Preconditions checked, and the actions the playbook would take."""

    def refused(self, reason: str) -> None:
        """The budgets or the circuit breaker refused the run."""

    def applied(self, result: ApplyResult) -> None:
        """The playbook's steps ran (or stopped at the first that failed)."""

    def verifying(self) -> None:
        """Applied; the post-resolution checks start (they may wait for the run to finish)."""

    def verified(self, result: VerifyResult) -> None:
        """The checks are done."""


@dataclass(frozen=True)
class PlaybookContexts:
    """Builds the context a playbook acts in: the clients, the policy's bounds, the clock."""

    clients: Clients
    policy: Policy
    clock: Clock
    poll_interval_seconds: float = 1.0

    def build(
        self, incident_id: int, execution_id: str, playbook: str, ledger: ActionLedger
    ) -> PlaybookContext:
        """The context of `playbook` acting on `execution_id` for incident `incident_id`."""
        limits = self.policy.limits
        ready = float(self.policy.playbook(playbook).params.get("ready_timeout_seconds", 120.0))
        return PlaybookContext(
            incident_id=incident_id,
            execution_id=execution_id,
            clients=self.clients,
            ledger=ledger,
            limits=PlaybookLimits(
                max_node_timeout_seconds=limits.max_node_timeout_seconds,
                lock_grace_seconds=float(limits.lock_grace_seconds),
                ready_timeout_seconds=ready,
                poll_interval_seconds=self.poll_interval_seconds,
            ),
            clock=self.clock,
        )


async def preview(
    playbook: Playbook[Any], execution_id: str, params: dict[str, Any], contexts: PlaybookContexts
) -> tuple[Precheck, tuple[PlannedAction, ...]]:
    """A dry run: the preconditions and the actions `playbook` would take on `execution_id`, recorded
    nowhere (no store needed: `gl-watchdog playbook run --dry-run` works while the database is down)."""
    typed = parse_params(playbook, params)
    ctx = contexts.build(0, execution_id, playbook.name, InMemoryLedger())
    return await playbook.preconditions(ctx, typed), await playbook.plan(ctx, typed)


def parse_params(playbook: Playbook[Any], raw: dict[str, Any]) -> BaseModel:
    """The playbook's typed params; PlaybookError naming every bad field otherwise."""
    try:
        params: BaseModel = playbook.parse_params(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PlaybookError(f"invalid params for {playbook.name}: {problems}") from exc
    return params
