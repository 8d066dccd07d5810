"""The cell's usage ledger: per tenant and hour, what ingestion accepted and what became of it.

Two writers share it: ingestion counts events accepted (after their append is durable, before the
202) and the distinct users behind them; pipeline workers count each stream entry's outcome, once
per entry id however often it is delivered. Reconciliation reads it beside the lake, and the usage
pusher turns its growth into ``UsageRecord``s for the control plane through an outbox, so a report
that was sent but not confirmed goes again under the same id.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import msgspec

from data_plane.contract.schemas import UsageRecord
from data_plane.settings import CellSettings
from data_plane.stream._sqlite import SqliteWorker, transaction

OutcomeKind = Literal["written", "duplicate", "dead_lettered"]
# Most keys in one tracked_users record: a report stays well under a request's size limit.
MAX_KEYS_PER_RECORD = 5_000
# Entry ids are remembered this long to count each entry once; far longer than any redelivery.
COUNTED_RETENTION = dt.timedelta(days=8)
# A closed hour's user rows are kept this long after they were reported to the control plane,
# which keeps the distinct users of the whole period; the ledger does not need them after that.
USER_ROWS_RETENTION = dt.timedelta(hours=2)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_hours (
    tenant_id TEXT NOT NULL,
    hour INTEGER NOT NULL,
    accepted INTEGER NOT NULL DEFAULT 0,
    written INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    replayed INTEGER NOT NULL DEFAULT 0,
    reported INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, hour)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_users (
    tenant_id TEXT NOT NULL,
    hour INTEGER NOT NULL,
    user_key TEXT NOT NULL,
    reported INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, hour, user_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ix_usage_users_unreported ON usage_users (reported, tenant_id, hour);
CREATE TABLE IF NOT EXISTS usage_counted (
    entry_id TEXT PRIMARY KEY,
    at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ix_usage_counted_at ON usage_counted (at);
-- How much of a tenant-hour's billed events and duplicates was reported already (usage_hours.reported
-- is the watermark of events received).
CREATE TABLE IF NOT EXISTS usage_marks (
    tenant_id TEXT NOT NULL,
    hour INTEGER NOT NULL,
    metric TEXT NOT NULL,
    reported INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, hour, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_outbox (
    id TEXT PRIMARY KEY,
    record BLOB NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
"""


def hour_of(moment: dt.datetime) -> dt.datetime:
    """The start of the UTC hour ``moment`` falls in (a naive datetime is taken as UTC)."""
    moment = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def _epoch(moment: dt.datetime) -> int:
    return int(hour_of(moment).timestamp())


