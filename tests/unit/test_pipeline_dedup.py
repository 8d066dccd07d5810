"""Dedup on (tenant, message id): one suite over the SQLite and Redis stores, plus a reference model."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from data_plane.events import Event
from data_plane.pipeline.dedup import Deduplicator, DedupStore, Sighting, dedup_drivers
from data_plane.pipeline.dedup_redis import RedisDedupStore, dedup_key
from data_plane.pipeline.dedup_sqlite import SqliteDedupStore
from kernel.errors import ConfigError, Unavailable

T0 = dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)
ROOT = Path(__file__).resolve().parents[2]

StoreFactory = Callable[[], DedupStore]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _drop_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens stores over one shared location (a file, a key prefix), as two workers would."""
    if request.param == "sqlite":
        path = tmp_path / "dedup.sqlite3"
        yield lambda: SqliteDedupStore(path)
        return
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("unique_prefix")
    yield lambda: RedisDedupStore(url, prefix)
    _drop_prefix(url, prefix)


@pytest.fixture
async def dedup(new_store: StoreFactory):
    deduplicator = Deduplicator(new_store())
    yield deduplicator
    await deduplicator.close()


@pytest.mark.anyio
async def test_first_sighting_is_new_and_the_next_is_a_duplicate(dedup: Deduplicator) -> None:
    assert await dedup.seen_before("ten_a", "m-1", T0) is False
    assert await dedup.seen_before("ten_a", "m-1", T0 + SECOND) is True
    assert await dedup.seen_before("ten_a", "m-2", T0 + SECOND) is False


@pytest.mark.anyio
async def test_two_tenants_never_suppress_each_other(dedup: Deduplicator) -> None:
    assert await dedup.seen_before("ten_a", "same", T0) is False
    assert await dedup.seen_before("ten_b", "same", T0) is False
    # Ids that would collide if the tenant were written into the key unescaped.
    assert await dedup.seen_before("ten_a/dedup/x", "y", T0) is False
    assert await dedup.seen_before("ten_a", "x/dedup/y", T0) is False
    assert dedup_key("ten_a/dedup/x", "y") != dedup_key("ten_a", "x/dedup/y")


@pytest.mark.anyio
async def test_default_window_is_seven_days(dedup: Deduplicator) -> None:
    assert dedup.window == dt.timedelta(days=7)
    await dedup.seen_before("t", "m", T0)
    assert await dedup.seen_before("t", "m", T0 + dt.timedelta(days=7) - dt.timedelta(microseconds=1)) is True
    assert await dedup.seen_before("t", "m", T0 + dt.timedelta(days=7)) is False
    # The later sighting became the new first one; the window runs from it.
    assert await dedup.seen_before("t", "m", T0 + dt.timedelta(days=8)) is True


@pytest.mark.anyio
async def test_window_is_configurable(new_store: StoreFactory) -> None:
    dedup = Deduplicator(new_store(), window=dt.timedelta(minutes=5))
    try:
        await dedup.seen_before("t", "m", T0)
        assert await dedup.seen_before("t", "m", T0 + dt.timedelta(minutes=4, seconds=59)) is True
        assert await dedup.seen_before("t", "m", T0 + dt.timedelta(minutes=5)) is False
    finally:
        await dedup.close()


@pytest.mark.anyio
async def test_a_sighting_stamped_before_the_first_is_a_duplicate(dedup: Deduplicator) -> None:
    await dedup.seen_before("t", "m", T0)
    assert await dedup.seen_before("t", "m", T0 - dt.timedelta(days=30)) is True


@pytest.mark.anyio
async def test_batch_keeps_order_and_catches_duplicates_inside_it(dedup: Deduplicator) -> None:
    await dedup.seen_before("t1", "old", T0)
    flags = await dedup.filter_new(
        [("t1", "a", T0), ("t1", "old", T0), ("t2", "a", T0), ("t1", "a", T0), ("t1", "b", T0), ("t2", "a", T0)]
    )
    assert flags == [True, False, True, False, True, False]
    assert await dedup.filter_new([]) == []


