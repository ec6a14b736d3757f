"""The remediation policy: which playbook answers which diagnosis, how risky it is, who must approve,
and the limits that keep automation from doing harm.

Loaded once at start-up from YAML (`settings.policy_file`, default: the shipped `policy.yaml` beside
this module) by `load_policy()`, validated with pydantic, then passed to the planner
(`watchdog.planner`), the responder and the remediation state machine, whose limits
(`watchdog.limits`) are enforced against the store so they hold across restarts and replicas. An
invalid file raises `PolicyError` naming the field (`rules.2.playbook: unknown playbook 'reboot'`).

Modes: the deployment's mode (settings) is `observe` (diagnose and report only), `recommend` (ask for
approval for every action) or `auto` (act without approval where the playbook's policy allows). A
playbook's own `mode` overrides the deployment's, except that a deployment in `observe` never acts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from playbooks.registry import default_registry
from watchdog.errors import PolicyError
from watchdog.settings import Mode
from watchdog_sdk.diagnosis import Diagnosis
from watchdog_sdk.outcomes import Risk
from watchdog_sdk.playbook import Playbook

DEFAULT_POLICY_FILE = Path(__file__).with_name("policy.yaml")

__all__ = ["DEFAULT_POLICY_FILE", "Mode", "Policy", "PolicyError", "Rule", "load_policy", "parse_policy"]

PLAYBOOK_NAMES = frozenset(
    {"cancel", "resume", "restart_agent", "throttle_concurrency", "release_lock", "increase_node_timeout"}
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlaybookPolicy(_Strict):
    """Per-playbook settings: risk, whether `auto` mode still needs a human, default params."""

    risk: Risk | None = None  # None: the playbook's own risk
    requires_approval: bool = True
    mode: Mode | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class Match(_Strict):
    """What a rule matches on. Every given condition must hold; empty lists mean "any"."""

    likely_cause: list[str] = Field(default_factory=list)
    execution_status: list[str] = Field(default_factory=list)
    # Step numbers that must have status `problem` in the diagnosis.
    problem_steps: list[int] = Field(default_factory=list)

    @field_validator("problem_steps")
    @classmethod
    def _steps_in_range(cls, steps: list[int]) -> list[int]:
        bad = [s for s in steps if not 1 <= s <= 8]
        if bad:
            raise ValueError(f"diagnostic steps are numbered 1-8, got {bad}")
        return steps

    @model_validator(mode="after")
    def _not_empty(self) -> Match:
        if not (self.likely_cause or self.execution_status or self.problem_steps):
            raise ValueError(
                "a rule must match on at least one of likely_cause, execution_status, problem_steps"
            )
        return self

    def matches(self, diagnosis: Diagnosis) -> bool:
        """True when every condition given holds for `diagnosis`."""
        if self.likely_cause and diagnosis.likely_cause not in self.likely_cause:
            return False
        if self.execution_status:
            step1 = diagnosis.finding(1)
            status = step1.evidence.get("status") if step1 is not None else None
            if status not in self.execution_status:
                return False
        for step in self.problem_steps:
            finding = diagnosis.finding(step)
            if finding is None or finding.status != "problem":
                return False
        return True


class Rule(_Strict):
    """When the diagnosis matches `when`, use `playbook` (None: escalate, no automatic fix)."""

    name: str
    when: Match
    playbook: str | None
    params: dict[str, Any] = Field(default_factory=dict)
    rationale: str = ""

    @field_validator("playbook")
    @classmethod
    def _known_playbook(cls, name: str | None) -> str | None:
        if name is not None and name not in PLAYBOOK_NAMES:
            raise ValueError(f"unknown playbook {name!r}; known: {', '.join(sorted(PLAYBOOK_NAMES))}")
        return name


class CircuitBreaker(_Strict):
    """Stop acting after `failures` failed remediations within `window_seconds`."""

    failures: int = Field(default=3, ge=1)
    window_seconds: int = Field(default=3600, ge=1)


class Limits(_Strict):
    """Limits held in the store (rate_events, actions), so they survive restarts and span replicas.

    One action in flight per execution is not configurable: it is how the loop works.
    """

    agent_restarts_per_agent_per_hour: int = Field(default=3, ge=0)
    remediations_per_hour: int = Field(default=20, ge=0)
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    max_node_timeout_seconds: int = Field(default=1800, ge=1)
    lock_grace_seconds: int = Field(default=30, ge=0)


class Policy(_Strict):
    """The whole policy file."""

    version: int = 1
    playbooks: dict[str, PlaybookPolicy] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)
    limits: Limits = Limits()

    @field_validator("version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version != 1:
            raise ValueError(f"unsupported policy version {version}; this watchdog reads version 1")
        return version

    @field_validator("playbooks")
    @classmethod
    def _known_playbooks(cls, playbooks: dict[str, PlaybookPolicy]) -> dict[str, PlaybookPolicy]:
        unknown = sorted(set(playbooks) - PLAYBOOK_NAMES)
        if unknown:
            raise ValueError(f"unknown playbook(s) {unknown}; known: {', '.join(sorted(PLAYBOOK_NAMES))}")
        return playbooks

    @model_validator(mode="after")
    def _params_fit_their_playbooks(self) -> Policy:
        """A misspelt or out-of-range param fails at load, not at the first incident (as an escalation)."""
        registry = default_registry()
        for name, playbook_policy in self.playbooks.items():
            _check_params(registry.get(name), playbook_policy.params, f"playbooks.{name}.params")
        for index, rule in enumerate(self.rules):
            if rule.playbook is not None:
                params = {**self.playbook(rule.playbook).params, **rule.params}
                _check_params(registry.get(rule.playbook), params, f"rules.{index}.params")
        return self

    def playbook(self, name: str) -> PlaybookPolicy:
        """The policy of playbook `name` (defaults when the file does not mention it)."""
        return self.playbooks.get(name, PlaybookPolicy())

    def first_match(self, diagnosis: Diagnosis) -> Rule | None:
        """The first rule that matches `diagnosis`, or None."""
        return next((rule for rule in self.rules if rule.when.matches(diagnosis)), None)

    def effective_mode(self, deployment_mode: Mode, playbook: str) -> Mode:
        """The mode for `playbook`: its own override, except that deployment `observe` always wins."""
        if deployment_mode is Mode.OBSERVE:
            return Mode.OBSERVE
        return self.playbook(playbook).mode or deployment_mode


# Facts the planner takes from the diagnosis (`watchdog.planner.derived_params`): stand-ins at load time.
_FROM_DIAGNOSIS = {"agent_id": "agent", "node_id": "node", "dag_id": "dag"}


def _check_params(playbook: Playbook[Any], params: dict[str, Any], where: str) -> None:
    fields = playbook.params_model.model_fields
    stand_ins = {k: v for k, v in _FROM_DIAGNOSIS.items() if k in fields}
    try:
        playbook.parse_params({**stand_ins, **params})
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise ValueError(f"{where} do not fit playbook {playbook.name}: {problems}") from None


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _problem(err: Any) -> str:
    """One validation error as `field: message` (a whole-model check's message stands alone)."""
    if err["loc"]:
        return f"{_field_path(err['loc'])}: {err['msg']}"
    return str(err["msg"]).removeprefix("Value error, ")


def parse_policy(data: Any, source: str = "policy") -> Policy:
    """Validate already-parsed YAML/JSON data; `PolicyError` names the first bad field."""
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the policy must be a mapping, got {type(data).__name__}")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise PolicyError(f"{source}: invalid policy: {problems}") from exc


def load_policy(path: str | Path | None = None) -> Policy:
    """Read and validate the policy file at `path` (the shipped default when None)."""
    file = Path(path) if path is not None else DEFAULT_POLICY_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{file}: cannot read policy file: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{file}: not valid YAML: {exc}") from exc
    return parse_policy(data, source=str(file))
