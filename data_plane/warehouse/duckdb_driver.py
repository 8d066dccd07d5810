"""The DuckDB warehouse: per tenant, a DuckDB database kept in step with the tenant's lake files."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from data_plane.lake.layout import Partition, check_tenant_id, events_prefix
from data_plane.lake.reader import read_files
from data_plane.lake.store import LocalObjectStore, ObjectStore
from data_plane.warehouse.port import SLOT_US, warehouse_drivers
from kernel.errors import NotFound, Unavailable

UNAVAILABLE = "warehouse_unavailable"
_SCHEMA_VERSION = 4
_COLUMNS = ("message_id", "received_at", "timestamp", "type", "event", "user_id", "anonymous_id", "properties")
_MAX_REFRESH_ATTEMPTS = 4
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MIN_US = -62_135_596_800_000_000
_MAX_US = 253_402_300_799_999_999

_DDL = f"""
CREATE TABLE IF NOT EXISTS meta (schema_version INTEGER);
CREATE TABLE IF NOT EXISTS ingested (part VARCHAR, key VARCHAR, size BIGINT);
CREATE TABLE IF NOT EXISTS users (user_key VARCHAR, uid INTEGER, first_ts BIGINT, last_ts BIGINT);
CREATE TABLE IF NOT EXISTS events (
    message_id VARCHAR, part VARCHAR, received_at BIGINT, ts BIGINT, uid INTEGER,
    name VARCHAR, product_id VARCHAR, properties VARCHAR, settled BOOLEAN,
    first_ts BIGINT, prev_ts BIGINT, prev_same_ts BIGINT, revenue DOUBLE
);
CREATE TABLE IF NOT EXISTS counts (slot BIGINT, name VARCHAR, events BIGINT);
CREATE TABLE IF NOT EXISTS product_lines (
    message_id VARCHAR, part VARCHAR, uid INTEGER, ts BIGINT, name VARCHAR, line INTEGER,
    product_id VARCHAR, price DOUBLE, quantity DOUBLE
);
INSERT INTO meta SELECT {_SCHEMA_VERSION} WHERE NOT EXISTS (SELECT 1 FROM meta);
"""

# One row per message id (the copy received first; the file name breaks a tie), analytics calls only.
_INCOMING = r"""
CREATE OR REPLACE TEMP TABLE incoming AS
WITH raw AS (
    SELECT message_id, epoch_us(received_at) AS received_at, epoch_us("timestamp") AS ts, type, event,
           user_id, anonymous_id, properties,
           regexp_extract(filename, 'date=([0-9]{4}-[0-9]{2}-[0-9]{2})/hour=([0-9]{2})/', 1) || '/' ||
           regexp_extract(filename, 'date=([0-9]{4}-[0-9]{2}-[0-9]{2})/hour=([0-9]{2})/', 2) AS part,
           filename
    FROM {source}
), first_copy AS (
    SELECT * FROM raw
    QUALIFY row_number() OVER (PARTITION BY message_id ORDER BY received_at, filename) = 1
)
SELECT message_id, part, received_at, ts,
       CASE WHEN user_id IS NOT NULL THEN 'u:' || user_id ELSE 'a:' || anonymous_id END AS user_key,
       CASE type WHEN 'track' THEN event WHEN 'page' THEN '$page' ELSE '$screen' END AS name,
       CASE WHEN json_type(properties, '$.product_id') = 'VARCHAR'
            THEN json_extract_string(properties, '$.product_id') END AS product_id,
       properties,
       CASE WHEN json_type(properties, '$."revenue"') IN ('BIGINT', 'UBIGINT', 'DOUBLE')
            THEN TRY_CAST(json_extract(properties, '$."revenue"') AS DOUBLE) END AS revenue
FROM first_copy
WHERE type IN ('track', 'page', 'screen') AND (user_id IS NOT NULL OR anonymous_id IS NOT NULL)
  AND (type <> 'track' OR event IS NOT NULL)