@pytest.mark.anyio
async def test_a_batch_is_one_round_trip(dedup: Deduplicator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis: one script call per batch; SQLite: one SELECT per tenant of the batch, not one per event."""
    store = dedup.store
    calls: list[str] = []
    if isinstance(store, RedisDedupStore):
        execute = store._redis.execute_command

        async def counted(*args: object, **options: object) -> object:
            calls.append(str(args[0]))
            return await execute(*args, **options)

        monkeypatch.setattr(store._redis, "execute_command", counted)
    else:
        assert isinstance(store, SqliteDedupStore)
        # On the store's own thread: a sqlite3 connection belongs to the thread that opened it.
        await store._run("trace", lambda conn: conn.set_trace_callback(lambda sql: calls.append(sql.split()[0])))
    batch = [("t1", f"m{n}", T0) for n in range(300)] + [("t2", "m0", T0), ("t1", "m0", T0)]
    flags = await dedup.filter_new(batch)
    assert flags == [True] * 301 + [False]
    if isinstance(store, RedisDedupStore):
        assert [c for c in calls if c.startswith("EVAL")] == ["EVALSHA"]
    else:
        assert calls.count("SELECT") == 2  # one per tenant
    assert await dedup.filter_new(batch) == [False] * 302


@pytest.mark.anyio
async def test_redelivery_of_the_same_stream_entry_is_not_a_duplicate(dedup: Deduplicator) -> None:
    # The worker recorded the sighting, then died before the sinks wrote: the stream delivers the
    # same entry again, and it must go through rather than be lost.
    assert await dedup.seen_before("t", "m", T0, delivery="1700-0") is False
    assert await dedup.seen_before("t", "m", T0, delivery="1700-0") is False
    # A client retry is a different stream entry: a duplicate.
    assert await dedup.seen_before("t", "m", T0 + SECOND, delivery="1701-0") is True
    assert await dedup.seen_before("t", "m", T0 + SECOND) is True
    # Delivery ids may contain the store's separator.
    assert await dedup.filter_new([Sighting("t", "n", T0, "a|b"), Sighting("t", "n", T0, "a|b")]) == [True, True]
    assert await dedup.filter_new([Sighting("t", "n", T0, "a")]) == [False]


@pytest.mark.anyio
async def test_new_events_keys_on_received_at(dedup: Deduplicator) -> None:
    def event(message_id: str, tenant: str = "t") -> Event:
        return Event(message_id=message_id, tenant_id=tenant, source_id="s", type="track", received_at=T0, timestamp=T0)

    batch = [event("a"), event("b"), event("a"), event("a", "u")]
    kept = await dedup.new_events(batch)
    assert [(e.tenant_id, e.message_id) for e in kept] == [("t", "a"), ("t", "b"), ("u", "a")]
    assert await dedup.new_events(batch) == []
    assert await dedup.new_events(batch[:2], deliveries=["x", "y"]) == []
    with pytest.raises(ValueError, match="one delivery id per event"):
        await dedup.new_events(batch, deliveries=["x"])


@pytest.mark.anyio
async def test_concurrent_sightings_have_exactly_one_winner(new_store: StoreFactory) -> None:
    # Two workers on one store location, many coroutines each: the read-decide-write is atomic.
    first, second = Deduplicator(new_store()), Deduplicator(new_store())
    try:
        results = await asyncio.gather(
            *[(first if i % 2 else second).seen_before("t", "m", T0 + i * SECOND) for i in range(20)]
        )
        assert results.count(False) == 1
    finally:
        await first.close()
        await second.close()


@pytest.mark.anyio
async def test_records_survive_closing_and_reopening(new_store: StoreFactory) -> None:
    dedup = Deduplicator(new_store())
    await dedup.filter_new([("t", "m", T0), ("u", "m", T0)])
    await dedup.close()
    reopened = Deduplicator(new_store())
    try:
        assert await reopened.filter_new([("t", "m", T0 + SECOND), ("u", "m", T0 + SECOND)]) == [False, False]
    finally:
        await reopened.close()


@pytest.mark.anyio
async def test_forget_tenant_drops_exactly_that_tenant(dedup: Deduplicator) -> None:
    await dedup.filter_new([("ten_*", "m", T0), ("ten_a", "m", T0), ("ten_ab", "m", T0)])
    await dedup.store.forget_tenant("ten_*")  # a glob character must not reach other tenants
    await dedup.store.forget_tenant("ten_a")
    assert await dedup.filter_new([("ten_*", "m", T0), ("ten_a", "m", T0), ("ten_ab", "m", T0)]) == [
        True,
        True,
        False,
    ]


@pytest.mark.anyio
async def test_purge_forgets_only_expired_records(dedup: Deduplicator) -> None:
    await dedup.filter_new([("t", "old", T0), ("t", "new", T0 + dt.timedelta(days=3))])
    purged = await dedup.purge(T0 + dt.timedelta(days=8))
    assert purged == (1 if isinstance(dedup.store, SqliteDedupStore) else 0)  # Redis expires keys itself
    assert await dedup.seen_before("t", "new", T0 + dt.timedelta(days=8)) is True
    assert await dedup.seen_before("t", "old", T0 + dt.timedelta(days=8)) is False


@pytest.mark.anyio
async def test_times_must_be_timezone_aware_and_the_window_positive(tmp_path: Path) -> None:
    dedup = Deduplicator(SqliteDedupStore(tmp_path / "d.sqlite3"))
    try:
        with pytest.raises(ValueError, match="timezone-aware"):
            await dedup.seen_before("t", "m", dt.datetime(2024, 1, 1))
    finally:
        await dedup.close()
    with pytest.raises(ValueError, match="positive"):
        Deduplicator(SqliteDedupStore(tmp_path / "e.sqlite3"), window=dt.timedelta(0))


def test_drivers_are_chosen_by_name(tmp_path: Path) -> None:
    assert dedup_drivers.names == ["redis", "sqlite"]
    assert isinstance(dedup_drivers.create("sqlite", sqlite_path=str(tmp_path / "x.db")), SqliteDedupStore)
    with pytest.raises(ConfigError) as unknown:
        dedup_drivers.create("memcached")
    assert unknown.value.variable == "LIVORA_DEDUP_DRIVER" and "redis, sqlite" in unknown.value.message
    with pytest.raises(ConfigError) as no_url:
        dedup_drivers.create("redis")
    assert no_url.value.variable == "LIVORA_REDIS_URL"


@pytest.mark.anyio
async def test_store_failures_become_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()
    broken = Deduplicator(SqliteDedupStore(tmp_path / "a-directory"))
    with pytest.raises(Unavailable) as caught:
        await broken.seen_before("t", "m", T0)
    assert caught.value.code == "dedup_unavailable"
    await broken.close()

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    down = Deduplicator(RedisDedupStore(f"redis://127.0.0.1:{port}/0", socket_timeout=0.2, retries=0))
    with pytest.raises(Unavailable) as caught:
        await down.seen_before("t", "m", T0)
    assert caught.value.code == "dedup_unavailable" and f"127.0.0.1:{port}" in caught.value.detail
    await down.close()


_KILLED_WORKER = """
import asyncio, datetime as dt, sys, time
from data_plane.pipeline.dedup import Deduplicator
from data_plane.pipeline.dedup_sqlite import SqliteDedupStore

async def main():
    dedup = Deduplicator(SqliteDedupStore(sys.argv[1]))
    at = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    flags = await dedup.filter_new([("t", f"m{i}", at) for i in range(50)])
    print(sum(flags), flush=True)
    time.sleep(60)  # killed here, without closing anything

asyncio.run(main())
"""


def test_sqlite_sightings_survive_a_killed_worker(tmp_path: Path) -> None:
    path = tmp_path / "dedup.sqlite3"
    worker = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WORKER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "50"
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)

    async def check() -> list[bool]:
        dedup = Deduplicator(SqliteDedupStore(path))
        try:
            return await dedup.filter_new([("t", f"m{i}", T0 + SECOND) for i in range(50)])
        finally:
            await dedup.close()

    assert asyncio.run(check()) == [False] * 50


# --- the reference model ----------------------------------------------------------------------

WINDOW = dt.timedelta(seconds=100)
sightings = st.tuples(
    st.sampled_from(["t1", "t2"]),
    st.sampled_from(["m1", "m2"]),
    # Seconds after T0 on a 10 s grid, so ties and gaps of exactly one window are common.
    st.integers(min_value=0, max_value=25).map(lambda n: n * 10),
    st.sampled_from([None, "d1", "d2"]),
)
batches = st.lists(st.lists(sightings, min_size=1, max_size=4), min_size=1, max_size=12)


class Reference:
    """A dict of first sightings: (tenant, message) -> (first seen, delivery)."""

    def __init__(self, window: dt.timedelta) -> None:
        self.window = window
        self.first: dict[tuple[str, str], tuple[dt.datetime, str | None]] = {}

    def see(self, tenant: str, message: str, at: dt.datetime, delivery: str | None) -> bool:
        recorded = self.first.get((tenant, message))
        if recorded is None or at - recorded[0] >= self.window:
            self.first[(tenant, message)] = (at, delivery)
            return True
        return delivery is not None and delivery == recorded[1]

    def purge(self, cutoff: dt.datetime) -> None:
        self.first = {k: v for k, v in self.first.items() if v[0] > cutoff - self.window}


def _run_against_reference(store: DedupStore, ops: list[list[tuple[str, str, int, str | None]]]) -> None:
    async def run() -> None:
        dedup, reference = Deduplicator(store, window=WINDOW), Reference(WINDOW)
        try:
            for batch in ops:
                items = [Sighting(t, m, T0 + s * SECOND, d) for t, m, s, d in batch]
                expected = [reference.see(*item) for item in items]
                if len(items) == 1:
                    assert [not await dedup.seen_before(*items[0][:3], delivery=items[0][3])] == expected
                else:
                    assert await dedup.filter_new(items) == expected
        finally:
            await dedup.close()

    asyncio.run(run())


@pytest.mark.parametrize("driver", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=batches)
def test_dedup_matches_a_dict_of_first_sightings(driver: str, ops, request: pytest.FixtureRequest) -> None:
    if driver == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            _run_against_reference(SqliteDedupStore(Path(folder) / "d.sqlite3"), ops)
    else:
        url, prefix = request.getfixturevalue("redis_url"), f"test:{uuid.uuid4().hex[:12]}:"
        try:
            _run_against_reference(RedisDedupStore(url, prefix), ops)
        finally:
            _drop_prefix(url, prefix)


@settings(max_examples=50, deadline=None)
@given(ops=st.lists(st.one_of(sightings, st.integers(min_value=0, max_value=35).map(lambda n: n * 10)), max_size=25))
@example(ops=[("t1", "m1", 0, None), 100, ("t1", "m1", 50, None)])  # purged exactly at expiry
def test_sqlite_purge_only_forgets_what_expired(ops) -> None:
    async def run(path: Path) -> None:
        dedup, reference = Deduplicator(SqliteDedupStore(path), window=WINDOW), Reference(WINDOW)
        try:
            for op in ops:
                if isinstance(op, int):  # a purge "now"
                    await dedup.purge(T0 + op * SECOND)
                    reference.purge(T0 + op * SECOND)
                else:
                    t, m, s, d = op
                    assert (not await dedup.seen_before(t, m, T0 + s * SECOND, delivery=d)) == reference.see(
                        t, m, T0 + s * SECOND, d
                    )
        finally:
            await dedup.close()

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run(Path(folder) / "d.sqlite3"))