def _moment(epoch: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def user_key(tenant_id: str, user_or_anonymous_id: str) -> str:
    """A tracked user as the ledger and billing see it: a digest, never the id itself."""
    return hashlib.blake2b(f"{tenant_id}\x00{user_or_anonymous_id}".encode(), digest_size=10).hexdigest()


class Outcome(NamedTuple):
    """What became of ``count`` events of one stream entry: written to the lake, dropped as
    duplicates, or dead-lettered. An entry's outcomes are counted together, once per entry id."""

    entry_id: str
    tenant_id: str
    received_at: dt.datetime
    kind: OutcomeKind
    count: int = 1


@dataclass(frozen=True)
class HourCounts:
    """One tenant-hour of the ledger. ``dead_lettered`` is net of replays; ``users`` counts the
    hour's distinct users while their rows are kept (``USER_ROWS_RETENTION`` after reporting).
    ``billed`` is what the customer is charged for: events whose outcome is known and that were
    not duplicates (written + dead-lettered), i.e. each message id once within the dedup window."""

    tenant_id: str
    hour: dt.datetime
    accepted: int
    written: int
    duplicates: int
    dead_lettered: int
    users: int
    billed: int = 0


@dataclass
class _Pending:
    tenant_id: str
    hour: int
    count: int
    keys: set[str]
    done: asyncio.Future[None] = field(repr=False)


def _count_accepted(
    conn: sqlite3.Connection, totals: dict[tuple[str, int], int], users: set[tuple[str, int, str]]
) -> None:
    conn.executemany(
        "INSERT INTO usage_hours (tenant_id, hour, accepted) VALUES (?, ?, ?) "
        "ON CONFLICT (tenant_id, hour) DO UPDATE SET accepted = accepted + excluded.accepted",
        [(tenant, hour, count) for (tenant, hour), count in totals.items()],
    )
    conn.executemany("INSERT OR IGNORE INTO usage_users (tenant_id, hour, user_key) VALUES (?, ?, ?)", users)


def open_ledger(cell: CellSettings, stream: object) -> UsageLedger:
    """A cell's ledger. It lives in the embedded log's own file when the stream is that log, so that
    ingestion commits the events and their count together (one fsync); otherwise in its own file.

    A ledger left in its own file by an older cell is folded into the log's file when it opens.
    """
    from data_plane.stream.log import LogStream

    if isinstance(stream, LogStream) and stream.path.resolve() != cell.usage_path.resolve():
        return UsageLedger(stream.path, fold=cell.usage_path)
    return UsageLedger(cell.usage_path)


# At most this many (tenant, user) pairs of the current hour are remembered per process (~100 bytes each).
_KNOWN_USERS_MAX = 250_000

_TABLES = ("usage_hours", "usage_users", "usage_counted", "usage_outbox", "usage_marks")


def _folder(old: Path) -> Callable[[sqlite3.Connection], None]:
    def fold(conn: sqlite3.Connection) -> None:
        if not old.exists():
            return
        conn.execute("ATTACH DATABASE ? AS old", (str(old),))
        try:
            # OR IGNORE: two processes that fold at once copy each row once.
            with transaction(conn):
                for table in _TABLES:
                    columns = ", ".join(
                        name
                        for (name,) in conn.execute(
                            "SELECT o.name FROM pragma_table_info(?, 'old') o JOIN pragma_table_info(?, 'main') m"
                            " USING (name)",
                            (table, table),
                        )
                    )
                    if columns:
                        conn.execute(  # names from the schemas themselves
                            f"INSERT OR IGNORE INTO main.{table} ({columns}) SELECT {columns} FROM old.{table}"
                        )
        finally:
            conn.execute("DETACH DATABASE old")
        for suffix in ("-wal", "-shm"):
            Path(f"{old}{suffix}").unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            old.replace(old.with_name(old.name + ".folded"))

    return fold


# Billed events of a tenant-hour: outcomes known, duplicates excluded (dead letters net of replays).
_BILLED = "h.written + h.dead_lettered - h.replayed"


def _event_records(conn: sqlite3.Connection) -> list[UsageRecord]:
    """Records for the growth of every tenant-hour's event counts since they were last reported,
    moving the watermarks in the caller's transaction. A watermark only rises: billed events dip
    while a replayed dead letter is in flight again, and are not reported twice when it lands."""
    # NOTE: hours reported by an older cell billed what was accepted; their billed watermark starts
    # there, so nothing they already billed is billed again.
    conn.execute(
        "INSERT OR IGNORE INTO usage_marks (tenant_id, hour, metric, reported) "
        "SELECT tenant_id, hour, 'events', reported FROM usage_hours"
    )
    rows = conn.execute(
        f"SELECT h.tenant_id, h.hour, h.accepted, h.reported, {_BILLED}, e.reported, h.duplicates, "
        "COALESCE(d.reported, 0) FROM usage_hours h "
        "JOIN usage_marks e ON e.tenant_id = h.tenant_id AND e.hour = h.hour AND e.metric = 'events' "
        "LEFT JOIN usage_marks d ON d.tenant_id = h.tenant_id AND d.hour = h.hour AND d.metric = 'events_duplicate' "
        f"WHERE h.accepted > h.reported OR {_BILLED} > e.reported OR h.duplicates > COALESCE(d.reported, 0)"
    ).fetchall()
    records: list[UsageRecord] = []
    for tenant, hour, accepted, received_mark, billed, billed_mark, duplicates, duplicate_mark in rows:
        for metric, value, mark in (
            ("events", billed, billed_mark),
            ("events_received", accepted, received_mark),
            ("events_duplicate", duplicates, duplicate_mark),
        ):
            if value > mark:
                records.append(
                    UsageRecord(
                        id=f"{metric.replace('_', '-')}-{uuid.uuid4().hex}",
                        tenant_id=tenant,
                        metric=metric,
                        timestamp=_moment(hour),
                        value=value - mark,
                    )
                )
        conn.execute(
            "UPDATE usage_hours SET reported = max(reported, accepted) WHERE tenant_id = ? AND hour = ?",
            (tenant, hour),
        )
        conn.executemany(
            "INSERT INTO usage_marks (tenant_id, hour, metric, reported) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (tenant_id, hour, metric) DO UPDATE SET reported = max(reported, excluded.reported)",
            [(tenant, hour, "events", billed), (tenant, hour, "events_duplicate", duplicates)],
        )
    return records


class UsageLedger:
    """The ledger in a SQLite file: the embedded log's, or its own (WAL, ``synchronous=FULL``).

    Several processes (the ingest server, ``livora worker``s) open the same file; SQLite's write
    lock orders them. Concurrent ``accepted`` calls of one process are committed together (group
    commit): one fsync for all the requests that arrived meanwhile.
    """

    def __init__(self, path: str | Path, *, fold: Path | None = None) -> None:
        self._db = SqliteWorker(
            path,
            label="sqlite",
            schema=_SCHEMA,
            what="usage ledger",
            code="usage_unavailable",
            on_open=_folder(fold) if fold is not None else None,
        )
        self._queue: list[_Pending] = []
        self._draining: asyncio.Task[None] | None = None
        # Users this process has counted (committed) in the current hour: not written again. Most
        # requests come from users seen minutes before, and their rows were most of the append's work.
        self._known_hour = -1
        self._known_users: set[str] = set()

    @property
    def path(self) -> Path:
        return self._db.path

    # --- ingestion -------------------------------------------------------------------------

    async def accepted(self, tenant_id: str, received_at: dt.datetime, count: int, user_keys: Iterable[str]) -> None:
        """Count ``count`` events accepted at ``received_at`` and the users behind them; durable on return."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        keys = self.new_users(tenant_id, received_at, user_keys)
        self._queue.append(_Pending(tenant_id, _epoch(received_at), count, set(keys), done))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        await done
        self.counted(tenant_id, received_at, keys)

    def new_users(self, tenant_id: str, received_at: dt.datetime, user_keys: Iterable[str]) -> list[str]:
        """The keys among ``user_keys`` this process has not counted yet in that hour."""
        if _epoch(received_at) != self._known_hour:
            return list(user_keys)
        known = self._known_users
        return [key for key in user_keys if f"{tenant_id}\x00{key}" not in known]

    def counted(self, tenant_id: str, received_at: dt.datetime, user_keys: Iterable[str]) -> None:
        """These users' rows of that hour are committed (call after the commit, never before)."""
        hour = _epoch(received_at)
        if hour != self._known_hour:
            if hour < self._known_hour:
                return
            # Ingestion counts in the hour of receipt: an earlier hour's users will not come again.
            self._known_hour, self._known_users = hour, set()
        if len(self._known_users) < _KNOWN_USERS_MAX:
            self._known_users.update(f"{tenant_id}\x00{key}" for key in user_keys)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    await self._db.run(functools.partial(self._apply_accepted, batch=batch), "count accepted events")
                except BaseException as exc:
                    for pending in batch:
                        if not pending.done.done():
                            pending.done.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for pending in batch:
                        if not pending.done.done():
                            pending.done.set_result(None)
        finally:
            self._draining = None

    @staticmethod
    def _apply_accepted(conn: sqlite3.Connection, *, batch: list[_Pending]) -> None:
        totals: dict[tuple[str, int], int] = {}
        users: set[tuple[str, int, str]] = set()
        for pending in batch:
            totals[(pending.tenant_id, pending.hour)] = totals.get((pending.tenant_id, pending.hour), 0) + pending.count
            users.update((pending.tenant_id, pending.hour, key) for key in pending.keys)
        with transaction(conn):
            _count_accepted(conn, totals, users)

    async def open(self) -> None:
        """Open the file now (its tables exist on return), not at the first call that needs it."""
        await self._db.run(lambda conn: None, "open")

    def accepted_rows(
        self, tenant_id: str, received_at: dt.datetime, count: int, user_keys: Iterable[str]
    ) -> Callable[[sqlite3.Connection], None]:
        """The same count as ``accepted``, as rows for another writer's transaction on this file.

        The embedded log runs them inside its append (``LogStream.append(also=...)``) when the ledger
        lives in the log's file: the events and their count commit together, with one fsync.
        Call ``open`` once before, so the tables exist, and ``counted`` once the transaction committed.
        """
        hour = _epoch(received_at)
        totals = {(tenant_id, hour): count}
        users = {(tenant_id, hour, key) for key in user_keys}
        return functools.partial(_count_accepted, totals=totals, users=users)

    # --- pipeline --------------------------------------------------------------------------

    async def outcomes(self, outcomes: Sequence[Outcome], now: dt.datetime | None = None) -> int:
        """Count each entry's outcomes once (by entry id: all the outcomes of one entry id in one
        call count together, or not at all when that id was counted before); returns how many
        events were new."""
        if not outcomes:
            return 0
        stamp = int((now or dt.datetime.now(dt.UTC)).timestamp())
        # An identical outcome given twice is one outcome (the same delivery reported again).
        by_entry: dict[str, dict[Outcome, None]] = {}
        for outcome in outcomes:
            by_entry.setdefault(outcome.entry_id, {})[outcome] = None

        def apply(conn: sqlite3.Connection) -> int:
            column = {"written": "written", "duplicate": "duplicates", "dead_lettered": "dead_lettered"}
            totals: dict[tuple[str, int, str], int] = {}
            with transaction(conn):
                for entry_id, of_entry in by_entry.items():
                    cursor = conn.execute(
                        "INSERT OR IGNORE INTO usage_counted (entry_id, at) VALUES (?, ?)", (entry_id, stamp)
                    )
                    if not cursor.rowcount:
                        continue
                    for outcome in of_entry:
                        key = (outcome.tenant_id, _epoch(outcome.received_at), column[outcome.kind])
                        totals[key] = totals.get(key, 0) + outcome.count
                for (tenant, hour, name), count in totals.items():
                    conn.execute(
                        f"INSERT INTO usage_hours (tenant_id, hour, {name}) VALUES (?, ?, ?) "  # fixed column names
                        f"ON CONFLICT (tenant_id, hour) DO UPDATE SET {name} = {name} + excluded.{name}",
                        (tenant, hour, count),
                    )
            return sum(totals.values())

        return await self._db.run(apply, "count outcomes")

    async def replayed(self, tenant_id: str, received_at: dt.datetime, count: int = 1) -> None:
        """Dead letters of that hour were appended again: they are no longer dead, and their new
        entries count as written (or dead again) when the pipeline handles them."""

        def apply(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "INSERT INTO usage_hours (tenant_id, hour, replayed) VALUES (?, ?, ?) "
                    "ON CONFLICT (tenant_id, hour) DO UPDATE SET replayed = replayed + excluded.replayed",
                    (tenant_id, _epoch(received_at), count),
                )

        await self._db.run(apply, "count replays")

    # --- reading ---------------------------------------------------------------------------

    async def hours(
        self, tenant_id: str | None = None, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> list[HourCounts]:
        """Ledger rows by tenant and hour (``since`` inclusive, ``until`` exclusive), oldest first."""
        low = _epoch(since) if since else 0
        high = _epoch(until) if until else 2**62

        def read(conn: sqlite3.Connection) -> list[HourCounts]:
            rows = conn.execute(
                "SELECT h.tenant_id, h.hour, h.accepted, h.written, h.duplicates, h.dead_lettered - h.replayed, "
                "(SELECT count(*) FROM usage_users u WHERE u.tenant_id = h.tenant_id AND u.hour = h.hour), "
                f"{_BILLED} "
                "FROM usage_hours h WHERE (? IS NULL OR h.tenant_id = ?) AND h.hour >= ? AND h.hour < ? "
                "ORDER BY h.tenant_id, h.hour",
                (tenant_id, tenant_id, low, high),
            ).fetchall()
            return [HourCounts(t, _moment(h), a, w, d, dl, u, b) for t, h, a, w, d, dl, u, b in rows]

        return await self._db.run(read, "read usage")

    # --- reporting to the control plane ----------------------------------------------------

    async def take_reports(self, limit: int = 500, now: dt.datetime | None = None) -> list[UsageRecord]:
        """Unconfirmed usage records, oldest first: first what growth since the last call adds to the
        outbox (in one transaction with the watermarks it moves), then the outbox's head.

        Events are reported three ways per tenant-hour: ``events`` (billed: each message id once,
        reported once its outcome is known), ``events_received`` (accepted, retries included) and
        ``events_duplicate`` (retries dropped, not billed)."""
        stamp = int((now or dt.datetime.now(dt.UTC)).timestamp())

        def take(conn: sqlite3.Connection) -> list[UsageRecord]:
            with transaction(conn):
                records = _event_records(conn)
                unreported: dict[tuple[str, int], list[str]] = {}
                for tenant, hour, key in conn.execute(
                    "SELECT tenant_id, hour, user_key FROM usage_users WHERE reported = 0"
                ).fetchall():
                    unreported.setdefault((tenant, hour), []).append(key)
                for (tenant, hour), keys in unreported.items():
                    for start in range(0, len(keys), MAX_KEYS_PER_RECORD):
                        records.append(
                            UsageRecord(
                                id=f"users-{uuid.uuid4().hex}",
                                tenant_id=tenant,
                                metric="tracked_users",
                                timestamp=_moment(hour),
                                value=0,
                                keys=keys[start : start + MAX_KEYS_PER_RECORD],
                            )
                        )
                conn.execute("UPDATE usage_users SET reported = 1 WHERE reported = 0")
                conn.executemany(
                    "INSERT INTO usage_outbox (id, record, created_at) VALUES (?, ?, ?)",
                    [(record.id, msgspec.msgpack.encode(record), stamp) for record in records],
                )
            rows = conn.execute("SELECT record FROM usage_outbox ORDER BY created_at, id LIMIT ?", (limit,)).fetchall()
            return [msgspec.msgpack.decode(row[0], type=UsageRecord) for row in rows]

        return await self._db.run(take, "prepare usage reports")

    async def confirm(self, record_ids: Sequence[str]) -> None:
        """The control plane has these records: drop them from the outbox."""

        def drop(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.executemany("DELETE FROM usage_outbox WHERE id = ?", [(record_id,) for record_id in record_ids])

        await self._db.run(drop, "confirm usage reports")

    async def unconfirmed(self) -> int:
        """Records waiting in the outbox."""
        return await self._db.run(lambda conn: conn.execute("SELECT count(*) FROM usage_outbox").fetchone()[0], "read")

    # --- housekeeping ----------------------------------------------------------------------

    async def purge(self, now: dt.datetime | None = None) -> int:
        """Forget entry ids counted more than ``COUNTED_RETENTION`` ago, and the user rows of hours
        that ended over ``USER_ROWS_RETENTION`` ago once reported (nothing is added to a closed hour:
        ingestion counts in the hour of ``receivedAt``); returns how many rows went."""
        moment = now or dt.datetime.now(dt.UTC)
        cutoff = int((moment - COUNTED_RETENTION).timestamp())
        closed = _epoch(moment - USER_ROWS_RETENTION)

        def purge(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                gone = conn.execute("DELETE FROM usage_counted WHERE at < ?", (cutoff,)).rowcount
                return (
                    gone + conn.execute("DELETE FROM usage_users WHERE reported = 1 AND hour < ?", (closed,)).rowcount
                )

        return await self._db.run(purge, "purge")

    async def forget_tenant(self, tenant_id: str) -> None:
        """Drop every row of one tenant (tenant deletion)."""

        def forget(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute("DELETE FROM usage_hours WHERE tenant_id = ?", (tenant_id,))
                conn.execute("DELETE FROM usage_users WHERE tenant_id = ?", (tenant_id,))
                conn.execute("DELETE FROM usage_marks WHERE tenant_id = ?", (tenant_id,))

        await self._db.run(forget, "forget tenant")

    async def close(self) -> None:
        if self._draining is not None:
            await asyncio.gather(self._draining, return_exceptions=True)
        await self._db.close()
