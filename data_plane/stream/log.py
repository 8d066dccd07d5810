"""Embedded stream driver: a durable log in one SQLite file (WAL, fsync at every commit)."""

from __future__ import annotations

import asyncio
import collections
import heapq
import sqlite3
import time
import zlib
from collections.abc import Callable, Collection, Sequence
from contextlib import suppress
from functools import partial
from pathlib import Path

from data_plane.stream._sqlite import (
    SHARED_SCHEMA,
    SqliteWorker,
    check_partitions,
    dead_letter_rows,
    insert_dead_letter,
    list_dead_letters,
    transaction,
)
from data_plane.stream.port import (
    DEFAULT_PARTITIONS,
    DeadLetter,
    Entry,
    Record,
    check_partition_count,
    check_read,
    chosen_partitions,
    partition_for,
    split_id,
)

SCHEMA = (
    SHARED_SCHEMA
    + """
CREATE TABLE IF NOT EXISTS entries (
    -- AUTOINCREMENT: a position is never reused, even after trim deletes the newest entries.
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    partition INTEGER NOT NULL,
    partition_key TEXT NOT NULL,
    payload BLOB NOT NULL,
    -- 0: the payload as appended; 1: zlib-compressed (see _pack).
    codec INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS entries_by_partition ON entries (partition);
-- The last position each group has handed out, per partition.
CREATE TABLE IF NOT EXISTS cursors (
    grp TEXT NOT NULL,
    partition INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (grp, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    grp TEXT NOT NULL,
    seq INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    consumer TEXT NOT NULL,
    deliveries INTEGER NOT NULL,
    delivered_at REAL NOT NULL,
    PRIMARY KEY (grp, seq)
) WITHOUT ROWID;
"""
)

# Rows to write in the same transaction as an append (see ``LogStream.append``).
Companion = Callable[[sqlite3.Connection], None]
_Pending = tuple[
    list[tuple[int, str, bytes]], "Companion | None", "asyncio.Future[list[str]]", asyncio.AbstractEventLoop
]


