"""Suite-wide fixtures: real stores (SQLite and PostgreSQL, memory and Redis), fresh per test."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import httpx
import pytest

from control_plane.app import create_app
from control_plane.runtime import Runtime
from control_plane.settings import Settings
from tests.support.cell import cell  # noqa: F401 (a fixture)
from tests.support.databases import PostgresDatabases, SqliteDatabases
from tests.support.provisioning import embedded_spaces
from tests.support.server import LiveServer
from tests.support.world import World

T = TypeVar("T")

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
POSTGRES_URL = os.environ.get("LIVORA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LIVORA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BACKENDS = ("sqlite", "postgres")
# A fixed Fernet key for the suite (never used outside tests).
TEST_SECRET_KEY = "dGVzdC1vbmx5LWtleS1mb3ItdGhlLWxpdm9yYS1zdWk="
TEST_CELL_TOKEN_KEY = "Y2VsbC10b2tlbi1rZXktZm9yLXRoZS10ZXN0LXN1aXQ"  # 32 bytes, URL-safe base64


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, url: str, default_port: int) -> None:
    """Skip locally, but fail under CI=true, when a real service the test needs is down."""
    if _reachable(url, default_port):
        return
    message = f"{name} is not reachable at {url}"
    if IN_CI:
        pytest.fail(f"{message}; CI requires it (tests never skip it under CI=true)", pytrace=False)
    pytest.skip(f"{message}; start it to run these tests")


@pytest.fixture
def redis_url() -> str:
    """URL of the real Redis server; tests isolate themselves with ``unique_prefix``."""
    require_service("Redis", REDIS_URL, 6379)
    return REDIS_URL


@pytest.fixture
def unique_prefix() -> str:
    """A key prefix no other test (or xdist worker) uses."""
    return f"test:{uuid.uuid4().hex[:12]}:"


# --- databases ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_databases(tmp_path_factory: pytest.TempPathFactory) -> SqliteDatabases:
    return SqliteDatabases(tmp_path_factory.mktemp("sqlite-template"))


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    databases = PostgresDatabases()
    yield databases
    databases.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every database-backed test runs once per backend."""
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty control-plane database of the test's backend."""
    databases = request.getfixturevalue(f"{backend}_databases")
    return str(databases.fresh(tmp_path))


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=str(tmp_path / "var"),
        cookie_secure=False,
        # Cheap hashing keeps the suite fast; production uses the RFC 9106 defaults.
        argon2_time_cost=1,
        argon2_memory_kib=1024,
        # Encrypts stored secrets (SSO client secrets); PostgreSQL installations must set one.
        secret_key=TEST_SECRET_KEY,
        # Signs analytics cell tokens; PostgreSQL installations must set one too.
        cell_token_key=TEST_CELL_TOKEN_KEY,
    )


@pytest.fixture
def aio() -> Iterator[Callable[[Awaitable[T]], T]]:
    """Run a coroutine to completion on the test thread's own event loop (one loop per test)."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


@pytest.fixture
def runtime(settings: Settings, aio: Callable[[Awaitable[Any]], Any]) -> Iterator[Runtime]:
    """A runtime for direct service calls from the test thread, beside the live server's own."""
    built = Runtime.build(settings)
    yield built
    aio(built.close())


@pytest.fixture
def world(runtime: Runtime, aio: Callable[[Awaitable[Any]], Any]) -> World:
    """Two tenants with a member of every role and API keys, plus the platform roles."""
    return aio(World.seed(runtime))


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    """The control plane on a real uvicorn server on 127.0.0.1, its built-in cell's spaces in-process."""
    runtime = Runtime.build(settings)
    runtime.provisioner.attach_builtin_cell(embedded_spaces(tmp_path / "builtin-cell"))
    live = LiveServer(create_app(settings, runtime)).start()
    yield live
    live.stop()


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http
