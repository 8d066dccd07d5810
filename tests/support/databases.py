"""Fresh, migrated databases per test on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path

import asyncpg

from control_plane.db.migrate import upgrade
from control_plane.db.models import Base

ADMIN_DSN = os.environ.get("LIVORA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


class SqliteDatabases:
    """Migrates one template file per worker, then copies it for each test (much faster than migrating)."""

    def __init__(self, root: Path) -> None:
        self.template = root / "template.sqlite"
        upgrade(f"sqlite+aiosqlite:///{self.template}")

    def fresh(self, directory: Path) -> str:
        target = directory / "control-plane.sqlite"
        shutil.copyfile(self.template, target)
        return f"sqlite+aiosqlite:///{target}"

    def close(self) -> None:
        pass


class PostgresDatabases:
    """One migrated database per worker; each test starts from empty tables (TRUNCATE)."""

    def __init__(self) -> None:
        self.name = f"livora_test_{_worker()}_{uuid.uuid4().hex[:8]}"
        asyncio.run(self._admin(f'CREATE DATABASE "{self.name}"'))
        base = ADMIN_DSN.rsplit("/", 1)[0]
        self.dsn = f"{base}/{self.name}"
        self.url = self.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
        upgrade(self.url)
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        self._truncate = f"TRUNCATE {tables} CASCADE"

    async def _admin(self, sql: str) -> None:
        connection = await asyncpg.connect(ADMIN_DSN)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    async def _reset(self) -> None:
        connection = await asyncpg.connect(self.dsn)
        try:
            await connection.execute(self._truncate)
        finally:
            await connection.close()

    def fresh(self, directory: Path) -> str:
        asyncio.run(self._reset())
        return self.url

    def close(self) -> None:
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
