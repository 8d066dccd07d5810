"""The database schema: tables scoped or declared global, migrations equal the models, audit is append-only."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from control_plane.db.migrate import alembic_config, check, upgrade
from control_plane.db.models import GLOBAL_TABLES, Base
from kernel.db import UTCDateTime, create_engine, utcnow
from kernel.tenancy import TenantScoped
from tests.conftest import POSTGRES_URL, require_service

# --- every table is tenant-scoped or declared global ----------------------------------------


def _tenant_scoped_tables() -> set[str]:
    return {
        mapper.local_table.name
        for mapper in Base.registry.mappers
        if issubclass(mapper.class_, TenantScoped) and isinstance(mapper.local_table, sa.Table)
    }


def test_every_table_is_tenant_scoped_or_listed_global() -> None:
    scoped = _tenant_scoped_tables()
    unclassified = sorted(set(Base.metadata.tables) - scoped - GLOBAL_TABLES)
    assert not unclassified, (
        f"tables neither TenantScoped nor in control_plane.db.models.GLOBAL_TABLES: {unclassified}; "
        "mix in TenantScoped, or list the table as global if it truly holds no tenant's rows"
    )


def test_no_table_is_both_tenant_scoped_and_global() -> None:
    both = sorted(_tenant_scoped_tables() & GLOBAL_TABLES)
    assert not both, f"tables both TenantScoped and listed in GLOBAL_TABLES: {both}"


def test_tenant_scoped_tables_carry_an_indexed_tenant_id() -> None:
    for name in sorted(_tenant_scoped_tables()):
        column = Base.metadata.tables[name].c.get("tenant_id")
        assert column is not None, f"{name} is TenantScoped but has no tenant_id column"
        assert column.index or any(
            next(iter(index.columns)) is column for index in Base.metadata.tables[name].indexes
        ), f"{name}.tenant_id has no index: every scoped query filters on it"


def test_global_tables_exist() -> None:
    """A stale entry in GLOBAL_TABLES would let a new table of that name slip past the check above."""
    declared = set(Base.metadata.tables) | {"alembic_version"}
    assert GLOBAL_TABLES <= declared, f"GLOBAL_TABLES names unknown tables: {sorted(GLOBAL_TABLES - declared)}"


# --- migrations match the models, and run both ways -------------------------------------------


def test_alembic_check_is_clean(database_url: str) -> None:
    """`alembic check`: the migrated database and the models agree (no autogenerate diff)."""
    check(database_url)


@pytest.fixture
def scratch_database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database of its own for the downgrade test: the per-worker PostgreSQL database stays untouched."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'scratch.sqlite'}"
        return
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    name = f"livora_scratch_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(POSTGRES_URL)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield (
            make_url(POSTGRES_URL)
            .set(drivername="postgresql+asyncpg", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _tables_and_triggers(url: str) -> tuple[set[str], set[str]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            tables = set(await connection.run_sync(lambda sync: sa.inspect(sync).get_table_names()))
            if connection.dialect.name == "postgresql":
                sql = "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
                functions = "SELECT proname FROM pg_proc WHERE proname = 'audit_entries_immutable'"
                triggers = set((await connection.execute(sa.text(sql))).scalars())
                triggers |= {f"function {f}" for f in (await connection.execute(sa.text(functions))).scalars()}
            else:
                sql = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
                triggers = set((await connection.execute(sa.text(sql))).scalars())
            return tables, triggers
    finally:
        await engine.dispose()


def test_downgrade_to_base_then_upgrade_to_head(scratch_database_url: str) -> None:
    url = scratch_database_url
    upgrade(url)
    tables, triggers = asyncio.run(_tables_and_triggers(url))
    assert set(Base.metadata.tables) <= tables
    assert triggers, "the audit trail's triggers were not created"

    command.downgrade(alembic_config(url), "base")
    tables, triggers = asyncio.run(_tables_and_triggers(url))
    assert tables <= {"alembic_version"}, f"left behind after downgrade to base: {sorted(tables)}"
    assert not triggers, f"left behind after downgrade to base: {sorted(triggers)}"

    upgrade(url)
    check(url)
    tables, triggers = asyncio.run(_tables_and_triggers(url))
    assert set(Base.metadata.tables) <= tables
    assert triggers


def test_migrations_have_one_head() -> None:
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite:///:memory:")).get_heads()
    assert len(heads) == 1, f"migration history has {len(heads)} heads {heads}; merge them"


# --- the audit trail is append-only in the database itself ------------------------------------

INSERT_AUDIT = sa.text(
    "INSERT INTO audit_entries (id, occurred_at, actor_type, action, outcome, details, tenant_id) "
    "VALUES (:id, :occurred_at, 'system', 'test.recorded', 'success', '{}', NULL)"
).bindparams(sa.bindparam("occurred_at", type_=UTCDateTime()))


@pytest.fixture
def audit_row(database_url: str, aio: Callable[[Awaitable[Any]], Any]) -> str:
    """One audit entry, written with raw SQL (inserts are allowed: the trail is append-only)."""
    row_id = f"aud_{uuid.uuid4().hex[:26]}"

    async def insert() -> None:
        engine = create_engine(database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(INSERT_AUDIT, {"id": row_id, "occurred_at": utcnow()})
        finally:
            await engine.dispose()

    aio(insert())
    return row_id


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_entries SET outcome = 'tampered' WHERE id = :id",
        "UPDATE audit_entries SET tenant_id = 'ten_other' WHERE id = :id",
        "DELETE FROM audit_entries WHERE id = :id",
        "DELETE FROM audit_entries",
    ],
)
def test_audit_entries_refuse_update_and_delete(
    database_url: str, audit_row: str, statement: str, aio: Callable[[Awaitable[Any]], Any]
) -> None:
    async def attempt() -> tuple[BaseException | None, list[Any]]:
        engine = create_engine(database_url)
        error: BaseException | None = None
        try:
            try:
                async with engine.begin() as connection:
                    await connection.execute(sa.text(statement), {"id": audit_row})
            except DBAPIError as exc:
                error = exc
            async with engine.connect() as connection:
                rows = (
                    await connection.execute(
                        sa.text("SELECT id, outcome, tenant_id FROM audit_entries WHERE id = :id"), {"id": audit_row}
                    )
                ).all()
            return error, [tuple(r) for r in rows]
        finally:
            await engine.dispose()

    error, rows = aio(attempt())
    assert error is not None, f"the database accepted {statement!r} on the audit trail"
    assert "append-only" in str(error), f"refused, but not by the audit trigger: {error}"
    assert rows == [(audit_row, "success", None)], "the audit row changed although the statement was refused"
