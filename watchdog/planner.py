"""The planner: a Diagnosis and the policy in, a Plan out — which playbook, with which params, how
risky, whether a human must approve, and why, in plain language citing the evidence.

Called by the responder (`watchdog.responder`) after diagnosis; reads the policy (`watchdog.policy`)
and the playbook registry for params models and risk. Pure: no I/O, so it is tested with plain
values. The responder adds the playbook's dry-run actions (`Plan.actions`) right before asking for
approval. The `Plan` itself is `watchdog.plan` (the store keeps it).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from watchdog.plan import Plan
from watchdog.policy import Policy
from watchdog.settings import Mode
from watchdog_sdk.diagnosis import Diagnosis, StepStatus
from watchdog_sdk.outcomes import Risk
from watchdog_sdk.registry import Registry


def evidence_of(diagnosis: Diagnosis) -> list[str]:
    """The evidence for the likely cause, or else the summaries of the steps that found a problem."""
    if diagnosis.cause_evidence:
        return list(diagnosis.cause_evidence)
    problems = [
        f"step {f.step} ({f.name}): {f.summary}" for f in diagnosis.findings if f.status is StepStatus.PROBLEM
    ]
    return problems or [f"likely cause: {diagnosis.likely_cause}"]


def derived_params(diagnosis: Diagnosis) -> dict[str, Any]:
    """Facts from the diagnosis that playbooks take as params (used when their model declares them)."""
    facts = {"agent_id": diagnosis.agent_id, "node_id": diagnosis.stuck_node_id, "dag_id": diagnosis.dag_id}
    return {k: v for k, v in facts.items() if v is not None}


def make_plan(diagnosis: Diagnosis, policy: Policy, deployment_mode: Mode, registry: Registry) -> Plan:
    """Pick the playbook for `diagnosis` by the policy's first matching rule and build its params."""
    evidence = evidence_of(diagnosis)
    because = "; ".join(evidence)
    rule = policy.first_match(diagnosis)
    base: dict[str, Any] = {
        "execution_id": diagnosis.execution_id,
        "likely_cause": diagnosis.likely_cause,
        "evidence": evidence,
        "mode": deployment_mode,
    }
    if rule is None:
        return Plan(
            **base,
            playbook=None,
            rationale=f"{because} → no policy rule matches likely cause {diagnosis.likely_cause!r}: "
            "escalate to on-call",
        )
    if rule.playbook is None:
        return Plan(
            **base,
            playbook=None,
            rule=rule.name,
            rationale=f"{because} → no automatic fix (rule {rule.name}): "
            f"{rule.rationale or 'escalate to on-call'}",
        )
    playbook = registry.get(rule.playbook)
    playbook_policy = policy.playbook(playbook.name)
    fields = playbook.params_model.model_fields
    raw = {k: v for k, v in derived_params(diagnosis).items() if k in fields}
    raw.update(playbook_policy.params)
    raw.update(rule.params)
    try:
        params = playbook.parse_params(raw).model_dump(exclude_none=True)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return Plan(
            **base,
            playbook=None,
            rule=rule.name,
            rationale=f"{because} → {playbook.name} chosen by rule {rule.name}, but its params are "
            f"incomplete ({problems}): escalate to on-call",
        )
    mode = policy.effective_mode(deployment_mode, playbook.name)
    risk = playbook_policy.risk or playbook.risk
    requires_approval = mode is Mode.RECOMMEND or (
        mode is Mode.AUTO and (playbook_policy.requires_approval or risk is Risk.HIGH)
    )
    will_act = mode is not Mode.OBSERVE
    why = f"{because} → {playbook.name}"
    if rule.rationale:
        why += f": {rule.rationale}"
    if mode is Mode.OBSERVE:
        why += " (observe mode: reported, not applied)"
    return Plan(
        **{**base, "mode": mode},
        playbook=playbook.name,
        params=params,
        risk=risk,
        requires_approval=requires_approval and will_act,
        will_act=will_act,
        rule=rule.name,
        rationale=why,
    )
