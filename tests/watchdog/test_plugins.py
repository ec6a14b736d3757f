"""Plugins: the built-ins and entry points loaded into one catalog, a broken plugin left out with its
name and reason, the policy checked against what loaded, plugin steps run by the runner, and the
contexts plugins get (clients and a ledger, never the store)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.watchdog.conftest import FakeClock
from tests.watchdog.plugin_samples import FlushCache, queue_depth
from watchdog.assembly import build_watchdog
from watchdog.cli import main
from watchdog.diagnostics.runner import diagnose
from watchdog.errors import PolicyError
from watchdog.exit_codes import EXIT_OK, EXIT_USAGE
from watchdog.ledger import StoreLedger
from watchdog.metrics import WatchdogMetrics
from watchdog.plugins import (
    DIAGNOSTIC_GROUP,
    PLAYBOOK_GROUP,
    PluginProblem,
    load_plugins,
)
from watchdog.policy import load_policy, parse_policy
from watchdog.settings import WatchdogSettings
from watchdog.store import WatchdogStore
from watchdog_sdk.diagnosis import Diagnosis, Finding, StepStatus
from watchdog_sdk.diagnostic_step import DiagnosisState, DiagnosticContext, DiagnosticStep
from watchdog_sdk.playbook import PlaybookContext

BUILTIN_PLAYBOOKS = [
    "cancel",
    "increase_node_timeout",
    "release_lock",
    "restart_agent",
    "resume",
    "throttle_concurrency",
]


def ep(name: str, attr: str, group: str = PLAYBOOK_GROUP) -> EntryPoint:
    return EntryPoint(name, f"tests.watchdog.plugin_samples:{attr}", group)


FLUSH = ep("flush_cache", "FlushCache")
QUEUE = ep("queue_depth", "QUEUE_DEPTH", DIAGNOSTIC_GROUP)


# -- loading -----------------------------------------------------------------------------------------


def test_the_builtins_are_ordinary_entries_of_the_one_registry() -> None:
    catalog = load_plugins([])
    assert catalog.registry.names() == BUILTIN_PLAYBOOKS
    assert [step.number for step in catalog.steps] == list(range(1, 9))
    assert catalog.problems == ()


def test_plugin_playbooks_and_steps_join_the_builtins() -> None:
    catalog = load_plugins([FLUSH, QUEUE])
    assert catalog.registry.names() == sorted([*BUILTIN_PLAYBOOKS, "flush_cache"])
    assert isinstance(catalog.registry.get("flush_cache"), FlushCache)
    assert [step.number for step in catalog.steps] == [*range(1, 9), 20]
    assert "queue_backlog" in catalog.causes and "stuck_lock" in catalog.causes
    assert catalog.problems == ()


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (
            EntryPoint("missing", "tests.watchdog.no_such_module:Thing", PLAYBOOK_GROUP),
            "cannot be imported: ModuleNotFoundError: No module named 'tests.watchdog.no_such_module'",
        ),
        (ep("not_a_playbook", "NOT_A_PLAYBOOK"), "is a int, not a watchdog_sdk.playbook.Playbook"),
        (ep("bad_model", "BadModel"), "bad parameter model OpaqueParams: PydanticInvalidForJsonSchema"),
        (ep("not_a_model", "NotAModel"), "params_model must be a pydantic model class, got class dict"),
        (ep("no_risk", "NoRisk"), "risk must be one of ['low', 'medium', 'high'], got 'extreme'"),
        (ep("cancel", "AnotherCancel"), "a playbook named 'cancel' is already registered"),
        (ep("unfinished", "Unfinished"), "cannot be built: TypeError: Can't instantiate abstract class"),
        (ep("flush", "FlushCache"), "the entry point's name differs from the playbook's name 'flush_cache'"),
        (ep("sneaky", "RUNBOOK_NUMBER", DIAGNOSTIC_GROUP), "step number must be 9-99, got 5"),
        (ep("no_timeout", "NO_TIMEOUT", DIAGNOSTIC_GROUP), "timeout_seconds must be positive, got 0.0"),
        (
            ep("queue_depth", "FlushCache", DIAGNOSTIC_GROUP),
            "not a watchdog_sdk.diagnostic_step.DiagnosticStep",
        ),
    ],
)
def test_a_broken_plugin_is_left_out_and_named_with_its_reason(
    entry: EntryPoint, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="watchdog.plugins"):
        catalog = load_plugins([entry, FLUSH, QUEUE])
    [problem] = catalog.problems
    assert (problem.group, problem.name) == (entry.group, entry.name)
    assert reason in problem.reason
    assert str(problem) in caplog.text
    assert "flush_cache" in catalog.registry and catalog.steps[-1].name == "queue_depth"  # the rest load


def test_a_second_step_with_a_taken_number_is_left_out() -> None:
    catalog = load_plugins([QUEUE, ep("queue_depth", "QUEUE_DEPTH", DIAGNOSTIC_GROUP)])
    assert [p.reason for p in catalog.problems] == ["step 20 (queue_depth) is already registered"]
    assert [step.number for step in catalog.steps] == [*range(1, 9), 20]


def test_plugins_left_out_are_counted_by_a_metric() -> None:
    metrics = WatchdogMetrics()
    metrics.plugin_problems([PluginProblem(PLAYBOOK_GROUP, "flush_cache", "x 1.0", "cannot be imported")])
    text = metrics.render().decode()
    assert 'gl_watchdog_plugin_problems{group="gl_watchdog.playbooks",plugin="flush_cache"} 1.0' in text


# -- the policy against what loaded ------------------------------------------------------------------

CACHE_RULE = {"name": "cache", "when": {"likely_cause": ["queue_backlog"]}, "playbook": "flush_cache"}


def test_a_policy_may_name_plugin_playbooks_causes_and_steps() -> None:
    catalog = load_plugins([FLUSH, QUEUE])
    rule = {**CACHE_RULE, "when": {"likely_cause": ["queue_backlog"], "problem_steps": [20]}}
    policy = parse_policy({"rules": [{**rule, "params": {"cache": "orders"}}]}, catalog=catalog)
    assert policy.rules[0].playbook == "flush_cache"


def test_a_policy_naming_a_plugin_that_failed_to_load_is_refused_with_the_reason() -> None:
    broken = EntryPoint("flush_cache", "tests.watchdog.no_such_module:FlushCache", PLAYBOOK_GROUP)
    catalog = load_plugins([broken, QUEUE])
    data = {"rules": [{**CACHE_RULE, "params": {"cache": "orders"}}]}
    with pytest.raises(PolicyError) as caught:
        parse_policy(data, source="p.yaml", catalog=catalog)
    message = str(caught.value)
    assert "rules.0.playbook: playbook 'flush_cache' is a plugin that failed to load" in message
    assert "No module named 'tests.watchdog.no_such_module'" in message
    # A policy that does not reference it loads: the service starts without the plugin.
    parse_policy({"rules": [{**CACHE_RULE, "playbook": "cancel"}]}, catalog=catalog)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({**CACHE_RULE}, "rules.0.params do not fit playbook flush_cache: cache: Field required"),
        (
            {**CACHE_RULE, "params": {"cache": "orders", "ttl_seconds": 0}},
            "rules.0.params do not fit playbook flush_cache: ttl_seconds: Input should be greater than",
        ),
        (
            {**CACHE_RULE, "when": {"likely_cause": ["queue_backlogg"]}, "params": {"cache": "o"}},
            "rules.0.when.likely_cause: no diagnostic step can produce cause 'queue_backlogg'",
        ),
        (
            {**CACHE_RULE, "when": {"problem_steps": [21]}, "params": {"cache": "o"}},
            "rules.0.when.problem_steps: no diagnostic step 21 is loaded",
        ),
        ({**CACHE_RULE, "playbook": "flush_caches"}, "rules.0.playbook: unknown playbook 'flush_caches'"),
    ],
)
def test_each_kind_of_invalid_rule_is_named(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy({"rules": [rule]}, source="p.yaml", catalog=load_plugins([FLUSH, QUEUE]))
    assert message in str(caught.value)
    assert "[rule 'cache']" in str(caught.value)


def test_a_cause_only_a_missing_plugin_step_produces_is_refused() -> None:
    with pytest.raises(PolicyError, match="no diagnostic step can produce cause 'queue_backlog'"):
        parse_policy({"rules": [{**CACHE_RULE, "playbook": None}]}, catalog=load_plugins([FLUSH]))


def test_a_policy_file_problem_names_its_line_and_rule(tmp_path: Path) -> None:
    file = tmp_path / "policy.yaml"
    file.write_text(
        "version: 1\nrules:\n  - name: ok\n    when: {likely_cause: [slow_node]}\n    playbook: resume\n"
        "  - name: typo\n    when: {likely_cause: [stuck_lock]}\n    playbook: release_lok\n",
        encoding="utf-8",
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(file, catalog=load_plugins([]))
    assert "rules.1.playbook: unknown playbook 'release_lok'" in str(caught.value)
    assert str(caught.value).endswith("[line 8, rule 'typo']")


def diagnosed(dag: str | None, agent: str | None) -> Diagnosis:
    from datetime import UTC, datetime

    now = datetime(2026, 3, 1, tzinfo=UTC)
    return Diagnosis(
        execution_id="e1",
        started_at=now,
        completed_at=now,
        findings=[],
        likely_cause="slow_node",
        dag_id=dag,
        agent_id=agent,
    )


def test_label_matchers_select_rules_by_dag_and_agent() -> None:
    policy = parse_policy(
        {
            "rules": [
                {
                    "name": "emissions",
                    "when": {"dag": ["emissions-*"], "agent": ["scope?"]},
                    "playbook": None,
                },
                {"name": "rest", "when": {"likely_cause": ["slow_node"]}, "playbook": "cancel"},
            ]
        },
        catalog=load_plugins([]),
    )
    assert policy.first_match(diagnosed("emissions-eu", "scope1")).name == "emissions"  # type: ignore[union-attr]
    assert policy.first_match(diagnosed("emissions-eu", "report")).name == "rest"  # type: ignore[union-attr]
    assert policy.first_match(diagnosed("billing", "scope1")).name == "rest"  # type: ignore[union-attr]
    assert policy.first_match(diagnosed(None, None)).name == "rest"  # type: ignore[union-attr]


# -- plugin steps in the runner ----------------------------------------------------------------------


def fixed(number: int, name: str, outcome: StepStatus, **evidence: Any) -> DiagnosticStep:
    async def run(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
        return Finding(
            step=number, name=name, status=outcome, summary=f"{name} says {outcome}", evidence=evidence
        )

    return DiagnosticStep(number, name, run)


STEP1 = fixed(1, "execution", StepStatus.OK, status="running")
QUEUE_STEP = DiagnosticStep(
    20, "queue_depth", queue_depth, timeout_seconds=2.0, causes=frozenset({"queue_backlog"})
)


async def test_a_plugin_steps_cause_is_used_when_the_runbook_finds_none(
    make_ctx: Callable[..., DiagnosticContext],
) -> None:
    diagnosis = await diagnose(make_ctx(), "e1", steps=[STEP1, QUEUE_STEP])
    assert diagnosis.likely_cause == "queue_backlog"
    assert diagnosis.cause_evidence == ["step 20 (queue_depth): queue orders has 12,000 messages waiting"]
    assert [(f.step, f.name) for f in diagnosis.findings] == [(1, "execution"), (20, "queue_depth")]


async def test_the_runbooks_cause_outranks_a_plugins(make_ctx: Callable[..., DiagnosticContext]) -> None:
    gone = fixed(1, "execution", StepStatus.OK, status="completed")
    diagnosis = await diagnose(make_ctx(), "e1", steps=[gone, QUEUE_STEP])
    assert diagnosis.likely_cause == "not_stuck"


async def test_a_cause_the_step_did_not_declare_is_ignored(
    make_ctx: Callable[..., DiagnosticContext],
) -> None:
    undeclared = dataclasses.replace(QUEUE_STEP, causes=frozenset({"something_else"}))
    diagnosis = await diagnose(make_ctx(), "e1", steps=[STEP1, undeclared])
    assert diagnosis.likely_cause == "unknown"


async def test_plugin_steps_run_concurrently_under_their_own_timeout(
    make_ctx: Callable[..., DiagnosticContext],
) -> None:
    both_started = asyncio.Barrier(2)

    async def waits_for_the_other(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
        await both_started.wait()  # deadlocks (and times out) unless the two run at once
        return Finding(step=1, name="x", status=StepStatus.OK, summary="met")

    async def hangs(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
        await both_started.wait()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    steps = [
        STEP1,
        DiagnosticStep(30, "meets", waits_for_the_other, timeout_seconds=5.0),
        DiagnosticStep(31, "hangs", hangs, timeout_seconds=0.05),
    ]
    diagnosis = await diagnose(make_ctx(), "e1", steps=steps)
    meets, hung = diagnosis.finding(30), diagnosis.finding(31)
    assert meets is not None and meets.summary == "met" and meets.name == "meets"
    assert hung is not None and hung.status is StepStatus.ERROR
    assert hung.summary == "step timed out after 0.05s"


async def test_a_plugin_step_that_returns_no_finding_is_an_error_finding(
    make_ctx: Callable[..., DiagnosticContext],
) -> None:
    async def wrong(ctx: DiagnosticContext, state: DiagnosisState) -> Finding:
        return {"status": "ok"}  # type: ignore[return-value]

    diagnosis = await diagnose(make_ctx(), "e1", steps=[STEP1, DiagnosticStep(40, "wrong", wrong)])
    finding = diagnosis.finding(40)
    assert finding is not None and finding.status is StepStatus.ERROR
    assert finding.summary == "step failed: TypeError: the step returned dict, not a Finding"


# -- what plugins get ----------------------------------------------------------------------------------


def _reachable(root: object, depth: int = 3) -> list[object]:
    """Objects reachable from `root` through public attributes (what a plugin sees without poking)."""
    seen: list[object] = [root]
    frontier = [root]
    for _ in range(depth):
        nxt = []
        for obj in frontier:
            for name in dir(obj):
                if name.startswith("_"):
                    continue
                try:
                    value = getattr(obj, name)
                except Exception:
                    continue
                if callable(value) or isinstance(value, str | int | float | bool | type(None)):
                    continue
                if all(value is not s for s in seen):
                    seen.append(value)
                    nxt.append(value)
        frontier = nxt
    return seen


async def test_a_playbooks_context_reaches_clients_and_a_ledger_never_the_store(
    tmp_path: Path, make_ctx: Callable[..., DiagnosticContext], clock: FakeClock
) -> None:
    store = await WatchdogStore.open(f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}", clock=clock)
    try:
        diagnostic = make_ctx()
        ctx = PlaybookContext(
            incident_id=1,
            execution_id="e1",
            clients=diagnostic.clients,
            ledger=StoreLedger(store),
            clock=clock,
        )
        assert not any(isinstance(obj, WatchdogStore) for obj in _reachable(ctx))
        assert not any(isinstance(obj, WatchdogStore) for obj in _reachable(diagnostic))
        assert {f.name for f in dataclasses.fields(PlaybookContext)} == {
            "incident_id",
            "execution_id",
            "clients",
            "ledger",
            "limits",
            "clock",
            "tracer",  # spans of its actions (watchdog.action): no store behind it (asserted above)
        }
    finally:
        await store.close()


# -- at start, and `policy check` --------------------------------------------------------------------


def _settings(tmp_path: Path, policy: Path) -> WatchdogSettings:
    return WatchdogSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'wd.db'}",
        orchestrator_url=f"http://127.0.0.1:{free_port()}",
        orchestrator_timeout_seconds=1.0,
        policy_file=policy,
    )


BROKEN_FLUSH = EntryPoint("flush_cache", "tests.watchdog.no_such_module:FlushCache", PLAYBOOK_GROUP)


async def test_the_service_starts_without_a_broken_plugin_the_policy_does_not_use(
    tmp_path: Path, _no_pending_tasks: None
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - {name: r, when: {likely_cause: [queue_backlog]}, playbook: null}\n")
    wd = await build_watchdog(
        _settings(tmp_path, policy), plugins=load_plugins([BROKEN_FLUSH, QUEUE]), respond=False
    )
    try:
        assert [p.name for p in wd.plugins.problems] == ["flush_cache"]
        assert "flush_cache" not in wd.responder.remediation.registry
        metrics = wd.metrics.render().decode()
        assert (
            'gl_watchdog_plugin_problems{group="gl_watchdog.playbooks",plugin="flush_cache"} 1.0' in metrics
        )
    finally:
        await wd.aclose()


async def test_the_service_does_not_start_when_the_policy_uses_a_broken_plugin(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "rules:\n  - name: flush\n    when: {likely_cause: [queue_backlog]}\n    playbook: flush_cache\n"
    )
    with pytest.raises(PolicyError) as caught:
        await build_watchdog(_settings(tmp_path, policy), plugins=load_plugins([BROKEN_FLUSH, QUEUE]))
    assert "playbook 'flush_cache' is a plugin that failed to load" in str(caught.value)
    assert "[line 4, rule 'flush']" in str(caught.value)


def test_policy_check_exits_0_for_a_valid_file_and_2_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "rules:\n  - {name: slow, when: {likely_cause: [slow_node]}, playbook: increase_node_timeout}\n"
    )
    assert main(["policy", "check", str(good)]) == EXIT_OK
    assert capsys.readouterr().out == f"{good}: ok: 1 rule(s); playbooks used: increase_node_timeout\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "rules:\n  - {name: slow, when: {likely_cause: [slow]}, playbook: increase_node_timeout}\n"
    )
    assert main(["policy", "check", str(bad)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "rules.0.when.likely_cause: no diagnostic step can produce cause 'slow'" in err
    assert "[line 2, rule 'slow']" in err
    assert main(["policy", "check", str(tmp_path / "missing.yaml")]) == EXIT_USAGE
    assert "cannot read policy file" in capsys.readouterr().err
