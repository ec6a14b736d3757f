"""A Diagnosis as JSON (API, audit log), Markdown (notifier messages, incident pages) and a plain-text
terminal table (`gl-watchdog diagnose`, the demo).

Pure functions over `watchdog_sdk.diagnosis.Diagnosis`; no I/O.
"""

from __future__ import annotations

import json
from typing import Any

from watchdog_sdk.diagnosis import Diagnosis, Finding

STATUS_MARK = {"ok": "OK", "problem": "PROBLEM", "unknown": "UNKNOWN", "error": "ERROR"}
SUMMARY_WIDTH = 90


def to_json(diagnosis: Diagnosis, *, indent: int | None = 2) -> str:
    """The diagnosis as a JSON document (every field, evidence included)."""
    return json.dumps(to_dict(diagnosis), indent=indent, sort_keys=False, default=str)


def to_dict(diagnosis: Diagnosis) -> dict[str, Any]:
    """The diagnosis as JSON-compatible data."""
    return diagnosis.model_dump(mode="json")


def _facts(diagnosis: Diagnosis) -> list[tuple[str, str]]:
    facts = [("execution", diagnosis.execution_id)]
    if diagnosis.dag_id:
        facts.append(("DAG", diagnosis.dag_id))
    if diagnosis.stuck_node_id:
        facts.append(("stuck node", diagnosis.stuck_node_id))
    if diagnosis.agent_id:
        facts.append(("agent", diagnosis.agent_id))
    facts.append(("likely cause", diagnosis.likely_cause))
    return facts


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(diagnosis: Diagnosis) -> str:
    """A Markdown report: facts, the cause with its evidence, and one table row per step."""
    lines = [f"## Diagnosis of execution `{diagnosis.execution_id}`", ""]
    for label, value in _facts(diagnosis):
        lines.append(f"- **{label}:** `{value}`")
    lines.append("")
    if diagnosis.cause_evidence:
        lines.append("**Evidence:**")
        lines.append("")
        lines += [f"- {_md_cell(item)}" for item in diagnosis.cause_evidence]
        lines.append("")
    lines += ["| step | name | status | summary |", "| ---: | --- | --- | --- |"]
    for f in diagnosis.findings:
        lines.append(f"| {f.step} | {f.name} | {STATUS_MARK[f.status.value]} | {_md_cell(f.summary)} |")
    elapsed = (diagnosis.completed_at - diagnosis.started_at).total_seconds()
    lines += ["", f"_Diagnosed at {diagnosis.completed_at.isoformat()} in {elapsed:.1f}s._", ""]
    return "\n".join(lines)


def _wrap(text: str, width: int) -> list[str]:
    words = text.split()
    out: list[str] = []
    current = ""
    for word in words:
        while len(word) > width:  # a very long token (URL, id) is cut
            if current:
                out.append(current)
                current = ""
            out.append(word[:width])
            word = word[width:]
        if not current:
            current = word
        elif len(current) + 1 + len(word) <= width:
            current += " " + word
        else:
            out.append(current)
            current = word
    if current or not out:
        out.append(current)
    return out


def to_table(diagnosis: Diagnosis, *, summary_width: int = SUMMARY_WIDTH) -> str:
    """A plain-text report with aligned columns (no colours, no box-drawing characters)."""
    out = []
    label_width = max(len(label) for label, _ in _facts(diagnosis))
    for label, value in _facts(diagnosis):
        out.append(f"{label.ljust(label_width)}  {value}")
    indent = " " * (label_width + 2)
    for item in diagnosis.cause_evidence:
        first, *more = _wrap(item, SUMMARY_WIDTH + 20)
        out.append(f"{'evidence'.ljust(label_width)}  {first}")
        out += [f"{indent}{line}" for line in more]
    out.append("")
    rows = [("STEP", "NAME", "STATUS", "TIME", "SUMMARY")]
    rows += [_row(f) for f in diagnosis.findings]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        summary_lines = _wrap(row[4], summary_width)
        prefix = "  ".join(
            cell.rjust(widths[i]) if i in (0, 3) else cell.ljust(widths[i]) for i, cell in enumerate(row[:4])
        )
        out.append(f"{prefix}  {summary_lines[0]}".rstrip())
        indent = " " * (len(prefix) + 2)
        out += [f"{indent}{more}" for more in summary_lines[1:]]
    return "\n".join(out) + "\n"


def _row(f: Finding) -> tuple[str, str, str, str, str]:
    return (str(f.step), f.name, STATUS_MARK[f.status.value], f"{f.duration_ms:.0f}ms", f.summary)
