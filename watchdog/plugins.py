"""Plugins: playbooks and diagnostic steps from entry points, loaded once at start into one catalog.

Called by the composition root (`watchdog.assembly.build_watchdog`), the policy loader
(`watchdog.policy`, which checks rules against what is loaded) and the CLI (`diagnose`, `policy
check`). Two entry-point groups:

    gl_watchdog.playbooks    a `watchdog_sdk.playbook.Playbook` subclass (built with no arguments) or
                             instance; the entry point's name is the playbook's `name`
    gl_watchdog.diagnostics  a `watchdog_sdk.diagnostic_step.DiagnosticStep`, numbered 9-99

The built-in playbooks (`playbooks.registry.default_registry`) and steps 1-8
(`watchdog.diagnostics.runner.STEPS`) go through the same checks first, so they are ordinary entries
of the same registry; a plugin cannot replace one (a duplicate name or number is refused).

A plugin that cannot be loaded (import error, wrong type, bad parameter model, duplicate) is left
out and reported as a `PluginProblem` naming it and the reason: logged here, counted by the
`gl_watchdog_plugin_problems` metric, and named by the policy check when the policy references it,
in which case the service does not start (`watchdog.policy`). Plugins get what the built-ins get:
clients, a ledger and a clock through their context, never the watchdog's store, and a playbook
runs only through the remediation state machine (modes, approvals, budgets, breaker, audit).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pydantic import BaseModel

from playbooks.registry import default_registry
from watchdog.diagnostics.runner import BUILTIN_CAUSES, STEPS
from watchdog_sdk.diagnosis import MAX_STEP, RUNBOOK_STEPS
from watchdog_sdk.diagnostic_step import DiagnosticStep
from watchdog_sdk.outcomes import Risk
from watchdog_sdk.playbook import Playbook
from watchdog_sdk.registry import Registry

log = logging.getLogger(__name__)

PLAYBOOK_GROUP = "gl_watchdog.playbooks"
DIAGNOSTIC_GROUP = "gl_watchdog.diagnostics"
BUILTIN = "built-in"


@dataclass(frozen=True)
class PluginProblem:
    """A plugin left out at start: its group, its entry point's name, where it came from, and why."""

    group: str
    name: str
    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.group} plugin {self.name!r} ({self.source}) not loaded: {self.reason}"


@dataclass(frozen=True)
class Candidate:
    """One entry to check: a group, a name, where it comes from and how to get its object."""

    group: str
    name: str
    source: str
    load: Callable[[], object]


@dataclass(frozen=True)
class PluginCatalog:
    """What was loaded: the one playbook registry, every diagnostic step, and the plugins left out."""

    registry: Registry
    steps: tuple[DiagnosticStep, ...]
    problems: tuple[PluginProblem, ...] = ()

    @property
    def causes(self) -> frozenset[str]:
        """Every likely cause a diagnosis can name: the runner's and those plugin steps declare."""
        return BUILTIN_CAUSES.union(*(step.causes for step in self.steps))

    @property
    def step_numbers(self) -> frozenset[int]:
        return frozenset(step.number for step in self.steps)

    def problem(self, group: str, name: str) -> PluginProblem | None:
        """Why the plugin `name` of `group` was left out, if it was."""
        return next((p for p in self.problems if p.group == group and p.name == name), None)


def builtin_candidates() -> list[Candidate]:
    """The built-in playbooks and steps 1-8, as entries of their groups."""
    playbooks = [Candidate(PLAYBOOK_GROUP, p.name, BUILTIN, _constant(p)) for p in default_registry()]
    steps = [Candidate(DIAGNOSTIC_GROUP, s.name, BUILTIN, _constant(s)) for s in STEPS]
    return playbooks + steps


def _constant(obj: object) -> Callable[[], object]:
    return lambda: obj


def entry_point_candidates(points: Iterable[EntryPoint] | None = None) -> list[Candidate]:
    """The installed entry points of both groups (or `points`, for tests), as candidates."""
    if points is None:
        points = [*entry_points(group=PLAYBOOK_GROUP), *entry_points(group=DIAGNOSTIC_GROUP)]
    return [Candidate(ep.group, ep.name, _source(ep), ep.load) for ep in points]