"""

_MERGE = [
    # A copy of the same message id already held from another partition: the earlier receipt wins.
    """DELETE FROM events WHERE message_id IN (
        SELECT e.message_id FROM events e JOIN incoming i USING (message_id) WHERE i.received_at < e.received_at)
       RETURNING uid, ts""",
    "DELETE FROM incoming WHERE message_id IN (SELECT message_id FROM events)",
    "DELETE FROM product_lines WHERE message_id IN (SELECT message_id FROM incoming)",
    """INSERT INTO users
       SELECT user_key, (SELECT coalesce(max(uid), -1) FROM users) + row_number() OVER (ORDER BY user_key),
              NULL, NULL
       FROM (SELECT DISTINCT user_key FROM incoming WHERE user_key NOT IN (SELECT user_key FROM users))""",
    """INSERT INTO events
       SELECT i.message_id, i.part, i.received_at, i.ts, u.uid, i.name, i.product_id, i.properties, false,
              NULL, NULL, NULL, i.revenue
       FROM incoming i JOIN users u USING (user_key)""",
    """INSERT INTO product_lines
       WITH carts AS (
           SELECT i.message_id, i.part, u.uid, i.ts, i.name,
                  unnest(json_extract(i.properties, '$.products[*]')) AS item,
                  generate_subscripts(json_extract(i.properties, '$.products[*]'), 1) - 1 AS line
           FROM incoming i JOIN users u USING (user_key)
           WHERE json_type(i.properties, '$.products') = 'ARRAY'
       )
       SELECT message_id, part, uid, ts, name, line, json_extract_string(item, '$.product_id'),
              CASE WHEN json_type(item, '$.price') IN ('BIGINT', 'UBIGINT', 'DOUBLE')
                   THEN TRY_CAST(json_extract(item, '$.price') AS DOUBLE) END,
              CASE WHEN json_type(item, '$.quantity') IN ('BIGINT', 'UBIGINT', 'DOUBLE')
                   THEN TRY_CAST(json_extract(item, '$.quantity') AS DOUBLE) END
       FROM carts WHERE json_type(item, '$.product_id') = 'VARCHAR'""",
    "DROP TABLE incoming",
]

_SLOT = f"((ts - ((ts % {SLOT_US}) + {SLOT_US}) % {SLOT_US}) // {SLOT_US})"  # floor division, also before 1970

# Each user's first event, and each event's previous one of the same user (and of the same user and
# name), in event order: a row starts a user's run in a bucket exactly when its predecessor lies in
# another bucket, so distinct users per day, week or cohort period are plain counts.
_DERIVED = """min(ts) OVER (PARTITION BY uid) AS first_ts,
    lag(ts) OVER (PARTITION BY uid ORDER BY ts, message_id) AS prev_ts,
    lag(ts) OVER (PARTITION BY uid, name ORDER BY ts, message_id) AS prev_same_ts"""

# What a merge changed, kept up to date for the users and 15-minute slots it touched only.
_DERIVE = [
    # A user's rows before the earliest one a merge touched keep their values (a predecessor is always
    # earlier, and a new first event makes that earliest touched row the first): only the rows from
    # there on are ordered again, seeded with the last earlier time per user and per (user, name).
    "CREATE OR REPLACE TEMP TABLE since AS SELECT uid, min(ts) AS since FROM touched GROUP BY uid",
    # The touched users' rows, found in one pass over the table.
    """CREATE OR REPLACE TEMP TABLE mine AS
       SELECT e.rowid AS row, e.uid, e.name, e.ts, e.message_id, e.first_ts AS old_first,
              e.prev_ts AS old_prev, e.prev_same_ts AS old_same, s.since
       FROM events e JOIN since s ON e.uid = s.uid""",
    """CREATE OR REPLACE TEMP TABLE derived AS
       WITH region AS (
           SELECT * FROM mine WHERE ts >= since
       ), earlier AS (
           SELECT uid, name, max(ts) AS last FROM mine WHERE ts < since GROUP BY uid, name
       ), seed AS (
           SELECT uid, max(last) AS last FROM earlier GROUP BY uid
       ), firsts AS (
           SELECT uid, min(ts) AS first_ts FROM mine GROUP BY uid
       ), computed AS (
           SELECT r.row, r.old_first, r.old_prev, r.old_same, f.first_ts,
                  CASE WHEN row_number() OVER (PARTITION BY r.uid ORDER BY r.ts, r.message_id) = 1 THEN s.last
                       ELSE lag(r.ts) OVER (PARTITION BY r.uid ORDER BY r.ts, r.message_id) END AS prev_ts,
                  CASE WHEN row_number() OVER (PARTITION BY r.uid, r.name ORDER BY r.ts, r.message_id) = 1
                       THEN b.last
                       ELSE lag(r.ts) OVER (PARTITION BY r.uid, r.name ORDER BY r.ts, r.message_id) END
                       AS prev_same_ts
           FROM region r JOIN firsts f ON f.uid = r.uid LEFT JOIN seed s ON s.uid = r.uid
           LEFT JOIN earlier b ON b.uid = r.uid AND b.name = r.name
       )
       SELECT row, first_ts, prev_ts, prev_same_ts FROM computed
       WHERE old_first IS DISTINCT FROM first_ts OR old_prev IS DISTINCT FROM prev_ts
          OR old_same IS DISTINCT FROM prev_same_ts""",
    """UPDATE events SET first_ts = d.first_ts, prev_ts = d.prev_ts, prev_same_ts = d.prev_same_ts
       FROM derived d WHERE events.rowid = d.row""",
    "DROP TABLE derived",
    "DROP TABLE mine",
    "DROP TABLE since",
]
_ROLL_UP = [
    """UPDATE users SET first_ts = s.first_ts, last_ts = s.last_ts
       FROM (SELECT t.uid, min(e.ts) AS first_ts, max(e.ts) AS last_ts
             FROM (SELECT DISTINCT uid FROM touched) t LEFT JOIN events e USING (uid) GROUP BY t.uid) s
       WHERE users.uid = s.uid""",
    f"CREATE OR REPLACE TEMP TABLE touched_slots AS SELECT DISTINCT {_SLOT} AS slot FROM touched",
    "DELETE FROM counts WHERE slot IN (SELECT slot FROM touched_slots)",
    f"""INSERT INTO counts
        SELECT {_SLOT} AS slot, name, count(*) FROM events
        WHERE ts >= (SELECT min(slot) FROM touched_slots) * {SLOT_US}
          AND ts < ((SELECT max(slot) FROM touched_slots) + 1) * {SLOT_US}
          AND {_SLOT} IN (SELECT slot FROM touched_slots)
        GROUP BY ALL""",
    "DROP TABLE touched_slots",
    "DROP TABLE touched",
]


def _touch(cursor: duckdb.DuckDBPyConnection, result: duckdb.DuckDBPyConnection) -> None:
    """Note the (uid, ts) of the rows a ``DELETE … RETURNING uid, ts`` removed as touched."""
    removed = pa.table(result.fetchnumpy())
    if removed.num_rows:
        cursor.register("removed_rows", removed)
        cursor.execute("INSERT INTO touched SELECT uid, ts FROM removed_rows")
        cursor.unregister("removed_rows")


class _Tenant:
    """One tenant's database and what of the lake it has taken in."""

    def __init__(self, connection: duckdb.DuckDBPyConnection) -> None:
        self.connection = connection
        self.lock = asyncio.Lock()
        # Local lakes: each hour folder's modification time and files when last listed.
        self.folders: dict[str, tuple[int, frozenset[tuple[str, int]]]] = {}
        self.write = threading.Lock()
        self.listing = threading.Lock()
        rows = connection.execute("SELECT part, key, size FROM ingested").fetchall()
        self.parts: dict[str, frozenset[tuple[str, int]]] = {}
        grouped: dict[str, set[tuple[str, int]]] = {}
        for part, key, size in rows:
            grouped.setdefault(part, set()).add((key, size))
        self.parts = {part: frozenset(files) for part, files in grouped.items()}
        self.digests: dict[str, tuple[frozenset[tuple[str, int]], bytes]] = {}
        self.generation = _generation(self.parts, self.digests)


