"""The distribution is ours: `import watchdog` is gl-watchdog's package, not the PyPI one."""

import importlib.metadata

import pytest

import watchdog


def test_import_watchdog_is_ours() -> None:
    assert getattr(watchdog, "GL_WATCHDOG_PACKAGE", False) is True
    assert watchdog.__file__ is not None and "site-packages/watchdog/" not in watchdog.__file__


def test_pypi_watchdog_is_not_installed() -> None:
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("watchdog")


def test_console_scripts_are_declared() -> None:
    scripts = {ep.name for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert {"gl-orchestrator", "gl-watchdog"} <= scripts
