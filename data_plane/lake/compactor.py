"""Merges a closed hour's small files into one, without duplicates, safe to re-run after any crash."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from data_plane.lake.layout import Partition, compact_name, events_prefix, tenant_prefix
from data_plane.lake.reader import deduplicate, partition_files, read_files
from data_plane.lake.schema import encode_parquet, sort_rows
from data_plane.lake.store import ObjectStore
from kernel.errors import Conflict


@dataclass(frozen=True)
class Compaction:
    """What one ``Compactor.compact`` call did; ``key`` is ``None`` when there was nothing to merge."""

    partition: Partition
    files: int
    rows_in: int
    rows_out: int
    key: str | None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _merge(partition: Partition, tables: list[pa.Table]) -> tuple[int, int, bytes]:
    table = pa.concat_tables(tables)
    tenants = pc.unique(table.column("tenant_id")).to_pylist()
    if tenants != [partition.tenant_id]:
        # Fail closed: a foreign row here is a bug or tampering; merging would spread it.
        raise Conflict(
            f"lake partition {partition.prefix} holds rows of tenants {sorted(tenants)}; refusing to compact it",
            code="lake_tenant_mismatch",
        )
    merged = sort_rows(deduplicate(table))
    return table.num_rows, merged.num_rows, encode_parquet(merged)


class Compactor:
    """Rewrites a partition's files as one ``compact-{digest}.parquet``, one row per message id.

    Order of work: read the inputs, write the merged file (atomic put), then delete exactly the
    inputs read. Why that is safe to stop anywhere and re-run, with no manifest:

    - Nothing is deleted before the rows are in a durable merged file, and only files that were read
      are deleted, so a file a writer adds meanwhile stays.
    - A crash after the put leaves the merged file beside its inputs: duplicates for a while
      (readers dedupe, counts are distinct), but the next run merges them all again, and merging is
      idempotent: dedup(merged + inputs) = merged.
    - The merged file's name is a digest of its input names and its bytes are a function of their
      contents, so a repeated or concurrent run of the same inputs writes identical bytes to the
      same key. Concurrent runs over different listings can leave two files until the next run.

    A partition is compacted by ``compact_closed`` once its hour ended ``grace`` ago; events that
    arrive later add small files, which the next run merges with the compacted one.
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        grace: dt.timedelta = dt.timedelta(minutes=10),
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self._store = store
        self.grace = grace
        self._clock = clock

    async def compact(self, partition: Partition) -> Compaction:
        """Merge the partition's files when it has two or more (one file never holds a repeat)."""
        keys = await partition_files(self._store, partition)
        if len(keys) < 2:
            return Compaction(partition, len(keys), 0, 0, None)
        # read_files leaves out a file a concurrent compaction merged and deleted meanwhile; the merged
        # name must name exactly the inputs read, as those are the only ones deleted below.
        tables = await read_files(self._store, keys)
        read = list(tables)
        if len(read) < 2:
            return Compaction(partition, len(read), 0, 0, None)
        rows_in, rows_out, data = await asyncio.to_thread(_merge, partition, list(tables.values()))
        key = partition.key(compact_name(read))
        await self._store.put(key, data)
        await self._store.delete([input_key for input_key in read if input_key != key])
        return Compaction(partition, len(read), rows_in, rows_out, key)

    async def compact_closed(self, tenant_id: str) -> list[Compaction]:
        """Compact every partition of the tenant that has several files and whose hour ended at least
        ``grace`` ago; returns what was merged."""
        files: dict[Partition, int] = defaultdict(int)
        for info in await self._store.list(events_prefix(tenant_id)):
            partition = Partition.from_key(info.key)
            if partition is not None and partition.tenant_id == tenant_id:
                files[partition] += 1
        cutoff = self._clock() - self.grace
        done = []
        for partition in sorted(files):
            if files[partition] >= 2 and partition.end <= cutoff:
                result = await self.compact(partition)
                if result.key is not None:
                    done.append(result)
        return done


async def drop_tenant(store: ObjectStore, tenant_id: str) -> int:
    """Delete everything the lake holds for the tenant (exactly ``tenants/{tenant_id}/``); returns the count."""
    keys = [info.key for info in await store.list(tenant_prefix(tenant_id))]
    await store.delete(keys)
    return len(keys)