def _generation(
    parts: dict[str, frozenset[tuple[str, int]]],
    memo: dict[str, tuple[frozenset[tuple[str, int]], bytes]] | None = None,
) -> str:
    """A digest of the files by partition. ``memo`` keeps each partition's own digest while its file
    set stays the same object, so digesting a range costs its partitions, not their files."""
    hasher = hashlib.sha256()
    for part in sorted(parts):
        files = parts[part]
        held = memo.get(part) if memo is not None else None
        if held is not None and held[0] is files:
            digest = held[1]
        else:
            inner = hashlib.sha256(part.encode())
            for key, size in sorted(files):
                inner.update(f"{key}\t{size}\n".encode())
            digest = inner.digest()
            if memo is not None:
                memo[part] = (files, digest)
        hasher.update(digest)
    return hasher.hexdigest()[:24]


# A folder changed this recently is listed again even if its time looks unchanged: file-system
# timestamps are coarse (a few ms), so two changes within one tick show one time.
_RACY_NS = 2_000_000_000


def _parts_between(low_us: int | None, high_us: int | None) -> tuple[str, str]:
    """The partition names (``date/hour``) an instant range ``[low_us, high_us)`` falls in, as an
    inclusive pair of bounds that compare as text (ISO dates with four-digit years do)."""

    def name(us: int) -> str:
        # Clamped to the instants a datetime holds: lake partitions lie within years 1..9999.
        moment = _EPOCH + dt.timedelta(microseconds=min(max(us, _MIN_US), _MAX_US))
        return f"{moment.date().isoformat()}/{moment.hour:02d}"

    first = name(low_us) if low_us is not None else ""
    last = name(high_us - 1) if high_us is not None else "~"
    return first, last


