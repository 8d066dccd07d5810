"""Production profile store: one PostgreSQL schema per tenant (``t_{tenant_id}``) in the cell's database."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.schema import CreateSchema, DropSchema

from data_plane.profiles.bulk import Bulk, PostgresBulk
from data_plane.profiles.models import identities, metadata
from data_plane.profiles.sql import SqlProfileStore, json_deserializer, json_serializer
from data_plane.profiles.tenants import check_tenant_id, schema_name
from kernel.db import create_engine, normalize_database_url
from kernel.errors import ConfigError

# Advisory-lock class for creating and dropping tenant schemas ("LVpr"), so concurrent first uses
# of a tenant do not race on CREATE SCHEMA / CREATE TABLE.
_DDL_LOCK = 0x4C567072


class PostgresProfileStore(SqlProfileStore):
    """All tenants in one database, each in its own schema; the same tables reached through
    ``schema_translate_map``. Dropping a tenant is ``DROP SCHEMA ... CASCADE``.

    NOTE: a batch locks the tenant's ``identities`` table (SHARE ROW EXCLUSIVE) before it reads:
    writers of one tenant queue, readers and other tenants do not wait. Reads run in REPEATABLE
    READ, read-only, so a profile and its identifiers come from one snapshot.
    """

    driver = "postgres"
    _driver_errors = (asyncpg.PostgresError, asyncpg.InterfaceError)

    def __init__(self, url: str, **engine_options: Any) -> None:
        super().__init__()
        url = normalize_database_url(url, "LIVORA_PROFILES_DATABASE_URL")
        if make_url(url).get_backend_name() != "postgresql":
            raise ConfigError("LIVORA_PROFILES_DATABASE_URL", "the postgres profile store needs a PostgreSQL URL")
        self._engine = create_engine(
            url, json_serializer=json_serializer, json_deserializer=json_deserializer, **engine_options
        )
        self._ready: set[str] = set()

    def _forget(self, tenant_id: str) -> None:
        self._ready.discard(tenant_id)

    async def _ddl_lock(self, conn: AsyncConnection, schema: str) -> None:
        await conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(:cls, hashtext(:schema))"), {"cls": _DDL_LOCK, "schema": schema}
        )

    async def _exists(self, tenant_id: str) -> bool:
        if tenant_id in self._ready:
            return True
        async with self._engine.connect() as conn:
            found = await conn.scalar(
                sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :schema"), {"schema": schema_name(tenant_id)}
            )
        # NOTE: not marked ready: the first write of each process runs ``_create``, which adds tables
        # newer versions introduced to a schema an older version created.
        return bool(found)

    async def _create(self, tenant_id: str) -> None:
        schema = schema_name(tenant_id)
        async with self._engine.connect() as conn, conn.begin():
            await self._ddl_lock(conn, schema)
            found = await conn.scalar(sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :schema"), {"schema": schema})
            if not found:
                await conn.execute(CreateSchema(schema))
            await conn.execution_options(schema_translate_map={None: schema})
            # A new schema is empty (schema and tables are created in one transaction): skip the checks.
            await conn.run_sync(metadata.create_all, checkfirst=bool(found))
        self._ready.add(tenant_id)

    @contextlib.asynccontextmanager
    async def _transaction(self, tenant_id: str, *, write: bool) -> AsyncIterator[AsyncConnection | None]:
        if write and tenant_id not in self._ready:
            await self._create(tenant_id)
        elif not write and not await self._exists(tenant_id):
            yield None
            return
        schema = schema_name(tenant_id)
        async with self._engine.connect() as conn:
            if not write:
                await conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            await conn.execution_options(schema_translate_map={None: schema})
            async with conn.begin():
                if write:
                    table = f"{conn.dialect.identifier_preparer.quote_schema(schema)}.{identities.name}"
                    await conn.exec_driver_sql(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")
                yield conn

    async def _bulk(self, tenant_id: str, conn: AsyncConnection) -> Bulk:
        return PostgresBulk((await conn.get_raw_connection()).driver_connection, schema_name(tenant_id))

    async def ensure_tenant(self, tenant_id: str) -> None:
        check_tenant_id(tenant_id)
        async with self._guard(tenant_id, "create storage"):
            await self._create(tenant_id)

    async def drop_tenant(self, tenant_id: str) -> None:
        schema = schema_name(tenant_id)
        async with self._lock(tenant_id), self._guard(tenant_id, "drop storage"):
            self._ready.discard(tenant_id)
            async with self._engine.connect() as conn, conn.begin():
                await self._ddl_lock(conn, schema)
                await conn.execute(DropSchema(schema, cascade=True, if_exists=True))
            self._ready.discard(tenant_id)

    async def close(self) -> None:
        await self._engine.dispose()
