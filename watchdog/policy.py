"""The remediation policy: which playbook answers which diagnosis, how risky it is, who must approve,
and the limits that keep automation from doing harm.

Loaded once at start-up from YAML (`settings.policy_file`, default: the shipped `policy.yaml` beside
this module) by `load_policy()`, validated with pydantic, then checked against what is loaded
(`watchdog.plugins`: the built-in and plugin playbooks and diagnostic steps), and passed to the
planner (`watchdog.planner`), the responder and the remediation state machine, whose limits
(`watchdog.limits`) are enforced against the store so they hold across restarts and replicas. An
invalid file raises `PolicyError` naming the field, and for a file its line and rule
(`rules.2.playbook: unknown playbook 'reboot'; known: ... [line 14, rule 'agent']`): an unknown
playbook (or a plugin one that failed to load, with its reason), params its playbook's params model
refuses, a cause no loaded step can produce, a step number no step has, and (given the configured
escalation targets) a rule's `escalate_to` naming a target the settings do not configure.
`gl-watchdog policy check FILE` runs the same checks without starting anything (but the targets).
`maintenance:` lists the maintenance windows (`watchdog.maintenance`; an error there names its line
and window) the suppression gate honours.

Modes: the deployment's mode (settings) is `observe` (diagnose and report only), `recommend` (ask for
approval for every action) or `auto` (act without approval where the playbook's policy allows). A
playbook's own `mode` overrides the deployment's, except that a deployment in `observe` never acts.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from watchdog.errors import PolicyError
from watchdog.maintenance import MaintenanceWindow
from watchdog.plugins import DIAGNOSTIC_GROUP, PLAYBOOK_GROUP, PluginCatalog, installed_plugins
from watchdog.settings import EscalationTarget, Mode
from watchdog_sdk.diagnosis import MAX_STEP, Diagnosis
from watchdog_sdk.outcomes import Risk
from watchdog_sdk.playbook import Playbook

DEFAULT_POLICY_FILE = Path(__file__).with_name("policy.yaml")

__all__ = [
    "DEFAULT_POLICY_FILE",
    "Mode",
    "Policy",
    "PolicyError",
    "Rule",
    "check_policy",
    "load_policy",
    "parse_policy",
]

Loc = tuple[int | str, ...]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApprovalRule(_Strict):
    """Who may approve a plan (`watchdog.approvals`): a role at least, one of `groups` when given
    (an admin passes any group), and how many distinct approvers. A plan under a rule needs a
    signed-in identity: an approval link alone is not enough."""

    role: Literal["approver", "operator", "admin"] = "approver"
    groups: list[str] = Field(default_factory=list)
    approvers_required: Literal[1, 2] = 1

    def describe(self) -> str:
        """Who the rule asks for, in the words the approval refusals and the Slack prompt use:
        "2 distinct approvers of role approver or higher in sre"."""
        two = self.approvers_required > 1
        who = f"{self.approvers_required} distinct approvers" if two else "an approver"
        groups = f" in {' or '.join(self.groups)}" if self.groups else ""
        return f"{who} of role {self.role} or higher{groups}"


class PlaybookPolicy(_Strict):
    """Per-playbook settings: risk, whether `auto` mode still needs a human, default params, and who
    may approve (overrides the rule of its risk level)."""

    risk: Risk | None = None  # None: the playbook's own risk
    requires_approval: bool = True
    mode: Mode | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    approval: ApprovalRule | None = None


class Match(_Strict):
    """What a rule matches on. Every given condition must hold; empty lists mean "any".

    `dag`, `agent` and `namespace` are label matchers: shell-style patterns (`emissions-*`) over the
    diagnosis's DAG id, the stuck node's agent id and the namespace (the watchdog's `namespace`
    setting, where it watches the orchestrator and agents: for a sweep incident and for an alert
    alike, since the Alertmanager route sends a release only its own namespace's alerts,
    docs/alerting.md); a diagnosis without that value matches none of them.
    """

    likely_cause: list[str] = Field(default_factory=list)
    execution_status: list[str] = Field(default_factory=list)
    # Step numbers that must have status `problem` in the diagnosis (1-8, or a plugin step's).
    problem_steps: list[int] = Field(default_factory=list)
    dag: list[str] = Field(default_factory=list)
    agent: list[str] = Field(default_factory=list)
    namespace: list[str] = Field(default_factory=list)

    @field_validator("problem_steps")
    @classmethod
    def _steps_in_range(cls, steps: list[int]) -> list[int]:
        bad = [s for s in steps if not 1 <= s <= MAX_STEP]
        if bad:
            raise ValueError(f"diagnostic steps are numbered 1-8 (plugins 9-{MAX_STEP}), got {bad}")
        return steps

    @model_validator(mode="after")
    def _not_empty(self) -> Match:
        given = (
            self.likely_cause,
            self.execution_status,
            self.problem_steps,
            self.dag,
            self.agent,
            self.namespace,
        )
        if not any(given):
            raise ValueError(
                "a rule must match on at least one of likely_cause, execution_status, problem_steps, "
                "dag, agent, namespace"
            )
        return self

    def matches(self, diagnosis: Diagnosis) -> bool:
        """True when every condition given holds for `diagnosis`."""
        if self.likely_cause and diagnosis.likely_cause not in self.likely_cause:
            return False
        if self.dag and not _any_match(diagnosis.dag_id, self.dag):
            return False
        if self.agent and not _any_match(diagnosis.agent_id, self.agent):
            return False
        if self.namespace and not _any_match(diagnosis.namespace, self.namespace):
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
    """When the diagnosis matches `when`, use `playbook` (None: escalate, no automatic fix). An
    incident this rule planned is escalated to `escalate_to` (None: the settings'
    `escalation_targets`)."""

    name: str
    when: Match
    playbook: str | None
    params: dict[str, Any] = Field(default_factory=dict)
    rationale: str = ""
    escalate_to: list[EscalationTarget] | None = Field(default=None, min_length=1)


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
    # Who may approve, per risk level (a playbook's own `approval` wins). Default: high risk needs two
    # distinct signed-in approvers; low and medium risk plans may be approved by their link alone.
    approval: dict[Risk, ApprovalRule] = Field(
        default_factory=lambda: {Risk.HIGH: ApprovalRule(approvers_required=2)}
    )
    # Planned periods in which incidents are held, neither prompted nor acted on (`watchdog.maintenance`).
    maintenance: list[MaintenanceWindow] = Field(default_factory=list)

    @field_validator("version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version != 1:
            raise ValueError(f"unsupported policy version {version}; this watchdog reads version 1")
        return version

    def playbook(self, name: str) -> PlaybookPolicy:
        """The policy of playbook `name` (defaults when the file does not mention it)."""
        return self.playbooks.get(name, PlaybookPolicy())

    def first_match(self, diagnosis: Diagnosis) -> Rule | None:
        """The first rule that matches `diagnosis`, or None."""
        return next((rule for rule in self.rules if rule.when.matches(diagnosis)), None)

    def escalation_targets(self) -> dict[str, list[str]]:
        """Rule name → its `escalate_to` targets, for the rules that have them."""
        return {r.name: [t.value for t in r.escalate_to] for r in self.rules if r.escalate_to is not None}

    def approval_for(self, playbook: str | None, risk: Risk | None) -> ApprovalRule | None:
        """The approval rule of a plan of `playbook` at `risk` (None: its link alone may decide)."""
        own = self.playbook(playbook).approval if playbook is not None else None
        return own or (self.approval.get(risk) if risk is not None else None)

    def effective_mode(self, deployment_mode: Mode, playbook: str) -> Mode:
        """The mode for `playbook`: its own override, except that deployment `observe` always wins."""
        if deployment_mode is Mode.OBSERVE:
            return Mode.OBSERVE
        return self.playbook(playbook).mode or deployment_mode


def _any_match(value: str | None, patterns: list[str]) -> bool:
    return value is not None and any(fnmatchcase(value, pattern) for pattern in patterns)


# -- checks against what is loaded --------------------------------------------------------------------

# Facts the planner takes from the diagnosis (`watchdog.planner.derived_params`): stand-ins at load time.
_FROM_DIAGNOSIS = {"agent_id": "agent", "node_id": "node", "dag_id": "dag"}


def check_policy(policy: Policy, catalog: PluginCatalog) -> list[tuple[Loc, str]]:
    """What in `policy` does not fit the loaded playbooks and steps, each as (where, problem): unknown
    playbooks, params their playbook refuses (a misspelt or out-of-range param fails at load, not at
    the first incident as an escalation), causes no step can produce, step numbers no step has."""
    problems: list[tuple[Loc, str]] = []
    registry = catalog.registry

    def unknown(name: str) -> str:
        broken = catalog.problem(PLAYBOOK_GROUP, name)
        if broken is not None:
            return f"playbook {name!r} is a plugin that failed to load ({broken.source}): {broken.reason}"
        return f"unknown playbook {name!r}; known: {', '.join(registry.names())}"

    for name, playbook_policy in policy.playbooks.items():
        loc: Loc = ("playbooks", name)
        if name not in registry:
            problems.append((loc, f"playbooks.{name}: {unknown(name)}"))
        else:
            problems += _params_problems(registry.get(name), playbook_policy.params, (*loc, "params"))
    causes = catalog.causes
    numbers = catalog.step_numbers
    for index, rule in enumerate(policy.rules):
        where = f"rules.{index}"
        for cause in rule.when.likely_cause:
            if cause not in causes:
                problems.append(
                    (
                        ("rules", index, "when", "likely_cause"),
                        f"{where}.when.likely_cause: no diagnostic step can produce cause {cause!r}; "
                        f"known: {', '.join(sorted(causes))}{_broken_steps(catalog)}",
                    )
                )
        for number in rule.when.problem_steps:
            if number not in numbers:
                problems.append(
                    (
                        ("rules", index, "when", "problem_steps"),
                        f"{where}.when.problem_steps: no diagnostic step {number} is loaded; "
                        f"loaded: {sorted(numbers)}{_broken_steps(catalog)}",
                    )
                )
        if rule.playbook is None:
            continue
        if rule.playbook not in registry:
            problems.append((("rules", index, "playbook"), f"{where}.playbook: {unknown(rule.playbook)}"))
            continue
        params = {**policy.playbook(rule.playbook).params, **rule.params}
        problems += _params_problems(registry.get(rule.playbook), params, ("rules", index, "params"))
    return problems


def check_escalation_targets(policy: Policy, configured: Collection[str]) -> list[tuple[Loc, str]]:
    """The rules' `escalate_to` entries that name a target the settings do not configure."""
    return [
        (
            ("rules", index, "escalate_to", position),
            f"rules.{index}.escalate_to.{position}: escalation target {target.value!r} is not configured "
            f"(configured: {', '.join(sorted(configured)) or 'none'})",
        )
        for index, rule in enumerate(policy.rules)
        for position, target in enumerate(rule.escalate_to or ())
        if target.value not in configured
    ]


