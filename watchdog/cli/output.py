"""How `gl-watchdog` prints: `-o table|json|yaml`, colour only on a terminal, errors on stderr.

Where it sits: every command of `watchdog.cli` prints through an `Output`. The mode is the command's
`-o/--output` (`--format` is the old spelling); without it, `table` on a terminal and `json` when
stdout is a pipe or a file, so scripts get JSON without asking. Tables and the live status line are
rich's; rich uses colour only on a terminal and never when `NO_COLOR` is set. JSON and YAML carry the
API's answer as it is (the same keys as `GET /api/v1/...`), so they are stable for scripts.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TextIO

import click
import yaml
from rich.console import Console, RenderableType
from rich.table import Table

OUTPUT_MODES: Final = ("table", "json", "yaml")


def output_option(*extra: str) -> Callable[[Any], Any]:
    """The `-o/--output` option (`--format` too), with the extra modes a command knows (markdown)."""
    return click.option(
        "-o",
        "--output",
        "--format",
        "output",
        type=click.Choice([*OUTPUT_MODES, *extra]),
        default=None,
        help="output: table (default on a terminal), json (default otherwise), yaml"
        + "".join(f", {mode}" for mode in extra),
    )


def _console(stream: TextIO) -> Console:
    tty = stream.isatty()
    return Console(
        file=stream,
        width=None if tty else shutil.get_terminal_size((160, 24)).columns,
        no_color=bool(os.environ.get("NO_COLOR")) or None,
        highlight=False,
        soft_wrap=False,
    )


@dataclass
class Output:
    """The chosen mode and the consoles of stdout and stderr."""

    mode: str
    out: Console
    err: Console

    @classmethod
    def of(cls, mode: str | None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> Output:
        stdout = stdout or sys.stdout
        chosen = mode or ("table" if stdout.isatty() else "json")
        return cls(chosen, _console(stdout), _console(stderr or sys.stderr))

    @property
    def tty(self) -> bool:
        return self.out.is_terminal

    def emit(self, data: Any, table: Callable[[Any], RenderableType | str | None]) -> None:
        """`data` as JSON or YAML, or `table(data)` rendered (a string is printed as is)."""
        if self.mode == "json":
            self.raw(json.dumps(data, indent=2, default=str) + "\n")
        elif self.mode == "yaml":
            self.raw(yaml.safe_dump(_plain(data), sort_keys=False, allow_unicode=True))
        else:
            rendered = table(data)
            if isinstance(rendered, str):
                self.raw(rendered if rendered.endswith("\n") else rendered + "\n")
            elif rendered is not None:
                self.out.print(rendered)

    def json_line(self, data: Any) -> None:
        """One JSON document on one line (events, as they come)."""
        self.raw(json.dumps(data, default=str) + "\n")

    def raw(self, text: str) -> None:
        self.out.file.write(text)
        self.out.file.flush()

    def note(self, text: str) -> None:
        """A remark for the person (stderr, so it never mixes into JSON on stdout)."""
        self.err.print(text, markup=False, highlight=False)


def _plain(data: Any) -> Any:
    """`data` with what YAML cannot represent (datetimes from local records) as JSON would write it."""
    return json.loads(json.dumps(data, default=str))


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> Table:
    """A rich table with these headers; None cells shown as `-`."""
    grid = Table(*columns, title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    for row in rows:
        grid.add_row(*(cell_text(cell) for cell in row))
    return grid


def cell_text(value: Any) -> str:
    """A cell: `-` for nothing, a timestamp without its microseconds, JSON for structures."""
    if value is None or value == "":
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    if len(text) >= 19 and text[10] == "T" and text[4] == "-":  # an ISO timestamp from the API
        return text[:19].replace("T", " ")
    return text


def brief(data: dict[str, Any] | None, width: int = 100, value_width: int = 40) -> str:
    """`data` in one short line for a person: `k=v` pairs, each value and the whole cut with `…`
    (-o json has it all)."""
    pairs = []
    for key, value in (data or {}).items():
        text = cell_text(value)
        pairs.append(f"{key}={text if len(text) <= value_width else text[: value_width - 1] + '…'}")
    line = ", ".join(pairs)
    return line if len(line) <= width else line[: width - 1] + "…"


def key_values(data: dict[str, Any], *, title: str | None = None) -> Table:
    """A two-column table of a flat answer (nested values as JSON)."""
    return table(("FIELD", "VALUE"), ((key, value) for key, value in data.items()), title=title)
