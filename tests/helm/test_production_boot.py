"""values-production.yaml boots the real services on PostgreSQL and Redis.

The production example reads everything from `secrets.existingSecret`. The test plays the operator: it
fills that Secret with exactly the keys docs/operations.md lists (URLs of fresh PostgreSQL databases and
of the test Redis), resolves the rendered `secretKeyRef`s and mounted files from it, and starts both
services with the rendered environment. Both must become ready, the orchestrator's schema must land in
its PostgreSQL database and a running execution's ownership lock in Redis, and the watchdog must accept
its token.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
import redis.asyncio as aioredis

from tests.conftest import free_port, fresh_postgres_database
from tests.helm.chart import Manifest, one
from tests.helm.services import (
    HTTP_TIMEOUT,
    Service,
    cancel_running,
    chart_command,
    chart_env,
    start_service,
    start_stuck_run,
    stop_service,
    write_mounts,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

ORCHESTRATOR = "orchestrator-service"
WATCHDOG = "gl-watchdog"


def _plain_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _public_tables(sqlalchemy_url: str) -> set[str]:
    connection = await asyncpg.connect(_plain_dsn(sqlalchemy_url), timeout=5)
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await connection.close()
    return {row["tablename"] for row in rows}


async def _start(
    deployment: Manifest, root: Path, overrides: dict[str, str], secret: dict[str, str], token: str
) -> Service:
    port = int(overrides[next(k for k in overrides if k.endswith("_PORT"))])
    env = chart_env(deployment, root, overrides, secret)
    command = chart_command(deployment)
    log = root / f"{deployment['metadata']['name']}.log"
    return await asyncio.to_thread(start_service, command, env, port, token, log)


async def test_production_values_boot_on_postgresql_and_redis(
    prod_manifests: list[Manifest], redis_url: str, tmp_path: Path
) -> None:
    orchestrator_deployment = one(prod_manifests, "Deployment", ORCHESTRATOR)
    watchdog_deployment = one(prod_manifests, "Deployment", WATCHDOG)
    policy = one(prod_manifests, "ConfigMap", "gl-watchdog-policy")["data"]["policy.yaml"]
    async with fresh_postgres_database() as orchestrator_db, fresh_postgres_database() as watchdog_db:
        # secrets.existingSecret, with the keys docs/operations.md tells the operator to create
        secret = {
            "orchestrator-api-token": secrets.token_hex(32),
            "watchdog-api-token": secrets.token_hex(32),
            "approval-signing-key": secrets.token_hex(48),
            "orchestrator-database-url": orchestrator_db,
            "watchdog-database-url": watchdog_db,
            "redis-url": redis_url,
            "notifier-url": "http://127.0.0.1:9/unused-hook",
        }
        write_mounts(tmp_path, secret, policy)
        orchestrator_port, watchdog_port = free_port(), free_port()
        orchestrator = await _start(
            orchestrator_deployment,
            tmp_path,
            {"GL_ORCHESTRATOR_HOST": "127.0.0.1", "GL_ORCHESTRATOR_PORT": str(orchestrator_port)},
            secret,
            secret["orchestrator-api-token"],
        )
        try:
            watchdog = await _start(
                watchdog_deployment,
                tmp_path,
                {
                    "GL_WATCHDOG_HOST": "127.0.0.1",
                    "GL_WATCHDOG_PORT": str(watchdog_port),
                    "GL_WATCHDOG_ORCHESTRATOR_URL": orchestrator.url,
                    # No Kubernetes API here.
                    "GL_WATCHDOG_KUBERNETES_ENABLED": "false",
                },
                secret,
                secret["watchdog-api-token"],
            )
            try:
                async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
                    for service in (orchestrator, watchdog):
                        ready = await client.get(f"{service.url}/readyz")
                        assert ready.status_code == 200, f"{service.url}/readyz: {ready.text}"
                    incidents = await client.get(f"{watchdog.url}/api/v1/incidents", headers=watchdog.headers)
                    assert incidents.status_code == 200, incidents.text
                execution_id = await asyncio.to_thread(start_stuck_run, orchestrator, "prod-boot", 600)
                store = aioredis.Redis.from_url(redis_url, socket_timeout=5)
                try:
                    assert await store.exists(f"gl:orchestrator:lock:{execution_id}") == 1
                finally:
                    await store.aclose()
                assert await _public_tables(orchestrator_db), (
                    "no orchestrator tables in its PostgreSQL database"
                )
                assert await _public_tables(watchdog_db), "no watchdog tables in its PostgreSQL database"
            finally:
                await asyncio.to_thread(stop_service, watchdog)
        finally:
            await asyncio.to_thread(cancel_running, orchestrator)
            await asyncio.to_thread(stop_service, orchestrator)
