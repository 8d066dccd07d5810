"""Embedded dedup store: one durable SQLite table keyed (tenant_id, message_id)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import msgspec

from data_plane.pipeline.dedup import StoredSighting, is_first_sighting
from kernel.errors import Unavailable

T = TypeVar("T")
_encode = msgspec.json.Encoder().encode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dedup_sightings (
    tenant_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    first_seen_us INTEGER NOT NULL,
    delivery TEXT,
    PRIMARY KEY (tenant_id, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ix_dedup_sightings_first_seen ON dedup_sightings (first_seen_us);
"""


class SqliteDedupStore:
    """First sightings in a SQLite file (WAL, ``synchronous=FULL``).

    NOTE: a batch is one ``BEGIN IMMEDIATE`` transaction, so a worker killed mid-batch leaves
    either all or none of it recorded, and other processes sharing the file wait for the write
    lock instead of interleaving. ``FULL`` syncs the WAL on every commit: a recorded sighting
    survives a power cut too, which is what lets the next worker trust it.
    All calls run on one private thread because a sqlite3 connection belongs to its thread.
    """

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dedup-sqlite")
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, the module must not add its own.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    async def _run(self, operation: str, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            return work(self._connection())

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except sqlite3.Error as exc:
            raise Unavailable(
                f"dedup store (SQLite at {self.path}) failed {operation}: {exc}", code="dedup_unavailable"
            ) from exc

    async def record(self, sightings: Sequence[StoredSighting], window_us: int) -> list[bool]:
        def work(conn: sqlite3.Connection) -> list[bool]:
            tenants: dict[str, dict[str, None]] = {}
            for s in sightings:
                tenants.setdefault(s.tenant_id, {})[s.message_id] = None
            conn.execute("BEGIN IMMEDIATE")
            try:
                # One SELECT per tenant in the batch (usually one), the rule applied in order in
                # memory (so repeats inside the batch see the earlier ones), then one executemany.
                recorded: dict[tuple[str, str], tuple[int, str | None]] = {}
                for tenant_id, message_ids in tenants.items():
                    for message_id, first_seen_us, delivery in conn.execute(
                        "SELECT message_id, first_seen_us, delivery FROM dedup_sightings"
                        " WHERE tenant_id = ? AND message_id IN (SELECT value FROM json_each(?))",
                        (tenant_id, _encode(list(message_ids)).decode()),
                    ):
                        recorded[(tenant_id, message_id)] = (first_seen_us, delivery)
                flags: list[bool] = []
                writes: dict[tuple[str, str], tuple[int, str | None]] = {}
                for s in sightings:
                    key = (s.tenant_id, s.message_id)
                    keep, write = is_first_sighting(recorded.get(key), s.at_us, s.delivery, window_us)
                    if write is not None:
                        recorded[key] = writes[key] = write
                    flags.append(keep)
                conn.executemany(
                    "INSERT OR REPLACE INTO dedup_sightings VALUES (?, ?, ?, ?)",
                    [(*key, *write) for key, write in writes.items()],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return flags

        return await self._run("record", work)

    async def release(self, tenant_id: str, message_id: str, delivery: str) -> None:
        await self._run(
            "release",
            lambda conn: conn.execute(
                "DELETE FROM dedup_sightings WHERE tenant_id = ? AND message_id = ? AND delivery = ?",
                (tenant_id, message_id, delivery),
            ),
        )

    async def purge(self, cutoff_us: int) -> int:
        def work(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM dedup_sightings WHERE first_seen_us <= ?", (cutoff_us,)).rowcount

        return await self._run("purge", work)

    async def forget_tenant(self, tenant_id: str) -> None:
        await self._run(
            "forget_tenant", lambda conn: conn.execute("DELETE FROM dedup_sightings WHERE tenant_id = ?", (tenant_id,))
        )

    async def close(self) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.close()
            self._conn = None

        if self._conn is not None:
            await self._run("close", work)
        self._executor.shutdown(wait=True)