def _local_listing(
    root: Path,
    tenant_id: str,
    folders: dict[str, tuple[int, frozenset[tuple[str, int]]]],
    bounds: tuple[str, str] = ("", "~"),
) -> dict[str, frozenset[tuple[str, int]]]:
    """Like ``LocalObjectStore.list`` of the tenant's events, but re-reading only hour folders whose
    modification time moved (a file put, renamed over or deleted in a folder changes its time), and
    only the partitions within ``bounds`` (see ``_parts_between``)."""
    first_date, last_date = bounds[0][:10], bounds[1][:10]
    base = root.joinpath(*events_prefix(tenant_id).rstrip("/").split("/"))
    now = time.time_ns()
    found: dict[str, frozenset[tuple[str, int]]] = {}
    seen: set[str] = set()
    try:
        days = [
            entry
            for entry in os.scandir(base)
            if entry.is_dir() and entry.name.startswith("date=") and first_date <= entry.name[5:] <= last_date
        ]
    except FileNotFoundError:
        for gone in [folder for folder in folders if bounds[0] <= _folder_part(folder) <= bounds[1]]:
            del folders[gone]
        return {}
    for day in days:
        try:
            hours = [entry for entry in os.scandir(day.path) if entry.is_dir() and entry.name.startswith("hour=")]
        except FileNotFoundError:
            continue
        for hour in hours:
            folder = f"{day.name}/{hour.name}"
            if not bounds[0] <= _folder_part(folder) <= bounds[1]:
                continue
            try:
                stamp = hour.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            seen.add(folder)
            cached = folders.get(folder)
            if cached is not None and cached[0] == stamp and now - stamp > _RACY_NS:
                files = cached[1]
            else:
                listed = set()
                try:
                    for entry in os.scandir(hour.path):
                        if entry.is_file() and not entry.name.startswith(".") and entry.name.endswith(".parquet"):
                            key = f"{events_prefix(tenant_id)}{folder}/{entry.name}"
                            if Partition.from_key(key) is not None:
                                with contextlib.suppress(FileNotFoundError):
                                    listed.add((key, entry.stat().st_size))
                except FileNotFoundError:
                    continue
                files = frozenset(listed)
                folders[folder] = (stamp, files)
            if files:
                found[_folder_part(folder)] = files
    for gone in set(folders) - seen:
        if bounds[0] <= _folder_part(gone) <= bounds[1]:
            del folders[gone]
    return found


