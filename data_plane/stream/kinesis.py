"""Kinesis Data Streams driver (aioboto3) for AWS cells; group state lives in a local SQLite store."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

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
from kernel.errors import ConfigError, Unavailable

# PutRecords takes at most 500 records and 5 MiB (data plus partition keys) per call.
_PUT_RECORDS_MAX = 500
_PUT_BYTES_MAX = 5 * 1024 * 1024
# Empty GetRecords answers while the shard has data further on (real Kinesis does that after
# gaps); following NextShardIterator a few times reaches it.
_EMPTY_HOPS = 5

STATE_SCHEMA = (
    SHARED_SCHEMA
    + """
-- The last sequence number each group has been handed, per shard (NULL: start at TRIM_HORIZON).
CREATE TABLE IF NOT EXISTS cursors (
    grp TEXT NOT NULL,
    partition INTEGER NOT NULL,
    sequence TEXT,
    PRIMARY KEY (grp, partition)
) WITHOUT ROWID;
-- Entries handed out and not acked. The payload is kept so a reclaim does not depend on the
-- record still being inside Kinesis's retention window.
CREATE TABLE IF NOT EXISTS pending (
    grp TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    partition INTEGER NOT NULL,
    sequence TEXT NOT NULL,
    partition_key TEXT NOT NULL,
    payload BLOB NOT NULL,
    consumer TEXT NOT NULL,
    deliveries INTEGER NOT NULL,
    delivered_at REAL NOT NULL,
    PRIMARY KEY (grp, entry_id)
) WITHOUT ROWID;
"""
)


class KinesisStream:
    """The stream on one Kinesis data stream: partition ``p`` is the ``p``-th open shard by hash range.

    Records are routed with ``ExplicitHashKey`` (the shard's starting hash key), so a key's
    partition is the same ``partition_for`` as with the other drivers, not Kinesis's MD5.

    Kinesis has no consumer groups. Each group's position per shard, its pending entries (with
    their payloads and delivery counts) and the dead letters live in a SQLite file
    (``state_path``, WAL, fsync per commit). A read fetches records after the group's position
    and claims them with a compare-and-set on that position, so consumers that share the file,
    in one process or several, never both get a record.

    CAUTION: the state file is local: every consumer of a group must run on the host that holds
    it. And Kinesis deletes records after its retention period (24 h by default) whether a group
    has read them or not; keep the retention longer than any consumer outage. ``trim`` does
    nothing here.
    """

    def __init__(
        self,
        stream_name: str,
        *,
        state_path: str | Path,
        partitions: int = DEFAULT_PARTITIONS,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        session: aioboto3.Session | None = None,
        create: bool = False,
        poll_interval: float = 0.5,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        put_attempts: int = 3,
    ) -> None:
        self.partitions = check_partition_count(partitions)
        self.stream_name = stream_name
        self._endpoint_url = endpoint_url
        self._region_name = region_name
        self._session = session or aioboto3.Session()
        self._create = create
        self._poll_interval = poll_interval
        self._put_attempts = max(1, put_attempts)
        # CAUTION: botocore's default (legacy mode, 5 attempts with backoff) turns an outage into a
        # hang of many seconds; one retry keeps a 503 prompt.
        self._config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": 2, "mode": "standard"},
        )
        self._state = SqliteWorker(
            state_path, label="Kinesis group state", schema=STATE_SCHEMA, on_open=check_partitions(partitions)
        )
        self._exit_stack = AsyncExitStack()
        self._client: Any = None
        self._lock = asyncio.Lock()
        # (shard id, starting hash key) per partition, once known.
        self._shards: list[tuple[str, str]] | None = None
        # NOTE: a shard iterator is valid for 5 minutes and GetShardIterator is rate-limited, so the
        # next iterator is kept for the position it belongs to and reused while the group is there.
        self._iterators: dict[tuple[str, int], tuple[str | None, str]] = {}
        self._rotation = 0
        self._closed = False

    @contextmanager
    def _translated(self, operation: str) -> Iterator[None]:
        if self._closed:
            raise Unavailable(f"stream (Kinesis {self.stream_name}) is closed", code="stream_unavailable")
        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise Unavailable(
                f"stream (Kinesis {self.stream_name}) refused {operation}: {code}", code="stream_unavailable"
            ) from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise Unavailable(
                f"stream (Kinesis {self.stream_name} at {self._endpoint_url or 'AWS'}) is unreachable "
                f"during {operation}: {exc}",
                code="stream_unavailable",
            ) from exc

    async def _kinesis(self) -> tuple[Any, list[tuple[str, str]]]:
        """The client and the shards, opened (and the stream created if asked) on first use."""
        if self._client is not None and self._shards is not None:
            return self._client, self._shards
        async with self._lock:
            with self._translated("start-up"):
                if self._client is None:
                    self._client = await self._exit_stack.enter_async_context(
                        self._session.client(
                            "kinesis",
                            endpoint_url=self._endpoint_url,
                            region_name=self._region_name,
                            config=self._config,
                        )
                    )
                if self._shards is None:
                    self._shards = await self._open_shards(self._client)
        return self._client, self._shards

    async def _open_shards(self, client: Any) -> list[tuple[str, str]]:
        try:
            summary = await client.describe_stream_summary(StreamName=self.stream_name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException" or not self._create:
                raise
            await client.create_stream(StreamName=self.stream_name, ShardCount=self.partitions)
            summary = await client.describe_stream_summary(StreamName=self.stream_name)
        deadline = time.monotonic() + 30
        while summary["StreamDescriptionSummary"]["StreamStatus"] not in ("ACTIVE", "UPDATING"):
            if time.monotonic() > deadline:
                raise Unavailable(f"Kinesis stream {self.stream_name} is not active", code="stream_unavailable")
            await asyncio.sleep(0.5)
            summary = await client.describe_stream_summary(StreamName=self.stream_name)
        shards: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"StreamName": self.stream_name}
        while True:
            page = await client.list_shards(**kwargs)
            shards.extend(page["Shards"])
            if not page.get("NextToken"):
                break
            kwargs = {"NextToken": page["NextToken"]}
        open_shards = sorted(
            (s for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]),
            key=lambda s: int(s["HashKeyRange"]["StartingHashKey"]),
        )
        if len(open_shards) != self.partitions:
            raise ConfigError(
                "LIVORA_STREAM_PARTITIONS",
                f"Kinesis stream {self.stream_name} has {len(open_shards)} open shards, not {self.partitions}",
            )
        return [(s["ShardId"], s["HashKeyRange"]["StartingHashKey"]) for s in open_shards]

    # --- append -------------------------------------------------------------------------------

    async def append(self, records: Sequence[Record]) -> list[str]:
        if not records:
            return []
        client, shards = await self._kinesis()
        partitions = [partition_for(r.partition_key, self.partitions) for r in records]
        ids: list[str | None] = [None] * len(records)
        todo = list(range(len(records)))
        for attempt in range(self._put_attempts):
            if attempt:
                await asyncio.sleep(0.05 * 2**attempt)
            failed: list[int] = []
            for chunk in _chunks(todo, records):
                with self._translated("append"):
                    answer = await client.put_records(
                        StreamName=self.stream_name,
                        Records=[
                            {
                                "Data": bytes(records[i].payload),
                                "PartitionKey": records[i].partition_key,
                                "ExplicitHashKey": shards[partitions[i]][1],
                            }
                            for i in chunk
                        ],
                    )
                for i, result in zip(chunk, answer["Records"], strict=True):
                    if result.get("ErrorCode") or "SequenceNumber" not in result:
                        failed.append(i)
                    else:
                        ids[i] = f"{partitions[i]}:{result['SequenceNumber']}"
            todo = failed
            if not todo:
                break
        if todo:
            raise Unavailable(
                f"stream (Kinesis {self.stream_name}) refused {len(todo)} of {len(records)} records "
                f"after {self._put_attempts} attempts (throttled)",
                code="stream_unavailable",
            )
        return [i for i in ids if i is not None]

    # --- read -----------------------------------------------------------------------------------

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
        deadline = time.monotonic() + block_ms / 1000
        while True:
            parts = chosen_partitions(self.partitions, partitions, self._rotation)
            self._rotation += 1
            entries = await self._read_once(group, consumer, count, parts)
            left = deadline - time.monotonic()
            if entries or left <= 0:
                return entries
            await asyncio.sleep(min(left, self._poll_interval))

    async def _read_once(self, group: str, consumer: str, count: int, parts: list[int]) -> list[Entry]:
        client, shards = await self._kinesis()
        cursors = await self._state.run(partial(self._cursors_tx, group), "read")
        out: list[Entry] = []
        for p in parts:
            remaining = count - len(out)
            if remaining <= 0:
                break
            position = cursors[p]
            records, next_iterator = await self._fetch(client, shards[p][0], group, p, position, remaining)
            if not records:
                if next_iterator:
                    self._iterators[group, p] = (position, next_iterator)
                continue
            entries = [Entry(f"{p}:{r['SequenceNumber']}", p, r["PartitionKey"], bytes(r["Data"]), 1) for r in records]
            claimed = await self._state.run(
                partial(self._claim_tx, group, consumer, p, position, records[-1]["SequenceNumber"], entries), "read"
            )
            if claimed:
                out.extend(entries)
                if next_iterator:
                    self._iterators[group, p] = (records[-1]["SequenceNumber"], next_iterator)
            else:
                # Another consumer of the group took them first; its records are its own.
                self._iterators.pop((group, p), None)
        return out

    async def _fetch(
        self, client: Any, shard_id: str, group: str, p: int, position: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        cached = self._iterators.get((group, p))
        iterator = cached[1] if cached is not None and cached[0] == position else None
        for attempt in range(2):
            with self._translated("read"):
                if iterator is None:
                    where: dict[str, str] = (
                        {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": position}
                        if position is not None
                        else {"ShardIteratorType": "TRIM_HORIZON"}
                    )
                    got = await client.get_shard_iterator(StreamName=self.stream_name, ShardId=shard_id, **where)
                    iterator = got["ShardIterator"]
                try:
                    answer = await client.get_records(ShardIterator=iterator, Limit=min(limit, 10_000))
                    for _ in range(_EMPTY_HOPS):
                        if (
                            answer["Records"]
                            or not answer.get("MillisBehindLatest")
                            or not answer.get("NextShardIterator")
                        ):
                            break
                        answer = await client.get_records(ShardIterator=answer["NextShardIterator"], Limit=limit)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") == "ExpiredIteratorException" and not attempt:
                        iterator = None
                        continue
                    raise
            return answer["Records"], answer.get("NextShardIterator")
        return [], None

    def _cursors_tx(self, group: str, conn: sqlite3.Connection) -> dict[int, str | None]:
        with transaction(conn):
            conn.executemany(
                "INSERT OR IGNORE INTO cursors (grp, partition, sequence) VALUES (?, ?, NULL)",
                [(group, p) for p in range(self.partitions)],
            )
            return dict(conn.execute("SELECT partition, sequence FROM cursors WHERE grp = ?", (group,)).fetchall())

    def _claim_tx(
        self,
        group: str,
        consumer: str,
        p: int,
        expected: str | None,
        last: str,
        entries: list[Entry],
        conn: sqlite3.Connection,
    ) -> bool:
        with transaction(conn):
            (current,) = conn.execute(
                "SELECT sequence FROM cursors WHERE grp = ? AND partition = ?", (group, p)
            ).fetchone()
            if current != expected:
                return False
            conn.execute("UPDATE cursors SET sequence = ? WHERE grp = ? AND partition = ?", (last, group, p))
            now = time.time()
            conn.executemany(
                "INSERT OR IGNORE INTO pending (grp, entry_id, partition, sequence, partition_key, payload, consumer,"
                " deliveries, delivered_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
                [(group, e.id, p, e.id.partition(":")[2], e.partition_key, e.payload, consumer, now) for e in entries],
            )
        return True

    # --- pending entries ----------------------------------------------------------------------

    def _check_ids(self, ids: Sequence[str]) -> list[str]:
        for entry_id in ids:
            _, position = split_id(entry_id, self.partitions)
            if not position.isdigit():
                raise ValueError(f"{entry_id!r} is not an entry id of the Kinesis driver")
        return list(ids)

    async def ack(self, group: str, ids: Sequence[str]) -> int:
        checked = self._check_ids(ids)
        if not checked:
            return 0

        def ack_tx(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                before = conn.total_changes
                conn.executemany("DELETE FROM pending WHERE grp = ? AND entry_id = ?", [(group, i) for i in checked])
                return conn.total_changes - before

        return await self._state.run(ack_tx, "ack")

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
                # Sequence numbers are decimal strings of up to 128 bits: order by length, then text.
                rows = conn.execute(
                    "SELECT entry_id, partition, partition_key, payload, deliveries FROM pending"
                    f" WHERE grp = ? AND delivered_at <= ? AND partition IN ({marks})"
                    " ORDER BY partition, length(sequence), sequence LIMIT ?",
                    (group, now - min_idle_ms / 1000, *parts, count),
                ).fetchall()
                conn.executemany(
                    "UPDATE pending SET consumer = ?, deliveries = deliveries + 1, delivered_at = ?"
                    " WHERE grp = ? AND entry_id = ?",
                    [(consumer, now, group, row[0]) for row in rows],
                )
            return [Entry(i, p, key, bytes(payload), deliveries + 1) for i, p, key, payload, deliveries in rows]

        return await self._state.run(reclaim_tx, "reclaim")

    async def pending(self, group: str) -> int:
        def count_tx(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM pending WHERE grp = ?", (group,)).fetchone()[0])

        return await self._state.run(count_tx, "pending")

    # --- dead letters -------------------------------------------------------------------------

    async def dead_letter(self, group: str, entry: Entry, reason: str, *, payload: bytes | None = None) -> str | None:
        (entry_id,) = self._check_ids([entry.id])

        def dead_letter_tx(conn: sqlite3.Connection) -> str | None:
            with transaction(conn):
                row = conn.execute(
                    "SELECT partition, partition_key, payload, deliveries FROM pending WHERE grp = ? AND entry_id = ?",
                    (group, entry_id),
                ).fetchone()
                if row is None:
                    return None
                conn.execute("DELETE FROM pending WHERE grp = ? AND entry_id = ?", (group, entry_id))
                return insert_dead_letter(
                    conn,
                    group=group,
                    entry_id=entry_id,
                    partition=row[0],
                    partition_key=row[1],
                    payload=bytes(row[2]) if payload is None else payload,
                    reason=reason,
                    deliveries=row[3],
                    now=time.time(),
                )

        return await self._state.run(dead_letter_tx, "dead_letter")

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return await self._state.run(partial(list_dead_letters, limit=limit), "dead_letters")

    async def replay(self, dead_letter_ids: Sequence[str]) -> int:
        rows = await self._state.run(partial(dead_letter_rows, ids=dead_letter_ids), "replay")
        if not rows:
            return 0
        # NOTE: not atomic across Kinesis and the state file: a crash between the two replays a
        # dead letter twice, which consumers absorb like any redelivery (dedup by message id).
        await self.append([Record(key, payload) for _, _, key, payload in rows])

        def forget_tx(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                conn.executemany("DELETE FROM dead_letters WHERE id = ?", [(row[0],) for row in rows])
            return len(rows)

        return await self._state.run(forget_tx, "replay")

    async def trim(self) -> int:
        # Kinesis expires records by its retention period; nothing to delete here.
        return 0

    async def ping(self) -> None:
        self._shards = None
        await self._kinesis()
        await self._state.run(lambda conn: None, "ping")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._exit_stack.aclose()
        finally:
            await self._state.close()


def _chunks(indexes: list[int], records: Sequence[Record]) -> Iterator[list[int]]:
    chunk: list[int] = []
    size = 0
    for i in indexes:
        record_size = len(records[i].payload) + len(records[i].partition_key.encode())
        if chunk and (len(chunk) == _PUT_RECORDS_MAX or size + record_size > _PUT_BYTES_MAX):
            yield chunk
            chunk, size = [], 0
        chunk.append(i)
        size += record_size
    if chunk:
        yield chunk
