"""A playbook and a notifier that record what the remediation loop makes them do, and a policy that
sends `agent_unresponsive` to that playbook: test doubles of our own interfaces, for tests of the loop
(tests/watchdog/test_remediation.py) and of its faults (tests/faults/), without an orchestrator.

`RecordingPlaybook` registers as `restart_agent`: a non-idempotent step (`restart_worker`, counted in
`side_effects`) and an idempotent one (`check`) through the real action ledger; `verify` answers
`verify_ok`. `RecordingNotifier` keeps the prompts and escalations it was given.
"""

from __future__ import annotations

import asyncio
from typing import Any

from playbooks.restart_agent import RestartAgentParams
from watchdog.notifier import EscalationMessage, NotifyResult, PromptMessage
from watchdog_sdk.outcomes import ApplyResult, Check, CheckStatus, PlannedAction, Precheck, Risk, VerifyResult
from watchdog_sdk.playbook import Playbook, PlaybookContext, Step, StepRequest


class AgentRequest(StepRequest):
    agent: str | None = None


class RecordingPlaybook(Playbook[RestartAgentParams]):
    """Counts what the loop makes it do; its two steps go through the real ledger."""

    name = "restart_agent"
    risk = Risk.MEDIUM
    summary = "test double"
    params_model = RestartAgentParams

    def __init__(self) -> None:
        self.refuse: str | None = None
        self.fail_apply = False
        self.verify_ok = True
        self.applied = 0
        self.side_effects = 0
        self.block_second_step: asyncio.Event | None = None

    async def preconditions(self, ctx: PlaybookContext, params: RestartAgentParams) -> Precheck:
        return Precheck.refused(self.refuse) if self.refuse else Precheck.passed("ok")

    async def plan(self, ctx: PlaybookContext, params: RestartAgentParams) -> tuple[PlannedAction, ...]:
        return (PlannedAction(step="restart_worker", description=f"restart {params.agent_id}", target="x"),)

    async def steps(self, ctx: PlaybookContext, params: RestartAgentParams) -> list[Step[Any]]:
        async def restart(_req: AgentRequest) -> dict[str, Any]:
            if self.fail_apply:
                raise RuntimeError("agent API exploded")
            self.side_effects += 1
            return {"restarts": self.side_effects}

        async def check(_req: AgentRequest) -> dict[str, Any]:
            if self.block_second_step is not None:
                await self.block_second_step.wait()
            return {}

        return [
            Step(
                "restart_worker",
                AgentRequest(agent=params.agent_id),
                restart,
                idempotent=False,
                description=f"restart {params.agent_id}",
                target="x",
            ),
            Step("check", AgentRequest(), check, idempotent=True, description="check", target="x"),
        ]

    async def apply(self, ctx: PlaybookContext, params: RestartAgentParams) -> ApplyResult:
        self.applied += 1
        return await super().apply(ctx, params)

    async def verify(self, ctx: PlaybookContext, params: RestartAgentParams) -> VerifyResult:
        status = CheckStatus.OK if self.verify_ok else CheckStatus.PROBLEM
        return VerifyResult.of(
            self.name, [Check(name="execution_status", status=status, detail="x", decisive=True)]
        )


class RecordingNotifier:
    def __init__(self) -> None:
        self.prompts: list[PromptMessage] = []
        self.escalations: list[EscalationMessage] = []
        self.fail = False

    async def approval_requested(self, message: PromptMessage) -> NotifyResult:
        self.prompts.append(message)
        return NotifyResult(
            ok=not self.fail, sent=not self.fail, detail="webhook down" if self.fail else "sent"
        )

    async def escalated(self, message: EscalationMessage) -> NotifyResult:
        self.escalations.append(message)
        return NotifyResult(ok=True, sent=True, detail="sent")


POLICY = {
    "playbooks": {"restart_agent": {"risk": "medium", "requires_approval": False}},
    "rules": [
        {"name": "agent", "when": {"likely_cause": ["agent_unresponsive"]}, "playbook": "restart_agent"}
    ],
    "limits": {
        "agent_restarts_per_agent_per_hour": 2,
        "remediations_per_hour": 10,
        "circuit_breaker": {"failures": 2, "window_seconds": 3600},
    },
}