def _broken_steps(catalog: PluginCatalog) -> str:
    broken = [str(p) for p in catalog.problems if p.group == DIAGNOSTIC_GROUP]
    return f" ({'; '.join(broken)})" if broken else ""


def _params_problems(playbook: Playbook[Any], params: dict[str, Any], loc: Loc) -> list[tuple[Loc, str]]:
    fields = playbook.params_model.model_fields
    stand_ins = {k: v for k, v in _FROM_DIAGNOSIS.items() if k in fields}
    try:
        playbook.parse_params({**stand_ins, **params})
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        return [(loc, f"{_field_path(loc)} do not fit playbook {playbook.name}: {problems}")]
    return []


def _field_path(loc: Loc) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _problem(err: Any) -> str:
    """One validation error as `field: message` (a whole-model check's message stands alone)."""
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{_field_path(err['loc'])}: {message}" if err["loc"] else message


LineOf = Callable[[Loc], int | None]


def parse_policy(
    data: Any,
    source: str = "policy",
    *,
    catalog: PluginCatalog | None = None,
    line_of: LineOf | None = None,
    targets: Collection[str] | None = None,
) -> Policy:
    """Validate already-parsed YAML/JSON data, then check it against `catalog` (default: the built-ins
    and the installed plugins) and, when given, the configured escalation `targets`; `PolicyError`
    names every problem, with its line when `line_of` maps a field's location to one, and its rule's
    name."""
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the policy must be a mapping, got {type(data).__name__}")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) + _where(data, err["loc"], line_of) for err in exc.errors())
        raise PolicyError(f"{source}: invalid policy: {problems}") from exc
    found = check_policy(policy, catalog or installed_plugins())
    if targets is not None:
        found += check_escalation_targets(policy, targets)
    if found:
        problems = "; ".join(text + _where(data, loc, line_of) for loc, text in found)
        raise PolicyError(f"{source}: invalid policy: {problems}")
    return policy


