"""The shipped plan for each stuck state as docs/architecture.md states it: the table after the
`stuck-plan-table` marker, read so that tests can hold the shipped policy (and a running watchdog) to
it. A helper module, not a test module."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
MARKER = "<!-- stuck-plan-table: read by tests/watchdog/documented_plans.py -->"


def documented_plans() -> dict[str, tuple[str, str | None, bool]]:
    """cause -> (rule, playbook or None for "escalate", approval required) from the docs' table."""
    lines = DOCS.read_text(encoding="utf-8").split(MARKER, 1)[1].strip().splitlines()
    rows: dict[str, tuple[str, str | None, bool]] = {}
    for line in lines[2:]:  # after the header and its rule
        if not line.startswith("|"):
            break
        cause, rule, plan, approval = (cell.strip().strip("`") for cell in line.strip("|").split("|"))
        rows[cause] = (rule, None if plan == "escalate" else plan, approval == "required")
    return rows
