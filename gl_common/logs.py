"""The log format both services share: one JSON object per line, with the current trace's ids.

`configure_logging` is called once by each service's CLI (`gl-orchestrator serve`, `gl-watchdog
serve`): root logging as JSON lines (`JsonFormatter`) or, for a terminal, plain text. A line carries
`ts`, `level`, `logger`, `message`, every field a caller passed in `extra` (or a `logging.Filter`
added: the watchdog's `incident_id` and `execution_id`), and `trace_id`/`span_id` when the line is
written inside an OpenTelemetry span, so a log line leads to its trace. Values that are not JSON are
written as `str()`: a pydantic `SecretStr` shows as `**********`, never its value.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from opentelemetry import trace

# Attributes every LogRecord has; anything else on a record was passed in `extra` and is a field.
RECORD_ATTRS: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, every `extra` field, and the trace's ids."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in RECORD_ATTRS and not key.startswith("_"):
                line[key] = value
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            line.setdefault("trace_id", trace.format_trace_id(span.trace_id))
            line.setdefault("span_id", trace.format_span_id(span.span_id))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, sort_keys=False)


def configure_logging(
    level: str = "INFO",
    stream: TextIO | None = None,
    *,
    json_lines: bool = True,
    filters: Sequence[logging.Filter] = (),
) -> None:
    """Root logging on `stream` (stderr by default): JSON lines, or plain text; `filters` run on every
    record before it is formatted (they may add fields)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    for log_filter in filters:
        handler.addFilter(log_filter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
