"""The shared fixtures reach real services."""

import asyncpg
import redis.asyncio as aioredis


async def test_postgres_fixture_gives_an_empty_database(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url.replace("+asyncpg", ""), timeout=5)
    try:
        tables = await conn.fetchval(
            "select count(*) from information_schema.tables where table_schema='public'"
        )
    finally:
        await conn.close()
    assert tables == 0


async def test_redis_fixture_is_flushed(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        assert await client.dbsize() == 0
        await client.set("gl:test", "1")
        assert await client.get("gl:test") == b"1"
    finally:
        await client.aclose()