def _where(data: dict[str, Any], loc: Loc, line_of: LineOf | None) -> str:
    """` [line N, rule 'name']`: where a problem is, as far as is known."""
    parts = []
    line = line_of(loc) if line_of is not None else None
    if line is not None:
        parts.append(f"line {line}")
    named = _named_item(data, loc)
    if named is not None:
        parts.append(named)
    return f" [{', '.join(parts)}]" if parts else ""


_ITEM_KINDS = {"rules": "rule", "maintenance": "window"}


def _named_item(data: dict[str, Any], loc: Loc) -> str | None:
    """`rule 'name'` / `window 'name'`: the named list item a location is in, if any."""
    if len(loc) < 2 or loc[0] not in _ITEM_KINDS or not isinstance(loc[1], int):
        return None
    items = data.get(str(loc[0]))
    item = items[loc[1]] if isinstance(items, list) and loc[1] < len(items) else None
    if isinstance(item, dict) and isinstance(item.get("name"), str):
        return f"{_ITEM_KINDS[str(loc[0])]} {item['name']!r}"
    return None


def _yaml_lines(text: str) -> LineOf:
    """A field's location (`("rules", 2, "playbook")`) → the 1-based line of the deepest part of it
    found in the YAML `text` (None when the text has no such node)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        root = None

    def line_of(loc: Loc) -> int | None:
        node = root
        if node is None:
            return None
        for part in loc:
            child = None
            if isinstance(node, yaml.MappingNode):
                child = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                child = node.value[part]
            if child is None:
                break
            node = child
        return int(node.start_mark.line) + 1

    return line_of


def load_policy(
    path: str | Path | None = None,
    *,
    catalog: PluginCatalog | None = None,
    targets: Collection[str] | None = None,
) -> Policy:
    """Read and validate the policy file at `path` (the shipped default when None) against `catalog`
    (default: the built-ins and the installed plugins) and, when given, the configured escalation
    `targets`."""
    file = Path(path) if path is not None else DEFAULT_POLICY_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{file}: cannot read policy file: {exc.strerror or exc}") from exc
    return parse_policy_text(text, source=str(file), catalog=catalog, targets=targets)


def parse_policy_text(
    text: str,
    source: str = "policy",
    *,
    catalog: PluginCatalog | None = None,
    targets: Collection[str] | None = None,
) -> Policy:
    """A policy from its YAML text (a file's, or one sent to the replay route), checked as a file is."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from exc
    return parse_policy(data, source=source, catalog=catalog, line_of=_yaml_lines(text), targets=targets)
