"""Bulk inserts of node rows through the driver's executemany: the one raw-SQL path of the store.

Where it sits: `store.rundata.write_rows` inserts a batch's traces, checkpoints and provenance records
here. Why it exists: SQLAlchemy Core's executemany processes every parameter of every row in Python;
for 2,000 trace rows on SQLite that measured ~70 ms against ~20 ms through the driver (a wide level
of a checkpointed run writes that many rows at once). The statement is still built from the table
objects (names quoted by the dialect), only the parameter processing is skipped: the caller binds
values the way SQLAlchemy would (`stamp_converter`). A driver whose paramstyle is not known here gets
Core's own executemany.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

_PLACEHOLDER: dict[str, Callable[[int], str]] = {
    "qmark": lambda i: "?",
    "numeric_dollar": lambda i: f"${i + 1}",
    "format": lambda i: "%s",
}

StampConverter = Callable[[datetime | None], Any]


def _keep(value: datetime | None) -> datetime | None:
    return value


def _sqlite_stamp(value: datetime | None) -> str | None:
    """What SQLAlchemy's SQLite DATETIME stores (`%Y-%m-%d %H:%M:%S.%f`, naive UTC), without strftime."""
    if value is None:
        return None
    if value.tzinfo is UTC:  # what the clocks hand out: drop the "+00:00"
        return value.isoformat(" ", "microseconds")[:-6]
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _aware_stamp(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def stamp_converter(conn: AsyncConnection) -> StampConverter:
    """How `insert_many` wants UTC datetimes bound: the one conversion SQLAlchemy would have done
    (naive text on SQLite, aware on PostgreSQL), or untouched when Core does the insert itself."""
    if conn.dialect.paramstyle not in _PLACEHOLDER:
        return _keep
    return _sqlite_stamp if conn.dialect.name == "sqlite" else _aware_stamp


async def insert_many(
    conn: AsyncConnection, table: sa.Table, names: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """Insert `rows` (tuples in the order of `names`, datetimes converted with `stamp_converter`)."""
    if not rows:
        return
    placeholder = _PLACEHOLDER.get(conn.dialect.paramstyle)
    if placeholder is None:
        await conn.execute(table.insert(), [dict(zip(names, row, strict=True)) for row in rows])
        return
    preparer = conn.dialect.identifier_preparer
    columns = ", ".join(preparer.quote(n) for n in names)
    marks = ", ".join(placeholder(i) for i in range(len(names)))
    statement = f"INSERT INTO {preparer.quote(table.name)} ({columns}) VALUES ({marks})"
    await conn.exec_driver_sql(statement, rows)
