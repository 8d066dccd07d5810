"""Embedded profile store: one SQLite file per tenant, ``{root}/tenants/{tenant_id}/profiles.sqlite``."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from data_plane.profiles.bulk import Bulk, SqliteBulk
from data_plane.profiles.models import metadata
from data_plane.profiles.sql import SqlProfileStore, json_deserializer, json_serializer
from data_plane.profiles.tenants import sqlite_path, tenant_dir
from kernel.db import create_engine

_BEGIN = "livora_begin"


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    # We emit BEGIN ourselves (below): the sqlite3 module's own, which it skips before a SELECT,
    # would give reads no snapshot and writes no early lock.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # FULL: a committed batch survives a power cut, so the stream entry it acknowledges is safe to drop.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.close()


def _on_begin(conn: Any) -> None:
    conn.exec_driver_sql(conn.get_execution_options().get(_BEGIN, "BEGIN"))


def open_engine(path: Path) -> AsyncEngine:
    # NOTE: one idle connection (one aiosqlite thread) per open tenant; writes of a tenant are
    # serialised anyway, the overflow serves concurrent reads.
    engine = create_engine(
        f"sqlite+aiosqlite:///{path}",
        json_serializer=json_serializer,
        json_deserializer=json_deserializer,
        pool_size=1,
        max_overflow=4,
    )
    event.listen(engine.sync_engine, "connect", _on_connect)
    event.listen(engine.sync_engine, "begin", _on_begin)
    return engine


class SqliteProfileStore(SqlProfileStore):
    """A tenant's profiles, graph and history in a file of its own (WAL, ``synchronous=FULL``).

    NOTE: a batch is one ``BEGIN IMMEDIATE`` transaction: it takes the file's write lock before it
    reads, so a second process applying the same tenant waits instead of planning from stale rows.
    Reads run in a deferred ``BEGIN`` and so see one snapshot. Reads never create a file.
    """

    driver = "sqlite"
    _driver_errors = (sqlite3.Error,)

    def __init__(self, root: str | Path) -> None:
        super().__init__()
        self.root = Path(root)
        self._engines: dict[str, AsyncEngine] = {}
        self._setup = asyncio.Lock()

    def path(self, tenant_id: str) -> Path:
        return sqlite_path(self.root, tenant_id)

    async def _engine(self, tenant_id: str, *, create: bool) -> AsyncEngine | None:
        engine = self._engines.get(tenant_id)
        if engine is not None:
            return engine
        async with self._setup:
            engine = self._engines.get(tenant_id)
            if engine is not None:
                return engine
            path = self.path(tenant_id)
            if not create and not path.exists():
                return None
            engine = open_engine(path)
            try:
                async with engine.connect() as conn:
                    await conn.execution_options(**{_BEGIN: "BEGIN IMMEDIATE"})
                    async with conn.begin():
                        await conn.run_sync(metadata.create_all)
            except BaseException:
                await engine.dispose()
                raise
            self._engines[tenant_id] = engine
            return engine

    @contextlib.asynccontextmanager
    async def _transaction(self, tenant_id: str, *, write: bool) -> AsyncIterator[AsyncConnection | None]:
        engine = await self._engine(tenant_id, create=write)
        if engine is None:
            yield None
            return
        async with engine.connect() as conn:
            await conn.execution_options(**{_BEGIN: "BEGIN IMMEDIATE" if write else "BEGIN"})
            async with conn.begin():
                yield conn

    async def _bulk(self, tenant_id: str, conn: AsyncConnection) -> Bulk:
        return SqliteBulk((await conn.get_raw_connection()).driver_connection)

    async def ensure_tenant(self, tenant_id: str) -> None:
        async with self._guard(tenant_id, "create storage"):
            await self._engine(tenant_id, create=True)

    async def drop_tenant(self, tenant_id: str) -> None:
        path = self.path(tenant_id)
        async with self._lock(tenant_id), self._guard(tenant_id, "drop storage"):
            async with self._setup:
                engine = self._engines.pop(tenant_id, None)
            if engine is not None:
                await engine.dispose()
            for suffix in ("", "-wal", "-shm", "-journal"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
            # The folder may hold other stores' files for this tenant; it goes only when empty.
            with contextlib.suppress(OSError):
                tenant_dir(self.root, tenant_id).rmdir()

    async def close(self) -> None:
        async with self._setup:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            await engine.dispose()