class LogStream:
    """The embedded stream: entries, group cursors, pending entries and dead letters in one SQLite file.

    Why SQLite rather than a hand-written append-only file: groups, pending sets and dead letters
    must change atomically with each other (ack, reclaim, dead-letter, replay), and SQLite's WAL
    gives that plus crash recovery that has been tested for decades. An append is one
    transaction, so one fsync, however many records it holds; appends that queue up while the
    thread is busy are committed together (group commit).

    Several processes may open the same file (SQLite's locking serialises writers); readers in
    another process notice new entries within ``poll_interval`` seconds.
    """

    def __init__(self, path: str | Path, *, partitions: int = DEFAULT_PARTITIONS, poll_interval: float = 0.1) -> None:
        self.partitions = check_partition_count(partitions)
        self._poll_interval = poll_interval
        check = check_partitions(partitions)

        def on_open(conn: sqlite3.Connection) -> None:
            check(conn)
            _ensure_codec_column(conn)

        self._worker = SqliteWorker(path, label="stream log", schema=SCHEMA, on_open=on_open)
        self._appends: collections.deque[_Pending] = collections.deque()
        # Replaced after every append, so a reader waits on the event of the state it has seen.
        self._appended = asyncio.Event()
        self._groups: set[str] = set()

    @property
    def path(self) -> Path:
        return self._worker.path

    # --- append, with group commit ----------------------------------------------------------

    async def append(self, records: Sequence[Record], *, also: Companion | None = None) -> list[str]:
        """Append (see ``Stream.append``); ``also(connection)`` runs inside the same transaction.

        ``also`` lets another store that lives in this file (the usage ledger) commit its rows with
        the records: both or neither, one fsync. If it raises, nothing of the transaction stays.
        """
        if not records:
            return []
        rows = [(partition_for(r.partition_key, self.partitions), r.partition_key, bytes(r.payload)) for r in records]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[str]] = loop.create_future()
        self._appends.append((rows, also, future, loop))
        # NOTE: the drain that runs may commit our rows together with others queued before it;
        # a later drain then finds nothing left. Either way ``future`` is settled when it returns.
        await self._worker.run_raw(self._drain_appends)
        ids = await future
        self._wake_readers()
        return ids

    def _drain_appends(self) -> None:
        batch: list[_Pending] = []
        while self._appends:
            batch.append(self._appends.popleft())
        if not batch:
            return
        try:
            conn = self._worker.connection()
            results: list[list[str]] = []
            with transaction(conn):
                for rows, also, _, _ in batch:
                    conn.executemany(
                        "INSERT INTO entries (partition, partition_key, payload, codec) VALUES (?, ?, ?, ?)",
                        [(partition, key, *_pack(payload)) for partition, key, payload in rows],
                    )
                    # Inside one write transaction the positions of one executemany are consecutive.
                    last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
                    first = last - len(rows) + 1
                    results.append([f"{row[0]}:{first + i}" for i, row in enumerate(rows)])
                    if also is not None:
                        also(conn)
        except (sqlite3.Error, OSError) as exc:
            error = self._worker.unavailable("append", exc)
            for _, _, future, loop in batch:
                loop.call_soon_threadsafe(_settle, future, None, error)
            return
        except Exception as exc:  # ConfigError from opening the store: each caller gets it
            for _, _, future, loop in batch:
                loop.call_soon_threadsafe(_settle, future, None, exc)
            return
        for (_, _, future, loop), ids in zip(batch, results, strict=True):
            loop.call_soon_threadsafe(_settle, future, ids, None)

    def _wake_readers(self) -> None:
        self._appended.set()
        self._appended = asyncio.Event()

    # --- read -------------------------------------------------------------------------------

    async def read(
        self,
        group: str,
        consumer: str,
        *,
        count: int,
        block_ms: int = 0,
        partitions: Collection[int] | None = None,
    ) -> list[Entry]:
        check_read(group, consumer, count)
        parts = chosen_partitions(self.partitions, partitions, 0)
        deadline = time.monotonic() + block_ms / 1000
        while True:
            appended = self._appended
            entries = await self._worker.run(partial(self._read_tx, group, consumer, count, parts), "read")
            left = deadline - time.monotonic()
            if entries or left <= 0:
                return entries
            with suppress(TimeoutError):
                await asyncio.wait_for(appended.wait(), min(left, self._poll_interval))

    def _ensure_group(self, conn: sqlite3.Connection, group: str) -> None:
        # A group starts at position 0: it sees every entry still retained.
        if group not in self._groups:
            conn.executemany(
                "INSERT OR IGNORE INTO cursors (grp, partition, last_seq) VALUES (?, ?, 0)",
                [(group, p) for p in range(self.partitions)],
            )

    def _read_tx(
        self, group: str, consumer: str, count: int, parts: list[int], conn: sqlite3.Connection
    ) -> list[Entry]:
        with transaction(conn):
            self._ensure_group(conn, group)
            entries = self._take(conn, group, consumer, count, parts)
        # Only once the group's cursors are committed may later reads skip creating them.
        self._groups.add(group)
        return entries

    def _take(self, conn: sqlite3.Connection, group: str, consumer: str, count: int, parts: list[int]) -> list[Entry]:
        cursors = dict(conn.execute("SELECT partition, last_seq FROM cursors WHERE grp = ?", (group,)).fetchall())
        # Oldest first across partitions: take up to ``count`` positions from each (an index-only
        # scan), keep the ``count`` smallest, then load just those rows.
        candidates: list[tuple[int, int]] = []
        for p in parts:
            candidates.extend(
                (seq, p)
                for (seq,) in conn.execute(
                    "SELECT seq FROM entries WHERE partition = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (p, cursors[p], count),
                )
            )
        if not candidates:
            return []
        upto: dict[int, int] = {}
        for seq, p in heapq.nsmallest(count, candidates):
            upto[p] = max(upto.get(p, 0), seq)
        rows: list[tuple[int, int, str, bytes]] = []
        for p, last in upto.items():
            rows.extend(
                (seq, p, key, _unpack(payload, codec))
                for seq, key, payload, codec in conn.execute(
                    "SELECT seq, partition_key, payload, codec FROM entries"
                    " WHERE partition = ? AND seq > ? AND seq <= ?",
                    (p, cursors[p], last),
                )
            )
        rows.sort()
        now = time.time()
        conn.executemany(
            "INSERT INTO pending (grp, seq, partition, consumer, deliveries, delivered_at) VALUES (?, ?, ?, ?, 1, ?)",
            [(group, seq, p, consumer, now) for seq, p, _, _ in rows],
        )
        conn.executemany(
            "UPDATE cursors SET last_seq = ? WHERE grp = ? AND partition = ?",
            [(last, group, p) for p, last in upto.items()],
        )
        return [Entry(f"{p}:{seq}", p, key, payload, 1) for seq, p, key, payload in rows]

    # --- pending entries ----------------------------------------------------------------------

    def _positions(self, ids: Sequence[str]) -> list[int]:
        positions = []
        for entry_id in ids:
            _, position = split_id(entry_id, self.partitions)
            if not position.isdigit():
                raise ValueError(f"{entry_id!r} is not an entry id of the log driver")
            positions.append(int(position))
        return positions

    async def ack(self, group: str, ids: Sequence[str]) -> int:
        positions = self._positions(ids)
        if not positions:
            return 0

        def ack_tx(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                before = conn.total_changes
                conn.executemany("DELETE FROM pending WHERE grp = ? AND seq = ?", [(group, s) for s in positions])
                return conn.total_changes - before

        return await self._worker.run(ack_tx, "ack")

    async def reclaim(
        self,
        group: str,
        consumer: str,
        *,
        min_idle_ms: int,
        count: int,
        partitions: Collection[int] | None = None,
    ) -> list[Entry]:
        check_read(group, consumer, count)
        parts = chosen_partitions(self.partitions, partitions, 0)

        def reclaim_tx(conn: sqlite3.Connection) -> list[Entry]:
            now = time.time()
            marks = ",".join("?" * len(parts))
            with transaction(conn):
                rows = conn.execute(
                    "SELECT p.seq, p.partition, p.deliveries, e.partition_key, e.payload, e.codec"
                    " FROM pending p JOIN entries e ON e.seq = p.seq"
                    f" WHERE p.grp = ? AND p.delivered_at <= ? AND p.partition IN ({marks})"
                    " ORDER BY p.seq LIMIT ?",
                    (group, now - min_idle_ms / 1000, *parts, count),
                ).fetchall()
                conn.executemany(
                    "UPDATE pending SET consumer = ?, deliveries = deliveries + 1, delivered_at = ?"
                    " WHERE grp = ? AND seq = ?",
                    [(consumer, now, group, row[0]) for row in rows],
                )
            return [
                Entry(f"{p}:{seq}", p, key, _unpack(payload, codec), deliveries + 1)
                for seq, p, deliveries, key, payload, codec in rows
            ]

        return await self._worker.run(reclaim_tx, "reclaim")

    async def pending(self, group: str) -> int:
        def count_tx(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM pending WHERE grp = ?", (group,)).fetchone()[0])

        return await self._worker.run(count_tx, "pending")

    # --- dead letters -------------------------------------------------------------------------

    async def dead_letter(self, group: str, entry: Entry, reason: str, *, payload: bytes | None = None) -> str | None:
        (position,) = self._positions([entry.id])

        def dead_letter_tx(conn: sqlite3.Connection) -> str | None:
            with transaction(conn):
                row = conn.execute(
                    "SELECT p.partition, p.deliveries, e.partition_key, e.payload, e.codec"
                    " FROM pending p JOIN entries e ON e.seq = p.seq WHERE p.grp = ? AND p.seq = ?",
                    (group, position),
                ).fetchone()
                if row is None:
                    return None
                conn.execute("DELETE FROM pending WHERE grp = ? AND seq = ?", (group, position))
                return insert_dead_letter(
                    conn,
                    group=group,
                    entry_id=entry.id,
                    partition=row[0],
                    partition_key=row[2],
                    payload=_unpack(row[3], row[4]) if payload is None else payload,
                    reason=reason,
                    deliveries=row[1],
                    now=time.time(),
                )

        return await self._worker.run(dead_letter_tx, "dead_letter")

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return await self._worker.run(partial(list_dead_letters, limit=limit), "dead_letters")

    async def replay(self, dead_letter_ids: Sequence[str]) -> int:
        def replay_tx(conn: sqlite3.Connection) -> int:
            # One transaction: a replayed dead letter is appended and gone from the store, or neither.
            with transaction(conn):
                rows = dead_letter_rows(conn, dead_letter_ids)
                conn.executemany(
                    "INSERT INTO entries (partition, partition_key, payload, codec) VALUES (?, ?, ?, ?)",
                    [(partition_for(key, self.partitions), key, *_pack(payload)) for _, _, key, payload in rows],
                )
                conn.executemany("DELETE FROM dead_letters WHERE id = ?", [(row[0],) for row in rows])
            return len(rows)

        replayed = await self._worker.run(replay_tx, "replay")
        if replayed:
            self._wake_readers()
        return replayed

    # --- housekeeping -------------------------------------------------------------------------

    async def trim(self) -> int:
        def trim_tx(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                # Per partition, the lowest position any group still needs: just below its oldest
                # pending entry, else its cursor. With no group at all nothing is trimmed.
                floors = conn.execute(
                    "SELECT c.partition, MIN(COALESCE("
                    "  (SELECT MIN(p.seq) - 1 FROM pending p WHERE p.grp = c.grp AND p.partition = c.partition),"
                    "  c.last_seq)) FROM cursors c GROUP BY c.partition"
                ).fetchall()
                before = conn.total_changes
                conn.executemany("DELETE FROM entries WHERE partition = ? AND seq <= ?", floors)
                return conn.total_changes - before

        return await self._worker.run(trim_tx, "trim")

    async def ping(self) -> None:
        await self._worker.run(lambda conn: None, "ping")

    async def close(self) -> None:
        await self._worker.close()


def _settle(future: asyncio.Future[list[str]], ids: list[str] | None, error: BaseException | None) -> None:
    if future.done():  # the appending task was cancelled; the rows may still have been committed
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(ids or [])


# Payloads at least this large are stored compressed (an entry of a request's events is JSON with
# the same keys in every event: zlib's fastest level shrinks it several times for ~2 µs per kB),
# so each commit writes and fsyncs that much less. Consumers get the payload as it was appended.
_PACK_MIN_BYTES = 512


def _pack(payload: bytes) -> tuple[bytes, int]:
    if len(payload) >= _PACK_MIN_BYTES:
        packed = zlib.compress(payload, 1)
        if len(packed) < len(payload):
            return packed, 1
    return payload, 0


def _unpack(payload: bytes, codec: int) -> bytes:
    return zlib.decompress(payload) if codec == 1 else bytes(payload)


def _ensure_codec_column(conn: sqlite3.Connection) -> None:
    """A log made before payloads were compressed gets the column (its entries stay as they are)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(entries)")}
    if "codec" not in columns:
        try:
            conn.execute("ALTER TABLE entries ADD COLUMN codec INTEGER NOT NULL DEFAULT 0")
        except sqlite3.OperationalError:
            # Another process added it first.
            if "codec" not in {row[1] for row in conn.execute("PRAGMA table_info(entries)")}:
                raise
