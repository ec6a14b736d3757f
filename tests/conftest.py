"""Shared test fixtures: real PostgreSQL and Redis, and hygiene checks for every test.

Services are real, as users have them. Redis: a private `redis-server` started on a random loopback
port for the session (flushed before each test that asks for it), or `GL_TEST_REDIS_URL`. PostgreSQL:
the server at `GL_TEST_POSTGRES_DSN` (default `postgresql://postgres@127.0.0.1:5432/postgres`), with a
fresh database per test. When a service is missing, the test is skipped locally and fails under CI
(`CI` set), so CI can never pass by skipping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from sqlalchemy import event
from sqlalchemy.pool import Pool

IN_CI = bool(os.environ.get("CI"))
POSTGRES_ADMIN_DSN = os.environ.get("GL_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def missing_service(reason: str) -> None:
    """Skip the test locally; fail it under CI, where every service must be present."""
    if IN_CI:
        pytest.fail(f"required service missing under CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (closed again before return; fine for test servers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[httpx.AsyncClient]:
    """`app` served on a free loopback port for the block, and an httpx client of it."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield client
    finally:
        await runner.cleanup()


def wait_for_port(port: int, timeout: float = 10.0) -> bool:
    """True once something accepts connections on 127.0.0.1:port, False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


# -- hygiene ---------------------------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every async test the pending-task check."""
    for item in items:
        function = getattr(item, "function", None)
        if function is not None and asyncio.iscoroutinefunction(function):
            item.fixturenames.append("_no_pending_tasks")  # type: ignore[attr-defined]


@pytest.fixture
async def _no_pending_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running behind it (kopf's `_no_asyncio_pending_tasks`)."""
    before = asyncio.all_tasks()
    yield
    # Give tasks that were cancelled during teardown one loop turn to finish.
    await asyncio.sleep(0)
    leftover = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
    if leftover:
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)
        names = ", ".join(sorted(t.get_name() + ":" + repr(t.get_coro()) for t in leftover))
        pytest.fail(f"test left {len(leftover)} asyncio task(s) running: {names}")


# Every database connection a SQLAlchemy pool opens, until the pool closes it: id -> the test that
# opened it. A connection nobody closes (a store never closed, or one handed back to a pool that its
# store had already disposed of) is otherwise reported by the garbage collector as a ResourceWarning
# in whichever later test happens to be running, which is how CI once failed an unrelated test.
_open_db_connections: dict[int, str] = {}
_current_test = ["(outside a test)"]


@event.listens_for(Pool, "connect")
def _db_connection_opened(dbapi_connection: object, _record: object) -> None:
    _open_db_connections[id(dbapi_connection)] = _current_test[0]


@event.listens_for(Pool, "close")
def _db_connection_closed(dbapi_connection: object, _record: object) -> None:
    _open_db_connections.pop(id(dbapi_connection), None)


@event.listens_for(Pool, "close_detached")
def _db_connection_closed_detached(dbapi_connection: object) -> None:
    _open_db_connections.pop(id(dbapi_connection), None)


@pytest.fixture(autouse=True)
def _no_open_db_connections(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves database connections open behind it (set up first, checked last)."""
    _current_test[0] = request.node.nodeid
    yield
    left = [key for key, test in _open_db_connections.items() if test == request.node.nodeid]
    for key in left:
        del _open_db_connections[key]
    if left:
        pytest.fail(
            f"test left {len(left)} database connection(s) open: a store not closed, or a task still "
            "using a connection when its store was closed"
        )


async def close_during_a_transaction(
    close: Callable[[], Awaitable[None]],
    transaction: Callable[[asyncio.Event, asyncio.Event], Awaitable[None]],
) -> list[str]:
    """Run `transaction(inside, finish)` (it sets `inside` within its transaction, then waits for
    `finish`) and call `close` meanwhile; return the order in which they ended. A store that lets a
    transaction under way end before it closes gives ["committed", "closed"] (`finish` is set half a
    second after `close` was called)."""
    inside, finish = asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def under_way() -> None:
        await transaction(inside, finish)
        order.append("committed")

    holder = asyncio.create_task(under_way())
    await inside.wait()
    closing = asyncio.create_task(close())
    closing.add_done_callback(lambda _: order.append("closed"))
    await asyncio.wait([closing], timeout=0.5)
    finish.set()
    await asyncio.gather(holder, closing)
    return order


# -- Redis -----------------------------------------------------------------------------------------


def redis_server_argv(binary: str, port: int, workdir: str) -> list[str]:
    """A private, non-persistent `redis-server` on a loopback port (the session's, or a test's own)."""
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        workdir,
    ]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str | None]:
    """URL of a Redis server for this session: a private redis-server if the binary exists."""
    explicit = os.environ.get("GL_TEST_REDIS_URL")
    if explicit:
        yield explicit
        return
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="gl-test-redis-")
    proc = subprocess.Popen(
        redis_server_argv(binary, port, workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        if not wait_for_port(port):
            yield None
        else:
            yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: str | None) -> str:
    """A flushed Redis database for this test."""
    if redis_server is None:
        missing_service("no redis-server binary and GL_TEST_REDIS_URL not set")
    import redis as redis_sync

    client = redis_sync.Redis.from_url(redis_server, socket_timeout=2)  # type: ignore[arg-type]
    try:
        client.flushdb()
    except redis_sync.RedisError as exc:
        missing_service(f"Redis at {redis_server} not reachable: {exc}")
    finally:
        client.close()
    return redis_server  # type: ignore[return-value]


# -- PostgreSQL ------------------------------------------------------------------------------------


def _pg_connect(dsn: str):  # type: ignore[no-untyped-def]
    import asyncpg

    return asyncpg.connect(dsn, timeout=5)


@contextlib.asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """A SQLAlchemy URL (`postgresql+asyncpg://`) of a fresh, empty database, dropped afterwards."""
    name = f"gl_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await _pg_connect(POSTGRES_ADMIN_DSN)
    except Exception as exc:  # asyncpg raises several unrelated types for "not there"
        missing_service(f"PostgreSQL at {POSTGRES_ADMIN_DSN} not reachable: {exc}")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        admin = await _pg_connect(POSTGRES_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this test."""
    async with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLAlchemy URL of a fresh SQLite file in the test's temp dir."""
    return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each store test runs twice: on SQLite (embedded default) and on PostgreSQL (production)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    else:
        async with fresh_postgres_database() as url:
            yield url