def load_plugins(points: Iterable[EntryPoint] | None = None) -> PluginCatalog:
    """The built-ins, then every plugin entry point (installed ones when `points` is None), checked
    and loaded into one catalog; each one left out is logged with its reason."""
    registry = Registry()
    steps: list[DiagnosticStep] = []
    problems: list[PluginProblem] = []
    candidates = builtin_candidates() + entry_point_candidates(points)
    for candidate in candidates:
        try:
            if candidate.group == PLAYBOOK_GROUP:
                playbook = _playbook(candidate)
                if playbook.name in registry:
                    raise _Refused(f"a playbook named {playbook.name!r} is already registered")
                registry.add(playbook)
            elif candidate.group == DIAGNOSTIC_GROUP:
                steps.append(_step(candidate, steps))
            else:
                raise _Refused(f"unknown entry point group {candidate.group!r}")
        except _Refused as exc:
            problems.append(PluginProblem(candidate.group, candidate.name, candidate.source, str(exc)))
    for problem in problems:
        log.error("%s", problem)
    return PluginCatalog(registry=registry, steps=tuple(steps), problems=tuple(problems))


@functools.cache
def installed_plugins() -> PluginCatalog:
    """`load_plugins()` over the installed entry points, once per process (what the policy loader
    and the CLI use when not given a catalog)."""
    return load_plugins()


# -- checks ------------------------------------------------------------------------------------------


class _Refused(Exception):
    """A candidate cannot be loaded; the message is the reason."""


def _load(candidate: Candidate) -> object:
    try:
        return candidate.load()
    except Exception as exc:  # an import error or a crash at import: the plugin's bug, reported
        raise _Refused(f"cannot be imported: {type(exc).__name__}: {exc}") from exc


def _playbook(candidate: Candidate) -> Playbook[Any]:
    obj = _load(candidate)
    if inspect.isclass(obj) and issubclass(obj, Playbook):
        try:
            obj = obj()
        except Exception as exc:
            raise _Refused(f"cannot be built: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, Playbook):
        raise _Refused(f"is a {_kind(obj)}, not a watchdog_sdk.playbook.Playbook subclass or instance")
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name:
        raise _Refused("has no name (a non-empty str class attribute `name`)")
    if name != candidate.name:
        raise _Refused(f"the entry point's name differs from the playbook's name {name!r}")
    if not isinstance(getattr(obj, "risk", None), Risk):
        raise _Refused(f"risk must be one of {[r.value for r in Risk]}, got {getattr(obj, 'risk', None)!r}")
    if not isinstance(getattr(obj, "summary", None), str):
        raise _Refused("has no summary (a str class attribute `summary`)")
    model = getattr(obj, "params_model", None)
    if not (inspect.isclass(model) and issubclass(model, BaseModel)):
        raise _Refused(f"params_model must be a pydantic model class, got {_kind(model)}")
    try:
        model.model_json_schema()
    except Exception as exc:
        raise _Refused(f"bad parameter model {model.__name__}: {type(exc).__name__}: {exc}") from exc
    return obj


def _step(candidate: Candidate, loaded: list[DiagnosticStep]) -> DiagnosticStep:
    step = _load(candidate)
    if not isinstance(step, DiagnosticStep):
        raise _Refused(f"is a {_kind(step)}, not a watchdog_sdk.diagnostic_step.DiagnosticStep")
    if step.name != candidate.name:
        raise _Refused(f"the entry point's name differs from the step's name {step.name!r}")
    first = 1 if candidate.source == BUILTIN else RUNBOOK_STEPS + 1
    if not isinstance(step.number, int) or not first <= step.number <= MAX_STEP:
        raise _Refused(f"step number must be {first}-{MAX_STEP}, got {step.number!r}")
    if not callable(step.run):
        raise _Refused("its run is not callable")
    if step.timeout_seconds is not None and not step.timeout_seconds > 0:
        raise _Refused(f"timeout_seconds must be positive, got {step.timeout_seconds!r}")
    if not all(isinstance(cause, str) and cause for cause in step.causes):
        raise _Refused("causes must be non-empty strings")
    for other in loaded:
        if other.number == step.number or other.name == step.name:
            raise _Refused(f"step {other.number} ({other.name}) is already registered")
    return step


def _kind(obj: object) -> str:
    return f"class {obj.__name__}" if inspect.isclass(obj) else type(obj).__name__


def _source(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else ep.value
