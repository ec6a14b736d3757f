"""Limits of a parsed JSON or YAML document, checked before anything recursive touches it.

Where it sits: `gl_common.http.parse_json` checks every JSON request body with `json_shape_problem`;
`orchestrator_core.dag` checks DAG documents (JSON or YAML) with it too. A document nested too deep
would overflow the stack of recursive code, a YAML alias "bomb" (a few lines whose anchors expand to
millions of values) would hold the event loop for minutes, and a lone surrogate (JSON allows
`"\\ud800"`) cannot be encoded as UTF-8, so no database can store it.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 100
MAX_VALUES = 200_000


def json_shape_problem(value: Any, *, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> str | None:
    """Why a parsed JSON value may not be accepted (too deep, too many values, a lone surrogate that
    UTF-8 cannot encode), or None. Iterative: it cannot overflow the stack itself."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    seen = 0
    while stack:
        current, depth = stack.pop()
        seen += 1
        if seen > max_values:
            return f"too large: more than {max_values} values"
        if depth > max_depth:
            return f"nested deeper than {max_depth} levels"
        if isinstance(current, dict):
            for key, child in current.items():
                if not _encodable(key):
                    return "holds a key that is not valid Unicode (a lone surrogate)"
                stack.append((child, depth + 1))
        elif isinstance(current, list):
            stack.extend((child, depth + 1) for child in current)
        elif isinstance(current, str) and not _encodable(current):
            return "holds a string that is not valid Unicode (a lone surrogate)"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
