"""Reading the lake back: one partition's rows, and distinct-event counts for reconciliation."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from data_plane.lake.layout import Partition, events_prefix
from data_plane.lake.schema import COLUMNS, EVENT_SCHEMA, decode_parquet
from data_plane.lake.store import ObjectStore
from kernel.errors import NotFound

_READ_CONCURRENCY = 16


def deduplicate(table: pa.Table) -> pa.Table:
    """One row per ``message_id``: the one with the earliest ``received_at``, ties going to the row
    that comes first in ``table``. Row order of the result is unspecified."""
    rows = table.num_rows
    if rows < 2:
        return table
    order = pc.sort_indices(
        table.append_column("__row", pa.array(range(rows), pa.int64())),
        [("message_id", "ascending"), ("received_at", "ascending"), ("__row", "ascending")],
    )
    ids = table.column("message_id").take(order).combine_chunks()
    first = pa.concat_arrays([pa.array([True]), pc.not_equal(ids.slice(1), ids.slice(0, rows - 1))])
    return table.take(order.filter(first))


async def read_files(store: ObjectStore, keys: Sequence[str], columns: Sequence[str] = COLUMNS) -> dict[str, pa.Table]:
    """Each file's rows by key, in the order of ``keys``; a file deleted meanwhile (compacted) is left out."""
    slots = asyncio.Semaphore(_READ_CONCURRENCY)

    async def one(key: str) -> pa.Table | None:
        async with slots:
            try:
                data = await store.get(key)
            except NotFound:
                return None
            return await asyncio.to_thread(decode_parquet, data, columns)

    tables = await asyncio.gather(*(one(key) for key in keys))
    return {key: table for key, table in zip(keys, tables, strict=True) if table is not None}


def _concat(tables: list[pa.Table], columns: Sequence[str]) -> pa.Table:
    if not tables:
        return pa.schema([EVENT_SCHEMA.field(name) for name in columns]).empty_table()
    return pa.concat_tables(tables)


async def partition_files(store: ObjectStore, partition: Partition) -> list[str]:
    """Keys of the partition's Parquet files, sorted."""
    return [info.key for info in await store.list(partition.prefix) if Partition.from_key(info.key) == partition]


async def read_partition(
    store: ObjectStore, partition: Partition, *, columns: Sequence[str] = COLUMNS, deduplicated: bool = True
) -> pa.Table:
    """The partition's rows; by default one per ``message_id`` (see ``deduplicate``).

    NOTE: between a writer's flushes and the next compaction a partition may hold a message id
    twice (a redelivery batched differently); readers that need exact rows dedupe, as this does.
    """
    wanted = list(columns)
    if deduplicated:
        wanted += [name for name in ("message_id", "received_at") if name not in wanted]
    files = await read_files(store, await partition_files(store, partition), wanted)
    table = _concat(list(files.values()), wanted)
    return deduplicate(table).select(list(columns)) if deduplicated else table


async def count(store: ObjectStore, tenant_id: str, date: dt.date, hour: int) -> int:
    """Distinct events (message ids) in the tenant's partition for that UTC hour."""
    table = await read_partition(store, Partition(tenant_id, date, hour), columns=["message_id"], deduplicated=False)
    return int(pc.count_distinct(table.column("message_id")).as_py()) if table.num_rows else 0


async def count_by_hour(
    store: ObjectStore, tenant_id: str, *, by: Literal["timestamp", "received_at"] = "timestamp"
) -> dict[dt.datetime, int]:
    """Distinct events of the tenant per UTC hour of ``by``, for reconciliation
    (accepted = in the lake + dead-lettered, per tenant and hour).

    A message id counts once across the whole tenant, in the hour of its earliest-received copy.
    ``by="received_at"`` is the hour ingestion counts in; ``"timestamp"`` the partition hour.
    Reads three columns of every file of the tenant.
    """
    columns = ["message_id", "received_at", *(["timestamp"] if by == "timestamp" else [])]
    keys = [
        info.key
        for info in await store.list(events_prefix(tenant_id))
        if (partition := Partition.from_key(info.key)) is not None and partition.tenant_id == tenant_id
    ]
    files = await read_files(store, keys, columns)
    table = deduplicate(_concat(list(files.values()), columns))
    if table.num_rows == 0:
        return {}
    hours = pc.floor_temporal(table.column(by), unit="hour")
    counted = pc.value_counts(hours)
    return {
        start.as_py(): int(number.as_py())
        for start, number in sorted(
            zip(counted.field("values"), counted.field("counts"), strict=True), key=lambda pair: pair[0].as_py()
        )
    }
