"""DAG versions and the live limits: the two repositories of definitions (not of runs).

Where it sits: `engine.Engine` registers, reads and updates DAGs through `DagRepository`, and reads
the DAG a run needs inside the run's claiming transaction (`store.executions`) with `read_in`;
`service.OrchestratorService` keeps the live limits (`PUT /admin/limits`) in `LimitRepository`.

A DAG version never changes once stored: `save` stores changed content as the next version and
returns the stored latest version for unchanged content; parsed definitions are kept by (id, version)
in a small cache owned by the repository, so every run of a version shares one `DagDefinition` object.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gl_common.clock import Clock
from gl_common.db import Database
from orchestrator_core.dag import DagDefinition
from orchestrator_core.errors import DagNotFound
from orchestrator_core.hashing import canonical_json, sha256_hex
from orchestrator_core.records import LimitOverride
from orchestrator_core.store.database import upsert
from orchestrator_core.store.schema import dags, limit_overrides

DAG_CACHE_SIZE = 256  # parsed DAG versions kept in memory (they never change once stored)


class DagRepository:
    """Stored DAG versions, with the parsed definitions of recent versions cached."""

    def __init__(self, db: Database, clock: Clock, *, cache_size: int = DAG_CACHE_SIZE) -> None:
        self.db = db
        self.clock = clock
        self._cache: dict[tuple[str, int], DagDefinition] = {}
        self._cache_size = cache_size

    async def save(self, dag: DagDefinition) -> DagDefinition:
        """Store a DAG. Unchanged content returns the stored latest version; changed content is stored
        as `max(dag.version, latest + 1)`."""
        content = dag.to_document()
        content.pop("version", None)
        content_hash = sha256_hex(canonical_json(content))
        async with self.db.transaction("save dag") as conn:
            latest = (
                await conn.execute(
                    sa.select(dags.c.version, dags.c.content_hash, dags.c.definition)
                    .where(dags.c.dag_id == dag.dag_id)
                    .order_by(dags.c.version.desc())
                    .limit(1)
                )
            ).first()
            if latest is not None and latest.content_hash == content_hash:
                return self.cached(dag.dag_id, latest.version) or self.parsed(latest.definition)
            version = dag.version if latest is None else max(dag.version, latest.version + 1)
            stored = dag.model_copy(update={"version": version})
            await conn.execute(
                dags.insert().values(
                    dag_id=dag.dag_id,
                    version=version,
                    definition=canonical_json(stored.to_document()),
                    content_hash=content_hash,
                    created_at=self.clock.now(),
                )
            )
        return self._remember(stored)

    async def get(self, dag_id: str, version: int | None = None) -> DagDefinition:
        """A DAG version (the latest without `version`); `DagNotFound` otherwise."""
        if version is not None and (dag_id, version) in self._cache:
            return self._cache[(dag_id, version)]
        async with self.db.transaction("get dag") as conn:
            return await self.read_in(conn, dag_id, version)

    async def read_in(self, conn: AsyncConnection, dag_id: str, version: int | None = None) -> DagDefinition:
        """`get` inside the caller's transaction (one statement for a cached version)."""
        if version is not None and (dag_id, version) in self._cache:
            return self._cache[(dag_id, version)]
        query = sa.select(dags.c.version).where(dags.c.dag_id == dag_id)
        if version is None:
            query = query.order_by(dags.c.version.desc()).limit(1)
        else:
            query = query.where(dags.c.version == version)
        found = (await conn.execute(query)).scalar()
        if found is None:
            what = f"DAG {dag_id!r}" + ("" if version is None else f" version {version}")
            raise DagNotFound(f"{what} is not registered")
        cached = self.cached(dag_id, int(found))
        if cached is not None:
            return cached
        text: str = (
            await conn.execute(
                sa.select(dags.c.definition).where(dags.c.dag_id == dag_id, dags.c.version == found)
            )
        ).scalar_one()
        return self.parsed(text)

    def cached(self, dag_id: str, version: int) -> DagDefinition | None:
        """The parsed version if this repository has it (for readers on other connections)."""
        return self._cache.get((dag_id, version))

    def parsed(self, definition: str) -> DagDefinition:
        """Parse a stored definition (its `definition` column) and keep it in the cache."""
        return self._remember(DagDefinition.from_document(json.loads(definition)))

    async def latest(self) -> list[DagDefinition]:
        """The latest version of every DAG, by id."""
        newest = (
            sa.select(dags.c.dag_id, sa.func.max(dags.c.version).label("version"))
            .group_by(dags.c.dag_id)
            .subquery()
        )
        query = (
            sa.select(dags.c.definition)
            .join(newest, sa.and_(dags.c.dag_id == newest.c.dag_id, dags.c.version == newest.c.version))
            .order_by(dags.c.dag_id)
        )
        async with self.db.transaction("list dags") as conn:
            rows = (await conn.execute(query)).all()
        return [DagDefinition.from_document(json.loads(row.definition)) for row in rows]

    def _remember(self, dag: DagDefinition) -> DagDefinition:
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[(dag.dag_id, dag.version)] = dag
        return dag


class LimitRepository:
    """The live limits every replica applies (`limit_overrides`), by name."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def get(self) -> dict[str, LimitOverride]:
        """The live limits every replica applies, by name (empty: each replica's settings apply)."""
        async with self.db.transaction("read limit overrides") as conn:
            rows = (await conn.execute(limit_overrides.select())).all()
        return {row.name: LimitOverride(row.name, row.value, row.set_by, row.updated_at) for row in rows}

    async def set(self, values: dict[str, int], set_by: str) -> None:
        """Store (replace) the given live limits in one transaction; the others are left as they are."""
        if not values:
            return
        now = self.clock.now()
        async with self.db.transaction("save limit overrides") as conn:  # two replicas: the last one wins
            await conn.execute(
                upsert(conn, limit_overrides, [limit_overrides.c.name], ["value", "set_by", "updated_at"]),
                [{"name": n, "value": v, "set_by": set_by, "updated_at": now} for n, v in values.items()],
            )

    async def clear(self) -> None:
        """Drop every live limit: each replica goes back to its own settings."""
        async with self.db.transaction("clear limit overrides") as conn:
            await conn.execute(limit_overrides.delete())
