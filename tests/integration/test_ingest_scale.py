"""Ingestion that scales: one entry per partition, one commit per request, limits shared by processes, bounded time."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import multiprocessing
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from data_plane.events import decode_entry
from data_plane.ingest.ratelimit import MemoryBuckets, RedisBuckets, SqliteBuckets
from data_plane.settings import CellSettings
from data_plane.stream.log import LogStream
from data_plane.stream.port import Record, partition_for
from data_plane.usage.ledger import UsageLedger, open_ledger
from kernel.errors import Unavailable
from tests.support.api import problem

RATE, BURST, BATCH, SECONDS = 1_000.0, 2_000.0, 100, 1.5


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def track(user: str, n: int, **extra) -> dict:
    return {"type": "track", "event": "Viewed", "userId": user, "messageId": f"{user}-{n}", **extra}


# --- one entry per (request, partition) ----------------------------------------------------


def test_one_entry_per_partition_in_request_order(cell, world):
    users = [f"user-{i}" for i in range(5)]
    batch = [track(users[n % 5], n) for n in range(100)]
    with httpx.Client(base_url=cell.url) as http:
        response = http.post("/v1/batch", json={"batch": batch}, headers=basic(world.a.write_key))
    assert response.status_code == 202, response.text
    assert response.json()["message_ids"] == [e["messageId"] for e in batch]

    async def entries() -> list:
        reader = LogStream(cell.stream_path)
        try:
            return await reader.read("probe", "t", count=1000)
        finally:
            await reader.close()

    found = asyncio.run(entries())
    partitions = {partition_for(f"{world.a.id}/{user}", 8) for user in users}
    assert sorted(entry.partition for entry in found) == sorted(partitions)
    for entry in found:
        events = decode_entry(entry.payload)
        assert entry.partition_key == f"{world.a.id}/{events[0].user_id}"
        assert {partition_for(f"{world.a.id}/{e.user_id}", 8) for e in events} == {entry.partition}
        # Within one user, the request's order.
        for user in {e.user_id for e in events}:
            numbers = [int(e.message_id.rsplit("-", 1)[1]) for e in events if e.user_id == user]
            assert numbers == sorted(numbers)
    assert sum(len(decode_entry(entry.payload)) for entry in found) == 100


# --- one durable write per request -----------------------------------------------------------


def test_the_count_commits_in_the_append_transaction(cell, world):
    with httpx.Client(base_url=cell.url) as http:
        for n in range(3):
            body = {"batch": [track(f"u{n}-{i}", i) for i in range(10)]}
            assert http.post("/v1/batch", json=body, headers=basic(world.a.write_key)).status_code == 202
    # The ledger lives in the stream's file: no second file was written for it.
    assert not cell.settings.usage_path.exists()
    with sqlite3.connect(cell.stream_path) as conn:
        [(accepted,)] = conn.execute("SELECT accepted FROM usage_hours WHERE tenant_id = ?", (world.a.id,)).fetchall()
        (users,) = conn.execute("SELECT count(*) FROM usage_users WHERE tenant_id = ?", (world.a.id,)).fetchone()
    assert (accepted, users) == (30, 30)


def test_a_failing_count_leaves_nothing_appended(tmp_path):
    async def run() -> int:
        stream = LogStream(tmp_path / "log.db")
        ledger = UsageLedger(stream.path)
        await ledger.open()

        def broken(conn: sqlite3.Connection) -> None:
            ledger.accepted_rows("ten_a", dt.datetime.now(dt.UTC), 1, ["k"])(conn)
            conn.execute("INSERT INTO no_such_table VALUES (1)")

        with pytest.raises(Unavailable):
            await stream.append([Record("ten_a/u", b"[]")], also=broken)
        await stream.append(
            [Record("ten_a/u", b"[]")], also=ledger.accepted_rows("ten_a", dt.datetime.now(dt.UTC), 1, ["k"])
        )
        hours = await ledger.hours()
        pending = len(await stream.read("g", "c", count=10))
        await ledger.close()
        await stream.close()
        return pending * 1000 + sum(h.accepted for h in hours)

    # One entry and a count of one: the failed append took its count with it, and vice versa.
    assert asyncio.run(run()) == 1001


def test_an_older_cells_ledger_is_folded_into_the_logs_file(tmp_path):
    settings = CellSettings(data_dir=str(tmp_path))
    moment = dt.datetime(2026, 5, 1, 10, 30, tzinfo=dt.UTC)

    async def run() -> list[int]:
        old = UsageLedger(settings.usage_path)
        await old.accepted("ten_a", moment, 7, ["k1", "k2"])
        await old.close()
        stream = LogStream(tmp_path / "cell" / "stream.db")
        ledger = open_ledger(settings, stream)
        hours = await ledger.hours()
        await ledger.close()
        # A second opening finds nothing left to fold and counts nothing twice.
        again = open_ledger(settings, stream)
        twice = await again.hours()
        await again.close()
        await stream.close()
        return [hours[0].accepted, hours[0].users, twice[0].accepted]

    assert asyncio.run(run()) == [7, 2, 7]
    assert not settings.usage_path.exists() and settings.usage_path.with_name("usage.db.folded").exists()


# --- bounded timestamps ------------------------------------------------------------------------


def test_timestamps_outside_the_window_are_refused_by_name(cell, world):
    now = dt.datetime.now(dt.UTC)
    with httpx.Client(base_url=cell.url) as http:
        bad = {
            "batch": [
                track("u", 0, timestamp=(now - dt.timedelta(days=9 * 365)).isoformat()),  # 9 years back: fine
                track("u", 1, timestamp="0001-01-01T00:00:00Z"),
                track("u", 2, timestamp=(now + dt.timedelta(days=2)).isoformat()),
                track("u", 3, timestamp="9999-12-31T23:59:59Z"),
                # No UTC equivalent at all: still a named refusal, never a 500.
                track("u", 4, timestamp="0001-01-01T00:00:00+01:00"),
            ]
        }
        body = problem(http.post("/v1/batch", json=bad, headers=basic(world.a.write_key)), 400, "events_rejected")
        assert [(e["index"], e["code"]) for e in body["errors"]] == [
            (1, "timestamp_out_of_range"),
            (2, "timestamp_out_of_range"),
            (3, "timestamp_out_of_range"),
            (4, "timestamp_out_of_range"),
        ]
        stamp = (now - dt.timedelta(minutes=3)).isoformat()
        good = {
            "batch": [
                # A device whose clock is at 1970: its timestamp and sentAt agree, the skew corrects both.
                track("u", 10, timestamp="1970-01-01T00:00:00Z", sentAt="1970-01-01T00:03:00Z"),
                # An absurd sentAt cannot move a sane timestamp out of the window: it is ignored.
                track("u", 11, timestamp=stamp, sentAt="0001-01-01T00:00:00Z"),
                track("u", 12, timestamp=stamp, sentAt="9999-12-31T23:59:59-05:00"),
            ]
        }
        response = http.post("/v1/batch", json=good, headers=basic(world.a.write_key))
    assert response.status_code == 202, response.text
    events = {e.message_id: e for e in cell.events()}
    dead_clock = events["u-10"]
    assert abs(dead_clock.received_at - dead_clock.timestamp - dt.timedelta(minutes=3)) < dt.timedelta(seconds=5)
    assert events["u-11"].timestamp == dt.datetime.fromisoformat(stamp)
    assert events["u-12"].timestamp == dt.datetime.fromisoformat(stamp)
    for event in events.values():
        assert (
            event.received_at - dt.timedelta(days=3653) <= event.timestamp <= event.received_at + dt.timedelta(days=1)
        )


# --- one tenant's limit, whatever the number of processes -------------------------------------


def _hammer(kind: str, where: str, ready, results) -> None:
    async def run() -> int:
        if kind == "sqlite":
            buckets = SqliteBuckets(where)
        elif kind == "redis":
            url, prefix = where.split("|")
            buckets = RedisBuckets(url, prefix=prefix)
        else:
            buckets = MemoryBuckets()
        granted = 0
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            if await buckets.take("ten_shared", BATCH, rate=RATE, burst=BURST) == 0.0:
                granted += BATCH
            await asyncio.sleep(0)
        await buckets.close()
        return granted

    ready.wait()  # both processes have imported everything: they start together
    results.put(asyncio.run(run()))


def _two_processes(kind: str, where: str) -> int:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ready = context.Barrier(2)
    processes = [context.Process(target=_hammer, args=(kind, where, ready, results)) for _ in range(2)]
    for process in processes:
        process.start()
    granted = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=10)
    assert all(g > 0 for g in granted), granted
    return sum(granted)


# What one bucket allows over the run: the burst, then the rate (plus a batch of timing slack).
ONE_LIMIT = BURST + RATE * SECONDS + BATCH


def test_two_processes_honour_one_tenants_limit_sqlite(tmp_path: Path):
    granted = _two_processes("sqlite", str(tmp_path / "ratelimit.db"))
    assert BURST <= granted <= ONE_LIMIT


def test_two_processes_honour_one_tenants_limit_redis(redis_url, unique_prefix):
    granted = _two_processes("redis", f"{redis_url}|{unique_prefix}")
    assert BURST <= granted <= ONE_LIMIT


def test_buckets_per_process_would_let_twice_the_limit_through():
    # The same load on the per-process driver: the check above can fail.
    assert _two_processes("memory", "") > ONE_LIMIT


def test_shared_buckets_say_how_long_to_wait(tmp_path: Path):
    async def run() -> list[float]:
        clock = [1000.0]
        buckets = SqliteBuckets(tmp_path / "rl.db", clock=lambda: clock[0])
        waits = [await buckets.take("t", 100, rate=100, burst=150)]  # granted, 50 left
        waits.append(await buckets.take("t", 100, rate=100, burst=150))  # 50 short: 0.5 s
        clock[0] += 0.5
        waits.append(await buckets.take("t", 100, rate=100, burst=150))  # refilled
        waits.append(await buckets.take("t", 1000, rate=100, burst=150))  # larger than the burst: needs a full one
        clock[0] += 10
        waits.append(await buckets.take("t", 1000, rate=100, burst=150))
        await buckets.close()
        return waits

    assert asyncio.run(run()) == [0.0, 0.5, 0.0, 1.5, 0.0]


def test_rate_limit_store_down_is_503_not_500(tmp_path: Path):
    folder = tmp_path / "not-a-dir"
    folder.write_text("a file where the folder should be")

    async def run() -> None:
        await SqliteBuckets(folder / "rl.db").take("t", 1, rate=1, burst=1)

    with pytest.raises(Unavailable):
        asyncio.run(run())


def test_a_users_rows_are_written_once_per_hour_and_process(tmp_path: Path):
    async def run() -> list:
        ledger = UsageLedger(tmp_path / "usage.db")
        ten, eleven = dt.datetime(2026, 5, 1, 10, 5, tzinfo=dt.UTC), dt.datetime(2026, 5, 1, 11, 5, tzinfo=dt.UTC)
        await ledger.accepted("ten_a", ten, 2, {"k1", "k2"})
        seen = [sorted(ledger.new_users("ten_a", ten, ["k1", "k3"])), ledger.new_users("ten_b", ten, ["k1"])]
        await ledger.accepted("ten_a", ten, 2, {"k1", "k3"})
        # A new hour counts its users again.
        seen.append(sorted(ledger.new_users("ten_a", eleven, ["k1"])))
        await ledger.accepted("ten_a", eleven, 1, {"k1"})
        hours = [(h.accepted, h.users) for h in await ledger.hours("ten_a")]
        await ledger.close()
        return [*seen, hours]

    assert asyncio.run(run()) == [["k3"], ["k1"], ["k1"], [(4, 3), (1, 1)]]


def test_the_log_stores_payloads_compressed_and_reads_an_older_log(tmp_path: Path):
    path = tmp_path / "log.db"
    # An older log: no codec column, one plain entry.
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
            "INSERT INTO meta VALUES ('partitions', '8');"
            "CREATE TABLE entries (seq INTEGER PRIMARY KEY AUTOINCREMENT, partition INTEGER NOT NULL,"
            " partition_key TEXT NOT NULL, payload BLOB NOT NULL);"
        )
        conn.execute(
            "INSERT INTO entries (partition, partition_key, payload) VALUES (?, ?, ?)",
            (partition_for("ten_a/old", 8), "ten_a/old", b"x" * 2000),
        )
    big = b'[{"message_id": "m", "properties": {"n": 1}}]' * 200

    async def run() -> list[bytes]:
        stream = LogStream(path)
        await stream.append([Record("ten_a/new", big), Record("ten_a/tiny", b"{}")])
        entries = await stream.read("g", "c", count=10)
        await stream.close()
        return sorted(entry.payload for entry in entries)

    assert asyncio.run(run()) == sorted([b"x" * 2000, big, b"{}"])
    with sqlite3.connect(path) as conn:
        stored = dict(conn.execute("SELECT partition_key, length(payload) FROM entries").fetchall())
    assert stored["ten_a/old"] == 2000 and stored["ten_a/new"] < len(big) / 5 and stored["ten_a/tiny"] == 2
