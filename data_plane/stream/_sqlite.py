"""One SQLite connection on its own thread, plus the tables the log and Kinesis drivers share."""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from data_plane.stream.port import DeadLetter
from kernel.errors import ConfigError, Unavailable

T = TypeVar("T")

# How long a writer waits for another process's write lock before SQLite reports "database is locked".
BUSY_TIMEOUT_S = 5.0

SHARED_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    grp TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    partition INTEGER NOT NULL,
    partition_key TEXT NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    deliveries INTEGER NOT NULL,
    dead_lettered_at REAL NOT NULL
);
"""


# The lock file descriptor of each connection a SqliteWorker opened (see ``transaction``).
_write_locks: dict[sqlite3.Connection, int] = {}


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``: takes the write lock up front, so two processes never
    deadlock upgrading read locks; with ``synchronous=FULL`` the commit returns after fsync.

    NOTE: writers of one file first queue on an flock of ``<file>.lock``. SQLite's own wait for a
    busy write lock polls with sleeps of 1, 2, 5, 10… ms, which with several ingest processes
    appending at once costs more than the commits themselves; the kernel wakes an flock waiter the
    moment the lock is free. Only the worker thread of a ``SqliteWorker`` calls this (it may block).
    """
    lock = _write_locks.get(conn)
    if lock is not None:
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_UN)


class SqliteWorker:
    """A SQLite database used from asyncio without blocking the loop.

    NOTE: one connection, one thread: every call runs on that thread in submission order, so
    there is no connection sharing to get wrong, and calls queued while one commits wait for
    the thread instead of for SQLite's lock. The connection opens on first use.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        label: str,
        schema: str,
        on_open: Callable[[sqlite3.Connection], None] | None = None,
        what: str = "stream",
        code: str = "stream_unavailable",
    ) -> None:
        self.path = Path(path)
        self.label = label
        self.what = what
        self.code = code
        self._schema = schema
        self._on_open = on_open
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"livora-{label}")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    # --- on the worker thread ---------------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """The open connection (worker thread only): WAL, ``synchronous=FULL``, schema in place."""
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                _write_locks[conn] = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise sqlite3.OperationalError(f"cannot switch {self.path} to WAL mode (got {mode})")
                # FULL: the WAL is fsync'd at every commit, so a committed append survives power
                # loss, not only a process crash (NORMAL would lose the last commits on power loss).
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(self._schema)
                if self._on_open is not None:
                    self._on_open(conn)
            except BaseException:
                lock = _write_locks.pop(conn, None)
                if lock is not None:
                    os.close(lock)
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return fn(self.connection())

    # --- on the event loop ------------------------------------------------------------------

    def unavailable(self, operation: str, exc: BaseException | None = None) -> Unavailable:
        if exc is None:
            return Unavailable(f"{self.what} ({self.label} at {self.path}) is closed", code=self.code)
        return Unavailable(f"{self.what} ({self.label} at {self.path}) failed {operation}: {exc}", code=self.code)

    async def run(self, fn: Callable[[sqlite3.Connection], T], operation: str) -> T:
        """Run ``fn(connection)`` on the worker thread; SQLite and OS errors become ``Unavailable``."""
        if self._closed:
            raise self.unavailable(operation)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._call, fn)
        except (sqlite3.Error, OSError) as exc:
            raise self.unavailable(operation, exc) from exc
        except RuntimeError as exc:
            # The executor refuses new work once close() has shut it down.
            if self._closed:
                raise self.unavailable(operation) from exc
            raise

    async def run_raw(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the worker thread as is (it handles its own errors)."""
        if self._closed:
            raise self.unavailable("append")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, fn)
        except RuntimeError as exc:
            if self._closed:
                raise self.unavailable("append") from exc
            raise

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()

        def shut() -> None:
            if self._conn is not None:
                lock = _write_locks.pop(self._conn, None)
                if lock is not None:
                    os.close(lock)
                self._conn.close()
                self._conn = None

        try:
            await loop.run_in_executor(self._executor, shut)
        finally:
            self._executor.shutdown(wait=False)


def check_partitions(partitions: int) -> Callable[[sqlite3.Connection], None]:
    """Refuse to open a store made with another partition count: keys would map elsewhere."""

    def check(conn: sqlite3.Connection) -> None:
        with transaction(conn):
            conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('partitions', ?)", (str(partitions),))
            stored = int(conn.execute("SELECT value FROM meta WHERE name = 'partitions'").fetchone()[0])
        if stored != partitions:
            raise ConfigError(
                "LIVORA_STREAM_PARTITIONS",
                f"the stream store was created with {stored} partitions, not {partitions}; "
                "changing the count would move users to other partitions and break their order",
            )

    return check


def insert_dead_letter(
    conn: sqlite3.Connection,
    *,
    group: str,
    entry_id: str,
    partition: int,
    partition_key: str,
    payload: bytes,
    reason: str,
    deliveries: int,
    now: float,
) -> str:
    cursor = conn.execute(
        "INSERT INTO dead_letters (grp, entry_id, partition, partition_key, payload, reason, deliveries,"
        " dead_lettered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (group, entry_id, partition, partition_key, payload, reason, deliveries, now),
    )
    return str(cursor.lastrowid)


def list_dead_letters(conn: sqlite3.Connection, limit: int) -> list[DeadLetter]:
    rows = conn.execute(
        "SELECT id, grp, entry_id, partition, partition_key, payload, reason, deliveries, dead_lettered_at"
        " FROM dead_letters ORDER BY id LIMIT ?",
        (limit,),
    ).fetchall()
    return [
        DeadLetter(
            id=str(row[0]),
            group=row[1],
            entry_id=row[2],
            partition=row[3],
            partition_key=row[4],
            payload=bytes(row[5]),
            reason=row[6],
            deliveries=row[7],
            dead_lettered_at=dt.datetime.fromtimestamp(row[8], dt.UTC),
        )
        for row in rows
    ]


def dead_letter_rows(conn: sqlite3.Connection, ids: Sequence[str]) -> list[tuple[int, int, str, bytes]]:
    """``(id, partition, partition_key, payload)`` of the dead letters among ``ids`` that exist."""
    numeric = sorted({int(i) for i in ids if i.isdigit()})
    rows = []
    for dead_letter_id in numeric:
        row = conn.execute(
            "SELECT id, partition, partition_key, payload FROM dead_letters WHERE id = ?", (dead_letter_id,)
        ).fetchone()
        if row is not None:
            rows.append((row[0], row[1], row[2], bytes(row[3])))
    return rows
