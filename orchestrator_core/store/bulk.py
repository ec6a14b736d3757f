"""Bulk upserts of node rows through the driver's executemany: the raw-SQL path of the store.

Where it sits: `store.rundata.write` upserts a batch's traces, checkpoints and provenance records
here (`upsert_many`), and `store.commits` runs the same statements (`upsert_sql`) on its own SQLite
connection. Why it exists: SQLAlchemy Core's executemany processes every parameter of every row in
Python; for 2,000 trace rows on SQLite that measured ~70 ms against ~20 ms through the driver (a wide
level of a checkpointed run writes that many rows at once). The statement is still built from the
table objects (names quoted by the dialect), only the parameter processing is skipped: the caller binds
values the way SQLAlchemy would (`stamp_converter`). A driver whose paramstyle is not known here gets
Core's own executemany.

A row whose primary key is already stored replaces it (`INSERT ... ON CONFLICT (key) DO UPDATE SET`
every other column, on SQLite and PostgreSQL alike): one statement per table, and a re-sent batch
replaces its own rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator_core.store.database import upsert

_PLACEHOLDER: dict[str, Callable[[int], str]] = {
    "qmark": lambda i: "?",
    "numeric_dollar": lambda i: f"${i + 1}",
    "format": lambda i: "%s",
}

StampConverter = Callable[[datetime | None], Any]


def _keep(value: datetime | None) -> datetime | None:
    return value


def sqlite_stamp(value: datetime | None) -> str | None:
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
    return sqlite_stamp if conn.dialect.name == "sqlite" else _aware_stamp


def upsert_sql(dialect: Dialect, table: sa.Table, names: Sequence[str]) -> str | None:
    """`INSERT INTO table (names) VALUES (...) ON CONFLICT (primary key) DO UPDATE SET` the other
    columns, with the driver's placeholders; None for a paramstyle not known here."""
    placeholder = _PLACEHOLDER.get(dialect.paramstyle)
    if placeholder is None:
        return None
    quote = dialect.identifier_preparer.quote
    keys = [column.name for column in table.primary_key.columns]
    columns = ", ".join(quote(n) for n in names)
    marks = ", ".join(placeholder(i) for i in range(len(names)))
    updates = ", ".join(f"{quote(n)} = excluded.{quote(n)}" for n in names if n not in keys)
    return (
        f"INSERT INTO {quote(table.name)} ({columns}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO UPDATE SET {updates}"
    )


async def upsert_many(
    conn: AsyncConnection, table: sa.Table, names: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """Upsert `rows` (tuples in the order of `names`, datetimes converted with `stamp_converter`)."""
    if not rows:
        return
    statement = upsert_sql(conn.dialect, table, names)
    if statement is None:
        keys = list(table.primary_key.columns)
        update = [n for n in names if n not in {k.name for k in keys}]
        await conn.execute(
            upsert(conn, table, keys, update), [dict(zip(names, row, strict=True)) for row in rows]
        )
        return
    await conn.exec_driver_sql(statement, rows)