def _folder_part(folder: str) -> str:
    """``date=2026-01-05/hour=07`` as the partition name ``2026-01-05/07``."""
    day, _, hour = folder.partition("/")
    return f"{day[5:]}/{hour[5:]}"


def _part_of(partition: Partition) -> str:
    return f"{partition.date.isoformat()}/{partition.hour:02d}"


class DuckDBWarehouse:
    """Each tenant gets its own DuckDB database (a file under ``directory``, or in memory), holding its
    deduplicated events with integer user ids and the product lines of its orders, so queries read
    compact columns instead of parsing Parquet and JSON every time.

    ``refresh`` lists the tenant's lake prefix and re-reads only the hour partitions whose files
    changed (new files, or a compaction's swap), so keeping up costs what lands, not the whole lake.
    A message id stored twice (before compaction) is kept once: the copy received first.
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        directory: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        memory_limit: str | None = None,
        settle_fraction: float = 0.1,
    ) -> None:
        self._store = store
        self._directory = Path(directory) if directory else None
        self._config: dict[str, Any] = {}
        if threads:
            self._config["threads"] = threads
        if memory_limit:
            self._config["memory_limit"] = memory_limit
        self._tenants: dict[str, _Tenant] = {}
        self._opening = asyncio.Lock()
        self._settle_fraction = settle_fraction

    async def _tenant(self, tenant_id: str) -> _Tenant:
        check_tenant_id(tenant_id)
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            async with self._opening:
                tenant = self._tenants.get(tenant_id)
                if tenant is None:
                    tenant = await asyncio.to_thread(self._open, tenant_id)
                    self._tenants[tenant_id] = tenant
        return tenant

    def _open(self, tenant_id: str) -> _Tenant:
        if self._directory is None:
            database = ":memory:"
        else:
            self._directory.mkdir(parents=True, exist_ok=True)
            database = str(self._directory / f"{tenant_id}.duckdb")
        try:
            connection = duckdb.connect(database, config=dict(self._config))
            version = None
            if database != ":memory:":
                found = connection.execute(
                    "SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'"
                ).fetchone()
                if found and found[0]:
                    row = connection.execute("SELECT max(schema_version) FROM meta").fetchone()
                    version = row[0] if row else None
            if version is not None and version != _SCHEMA_VERSION:
                # An older layout: rebuilt from the lake, which stays the source of truth.
                connection.close()
                os.unlink(database)
                connection = duckdb.connect(database, config=dict(self._config))
            connection.execute(_DDL)
        except duckdb.Error as exc:
            raise Unavailable(f"warehouse database for a tenant cannot open: {exc}", code=UNAVAILABLE) from exc
        return _Tenant(connection)

    async def refresh(self, tenant_id: str) -> str:
        tenant = await self._tenant(tenant_id)
        async with tenant.lock:
            for attempt in range(_MAX_REFRESH_ATTEMPTS):
                try:
                    return await self._refresh(tenant_id, tenant)
                except NotFound:
                    # A file went away between listing and reading (compacted): list again.
                    if attempt == _MAX_REFRESH_ATTEMPTS - 1:
                        raise Unavailable(
                            "the lake kept changing while the warehouse read it", code=UNAVAILABLE
                        ) from None
        raise AssertionError("unreachable")

    async def version(
        self, tenant_id: str, low_us: int | None = None, high_us: int | None = None, *, fresh: bool = True
    ) -> str:
        tenant = await self._tenant(tenant_id)
        bounds = _parts_between(low_us, high_us)
        if fresh:
            parts = await self._list(tenant_id, tenant, bounds)
        else:
            parts = {part: files for part, files in tenant.parts.items() if bounds[0] <= part <= bounds[1]}
        return _generation(parts, tenant.digests)

    async def _list(
        self, tenant_id: str, tenant: _Tenant, bounds: tuple[str, str] = ("", "~")
    ) -> dict[str, frozenset[tuple[str, int]]]:
        """The tenant's lake files by partition (``date/hour``) as ``(key, size)`` pairs, within ``bounds``."""
        if isinstance(self._store, LocalObjectStore):
            root = self._store.root

            def listing() -> dict[str, frozenset[tuple[str, int]]]:
                # A cache lookup lists while a refresh may list too: one at a time per tenant.
                with tenant.listing:
                    return _local_listing(root, tenant_id, tenant.folders, bounds)

            return await asyncio.to_thread(listing)
        listed: dict[str, set[tuple[str, int]]] = {}
        for info in await self._store.list(events_prefix(tenant_id)):
            partition = Partition.from_key(info.key)
            if partition is None or partition.tenant_id != tenant_id:
                continue
            part = _part_of(partition)
            if bounds[0] <= part <= bounds[1]:
                listed.setdefault(part, set()).add((info.key, info.size))
        return {part: frozenset(files) for part, files in listed.items()}

    async def _refresh(self, tenant_id: str, tenant: _Tenant) -> str:
        current = await self._list(tenant_id, tenant)
        changed = sorted(
            part for part in current.keys() | tenant.parts.keys() if current.get(part) != tenant.parts.get(part)
        )
        if not changed:
            return tenant.generation
        keys = [key for part in changed for key, _ in sorted(current.get(part, ()))]
        rows = [(part, key, size) for part in changed for key, size in sorted(current.get(part, ()))]
        source: list[str] | pa.Table
        if isinstance(self._store, LocalObjectStore):
            # DuckDB reads the files itself, in parallel, only the columns it needs.
            source = [str(self._store.root.joinpath(*key.split("/"))) for key in keys]
        else:
            # Other object stores (S3): fetched concurrently into memory, no scratch files.
            tables = await read_files(self._store, keys, _COLUMNS)
            if len(tables) < len(keys):
                raise NotFound("a lake file vanished while read", code="object_not_found")
            source = (
                pa.concat_tables(
                    [
                        table.append_column("filename", pa.array([key] * table.num_rows, pa.string()))
                        for key, table in tables.items()
                    ]
                )
                if tables
                else []
            )
        await asyncio.to_thread(self._merge, tenant, changed, source, rows)
        tenant.parts = dict(current)
        tenant.generation = _generation(tenant.parts, tenant.digests)
        return tenant.generation

    def _merge(
        self, tenant: _Tenant, parts: list[str], source: list[str] | pa.Table, rows: list[tuple[str, str, int]]
    ) -> None:
        with tenant.write:
            cursor = tenant.connection.cursor()
            try:
                cursor.execute("BEGIN")
                cursor.execute("CREATE OR REPLACE TEMP TABLE touched (uid INTEGER, ts BIGINT)")
                for table in ("events", "product_lines", "ingested"):
                    delete = f"DELETE FROM {table} WHERE part IN (SELECT unnest(?::VARCHAR[]))"
                    if table == "events":
                        _touch(cursor, cursor.execute(delete + " RETURNING uid, ts", [parts]))
                    else:
                        cursor.execute(delete, [parts])
                if isinstance(source, pa.Table):
                    cursor.register("lake_rows", source)
                    cursor.execute(_INCOMING.replace("{source}", "lake_rows"))
                    cursor.unregister("lake_rows")
                elif source:
                    reader = "read_parquet(?, filename = true, hive_partitioning = false, union_by_name = true)"
                    cursor.execute(_INCOMING.replace("{source}", reader), [source])
                if isinstance(source, pa.Table) or source:
                    for statement in _MERGE:
                        result = cursor.execute(statement)
                        if "RETURNING uid, ts" in statement:
                            _touch(cursor, result)
                    cursor.execute(
                        "INSERT INTO touched SELECT uid, ts FROM events WHERE part IN (SELECT unnest(?::VARCHAR[]))",
                        [parts],
                    )
                if rows:
                    cursor.executemany("INSERT INTO ingested VALUES (?, ?, ?)", rows)
                row = cursor.execute("SELECT count(*) FILTER (WHERE NOT settled), count(*) FROM events").fetchone()
                fresh, total = row if row else (0, 0)
                if fresh and fresh > self._settle_fraction * total:
                    # Lay the table out by user again: scans then come in (uid, ts, message_id) order,
                    # so queries need no sort. Rows added since wait unsettled (queries sort those).
                    cursor.execute(
                        f"CREATE TABLE events_sorted AS SELECT * REPLACE (true AS settled, {_DERIVED}) FROM events "
                        "ORDER BY uid, ts, message_id"
                    )
                    cursor.execute("DROP TABLE events")
                    cursor.execute("ALTER TABLE events_sorted RENAME TO events")
                else:
                    for statement in _DERIVE:
                        cursor.execute(statement)
                for statement in _ROLL_UP:
                    cursor.execute(statement)
                cursor.execute("COMMIT")
            except duckdb.IOException as exc:
                cursor.execute("ROLLBACK")
                if "No such file" in str(exc) or "not exist" in str(exc):
                    raise NotFound(f"a lake file vanished while read: {exc}", code="object_not_found") from None
                raise Unavailable(f"warehouse could not read the lake: {exc}", code=UNAVAILABLE) from exc
            except duckdb.Error as exc:
                cursor.execute("ROLLBACK")
                raise Unavailable(f"warehouse could not take in lake files: {exc}", code=UNAVAILABLE) from exc
            finally:
                cursor.close()

    async def fetch(self, tenant_id: str, sql: str, parameters: Sequence[Any] = ()) -> pa.Table:
        tenant = await self._tenant(tenant_id)

        def run() -> pa.Table:
            cursor = tenant.connection.cursor()
            try:
                return cursor.sql(sql, params=list(parameters)).to_arrow_table()
            finally:
                cursor.close()

        try:
            return await asyncio.to_thread(run)
        except duckdb.Error as exc:
            raise Unavailable(f"warehouse query failed: {exc}", code=UNAVAILABLE) from exc

    async def drop(self, tenant_id: str) -> None:
        check_tenant_id(tenant_id)
        async with self._opening:
            tenant = self._tenants.pop(tenant_id, None)
        if tenant is not None:
            async with tenant.lock:
                tenant.connection.close()
        if self._directory is not None:
            for suffix in (".duckdb", ".duckdb.wal"):
                path = self._directory / f"{tenant_id}{suffix}"
                if path.exists():
                    path.unlink()

    async def close(self) -> None:
        for tenant in self._tenants.values():
            tenant.connection.close()
        self._tenants.clear()


@warehouse_drivers.register("duckdb")
def _duckdb_driver(
    *, store: ObjectStore, directory: str | None = None, threads: int | None = None, memory_limit: str | None = None
) -> DuckDBWarehouse:
    return DuckDBWarehouse(store, directory=directory, threads=threads, memory_limit=memory_limit)
