"""The allocator's arena cap (`malloc_arena_max`): passed to glibc's mallopt, applied by `serve`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator_core import cli
from orchestrator_core.malloc import M_ARENA_MAX, glibc_mallopt, limit_malloc_arenas
from orchestrator_core.settings import OrchestratorSettings, load_settings


class RecordingMallopt:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def __call__(self, option: int, value: int) -> int:
        self.calls.append((option, value))
        return self.answer


def test_the_cap_is_passed_to_mallopt_as_m_arena_max() -> None:
    mallopt = RecordingMallopt()
    assert limit_malloc_arenas(2, mallopt) is True
    assert mallopt.calls == [(M_ARENA_MAX, 2)] and M_ARENA_MAX == -8


def test_no_cap_leaves_the_allocator_alone() -> None:
    mallopt = RecordingMallopt()
    assert limit_malloc_arenas(None, mallopt) is False
    assert mallopt.calls == []


def test_a_refused_cap_is_reported_as_not_applied() -> None:
    assert limit_malloc_arenas(2, RecordingMallopt(answer=0)) is False


@pytest.mark.skipif(glibc_mallopt() is None, reason="the C library is not glibc")
def test_glibc_accepts_the_cap() -> None:
    assert limit_malloc_arenas(os.cpu_count() or 2) is True


def test_the_cap_defaults_to_two_and_can_be_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GL_ORCHESTRATOR_"):
            monkeypatch.delenv(name)
    assert load_settings().malloc_arena_max == 2
    monkeypatch.setenv("GL_ORCHESTRATOR_MALLOC_ARENA_MAX", "4")
    assert load_settings().malloc_arena_max == 4
    assert OrchestratorSettings(malloc_arena_max=None).malloc_arena_max is None


def test_serve_applies_the_cap_before_the_service_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in list(os.environ):
        if name.startswith("GL_ORCHESTRATOR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GL_ORCHESTRATOR_MALLOC_ARENA_MAX", "3")
    monkeypatch.setenv("GL_ORCHESTRATOR_API_TOKENS", '["t"]')
    events: list[Any] = []
    monkeypatch.setattr(cli, "limit_malloc_arenas", lambda cap: events.append(("arenas", cap)))

    async def fake_serve(settings: OrchestratorSettings, **_: Any) -> None:
        events.append(("serve", settings.malloc_arena_max))

    monkeypatch.setattr(cli, "serve", fake_serve)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["serve"]) == 0
    assert events == [("arenas", 3), ("serve", 3)]
