"""The warehouse over a real lake (a local folder, and S3 on a moto server): up to date at every query,
each message id counted once through compaction, one tenant's rows only; the result cache per tenant."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import aioboto3
import msgspec
import pytest

from data_plane.analytics import schemas
from data_plane.analytics.service import AnalyticsService
from data_plane.lake import Compactor, LocalObjectStore, Partition, S3ObjectStore
from data_plane.lake.store import ObjectStore
from data_plane.warehouse import DuckDBWarehouse
from kernel.ports.kv import KeyValueStore, MemoryKeyValueStore, RedisKeyValueStore
from tests.support import analytics_reference as reference
from tests.support.analytics import event, tenant, write_lake
from tests.support.moto_lake import CLEARED_AWS_ENV, FAKE_AWS_ENV, MotoServer

T0 = dt.datetime(2026, 5, 4, 9, 0, tzinfo=dt.UTC)
DAY = dt.date(2026, 5, 4)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def fake_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CLEARED_AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "lake")
    moto: MotoServer = request.getfixturevalue("moto")
    request.getfixturevalue("fake_aws_env")
    return S3ObjectStore(moto.create_bucket(), prefix="lake", endpoint_url=moto.url, session=aioboto3.Session())


def shop(tenant_id: str, users: int, start: int = 0) -> list:
    """A small shop's day: views, adds and orders; ``users`` decides the numbers."""
    events = []
    for i in range(users):
        moment = T0 + dt.timedelta(minutes=7 * i)
        events.append(
            event(
                f"{tenant_id}-v{start + i}",
                "Product Viewed",
                f"u{i}",
                moment,
                tenant_id=tenant_id,
                properties={"product_id": "p1"},
            )
        )
        if i % 2 == 0:
            events.append(
                event(
                    f"{tenant_id}-o{start + i}",
                    "Order Completed",
                    f"u{i}",
                    moment + dt.timedelta(minutes=3),
                    tenant_id=tenant_id,
                    properties={"revenue": 10.5, "products": [{"product_id": "p1", "price": 10.5, "quantity": 1}]},
                )
            )
    return events


FUNNEL = schemas.FunnelQuery(
    from_date=DAY,
    to_date=DAY,
    steps=[schemas.FunnelStep(event="Product Viewed"), schemas.FunnelStep(event="Order Completed")],
)


def test_queries_see_new_files_and_count_a_message_once_through_compaction(store, aio) -> None:
    a, b = shop("ten_a", 6), shop("ten_b", 3)
    aio(write_lake(store, [a + b]))
    warehouse = DuckDBWarehouse(store, threads=1)
    service = AnalyticsService(warehouse)
    try:
        first = aio(service.funnel(tenant(tenant_id="ten_a"), FUNNEL))
        assert [step.count for step in first.steps] == [6, 3]
        # Tenant B's rows never show in A's answers, and the other way round.
        assert [s.count for s in aio(service.funnel(tenant(tenant_id="ten_b"), FUNNEL)).steps] == [3, 2]

        # A redelivery lands in a second file (received later, with other content), and new events arrive.
        again = [
            msgspec.structs.replace(e, received_at=e.received_at + dt.timedelta(seconds=9), properties={})
            for e in a[:4]
        ]
        more = shop("ten_a", 8, start=100)[-4:]
        aio(write_lake(store, [again + more]))
        second = aio(service.funnel(tenant(tenant_id="ten_a"), FUNNEL))
        assert msgspec.to_builtins(second) == msgspec.to_builtins(reference.funnel(a + again + more, FUNNEL))
        kpis = aio(service.kpis(tenant(tenant_id="ten_a"), schemas.KpiQuery(from_date=DAY, to_date=DAY)))
        assert kpis.totals.events == len(a) + len(more)

        # Compaction merges the files of each hour and deletes the inputs: the answers do not move.
        partitions = {Partition.of("ten_a", e.timestamp) for e in a + more}
        for partition in partitions:
            aio(Compactor(store).compact(partition))
        assert msgspec.to_builtins(aio(service.funnel(tenant(tenant_id="ten_a"), FUNNEL))) == msgspec.to_builtins(
            second
        )
    finally:
        aio(warehouse.close())


def test_a_tenant_with_no_lake_yet_gets_empty_answers(store, aio) -> None:
    warehouse = DuckDBWarehouse(store, threads=1)
    service = AnalyticsService(warehouse)
    try:
        result = aio(service.funnel(tenant(tenant_id="ten_empty"), FUNNEL))
        assert [step.count for step in result.steps] == [0, 0]
        assert result.steps[1].conversion_from_previous is None
    finally:
        aio(warehouse.close())


def test_the_warehouse_survives_a_restart_and_takes_up_only_what_changed(tmp_path, aio) -> None:
    store = LocalObjectStore(tmp_path / "lake")
    aio(write_lake(store, [shop("ten_a", 4)]))
    warehouse = DuckDBWarehouse(store, directory=tmp_path / "warehouse", threads=1)
    generation = aio(warehouse.refresh("ten_a"))
    assert aio(warehouse.refresh("ten_a")) == generation
    aio(warehouse.close())
    reopened = DuckDBWarehouse(store, directory=tmp_path / "warehouse", threads=1)
    try:
        assert aio(reopened.refresh("ten_a")) == generation
        assert aio(reopened.fetch("ten_a", "SELECT count(*) AS n FROM events")).column("n")[0].as_py() == 6
        aio(reopened.drop("ten_a"))
        assert not (tmp_path / "warehouse" / "ten_a.duckdb").exists()
    finally:
        aio(reopened.close())


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest, unique_prefix: str, aio) -> Iterator[KeyValueStore]:
    if request.param == "memory":
        store: KeyValueStore = MemoryKeyValueStore()
    else:
        store = RedisKeyValueStore(request.getfixturevalue("redis_url"), prefix=unique_prefix)
    yield store
    aio(store.close())


def test_results_are_cached_per_tenant_and_dropped_when_new_data_lands(cache, tmp_path, aio) -> None:
    store = LocalObjectStore(tmp_path / "lake")
    aio(write_lake(store, [shop("ten_a", 4) + shop("ten_b", 2)]))
    warehouse = DuckDBWarehouse(store, threads=1)
    service = AnalyticsService(warehouse, cache, cache_seconds=300)
    query = schemas.TrendsQuery(from_date=DAY, to_date=DAY, measure="users")
    calls = 0
    real_fetch = warehouse.fetch

    async def counting_fetch(*args, **kwargs):
        nonlocal calls
        calls += 1
        return await real_fetch(*args, **kwargs)

    warehouse.fetch = counting_fetch  # type: ignore[method-assign]
    try:
        assert aio(service.trends(tenant(tenant_id="ten_a"), query)).series[0].total == 4
        assert aio(service.trends(tenant(tenant_id="ten_a"), query)).series[0].total == 4
        assert calls == 1  # the second answer came from the cache
        # The same query for another tenant is its own entry, never A's.
        assert aio(service.trends(tenant(tenant_id="ten_b"), query)).series[0].total == 2
        assert calls == 2
        aio(write_lake(store, [shop("ten_a", 9)[-3:]]))
        assert aio(service.trends(tenant(tenant_id="ten_a"), query)).series[0].total == 6  # u7 and u8 are new
        assert calls == 3
    finally:
        aio(warehouse.close())


def test_cached_results_expire_within_five_minutes(tmp_path, aio) -> None:
    clock = [0.0]
    cache = MemoryKeyValueStore(clock=lambda: clock[0])
    written: list[tuple[str, float | None]] = []
    real_set = cache.set

    async def recording_set(key: str, value: str, *, ttl: float | None = None) -> None:
        written.append((key, ttl))
        await real_set(key, value, ttl=ttl)

    cache.set = recording_set  # type: ignore[method-assign]
    store = LocalObjectStore(tmp_path / "lake")
    aio(write_lake(store, [shop("ten_a", 2)]))
    warehouse = DuckDBWarehouse(store, threads=1)
    with pytest.raises(ValueError):
        AnalyticsService(warehouse, cache, cache_seconds=301)
    service = AnalyticsService(warehouse, cache)
    try:
        aio(service.live(tenant(tenant_id="ten_a"), 5))
        [(key, ttl)] = written
        assert key.startswith("tenants/ten_a/analytics/live/") and ttl == 300
        clock[0] = 299.0
        assert aio(cache.get(key)) is not None
        clock[0] = 300.5
        assert aio(cache.get(key)) is None
    finally:
        aio(warehouse.close())


def test_a_cached_answer_survives_new_data_outside_the_partitions_it_read(cache, tmp_path, aio) -> None:
    store = LocalObjectStore(tmp_path / "lake")
    aio(write_lake(store, [shop("ten_a", 4)]))
    warehouse = DuckDBWarehouse(store, threads=1)
    service = AnalyticsService(warehouse, cache, cache_seconds=300)
    query = schemas.TrendsQuery(from_date=DAY, to_date=DAY, measure="events")
    calls = 0
    real_fetch = warehouse.fetch

    async def counting_fetch(*args, **kwargs):
        nonlocal calls
        calls += 1
        return await real_fetch(*args, **kwargs)

    warehouse.fetch = counting_fetch  # type: ignore[method-assign]
    try:
        assert aio(service.trends(tenant(tenant_id="ten_a"), query)).series[0].total == 6
        # A week later lands in other partitions: the day's answer stays cached.
        later = [
            msgspec.structs.replace(e, message_id=e.message_id + "-later", timestamp=e.timestamp + dt.timedelta(days=7))
            for e in shop("ten_a", 2)
        ]
        aio(write_lake(store, [later]))
        assert aio(service.trends(tenant(tenant_id="ten_a"), query)).series[0].total == 6
        assert calls == 1
        # The same day gets more events: its partitions changed, so the answer is computed again.
        aio(write_lake(store, [shop("ten_a", 8, start=100)[-3:]]))
        assert aio(service.trends(tenant(tenant_id="ten_a"), query)).series[0].total == 9
        assert calls == 2
        # A query over both weeks sees every event (a miss brings in the whole lake).
        both = schemas.TrendsQuery(from_date=DAY, to_date=DAY + dt.timedelta(days=7), measure="events")
        assert aio(service.trends(tenant(tenant_id="ten_a"), both)).series[0].total == 12
    finally:
        aio(warehouse.close())


@pytest.mark.parametrize("limit", [1, 3, 4, 50])
def test_the_live_feed_is_the_latest_receipts_ties_broken_by_message_id(limit, tmp_path, aio) -> None:
    store = LocalObjectStore(tmp_path / "lake")
    # Receipts tie in threes: the limit cuts through a tie, or asks for more than there are.
    events = [
        event(
            f"m{i:02d}",
            "Product Viewed",
            f"u{i % 4}",
            T0 + dt.timedelta(minutes=i),
            received_at=T0 + dt.timedelta(seconds=i // 3),
        )
        for i in range(12)
    ]
    aio(write_lake(store, [events[:6], events[6:]]))
    warehouse = DuckDBWarehouse(store, threads=1)
    try:
        feed = aio(AnalyticsService(warehouse).live(tenant(), limit))
        want = sorted(events, key=lambda e: (e.received_at, e.message_id), reverse=True)[:limit]
        assert [item.message_id for item in feed.items] == [e.message_id for e in want]
    finally:
        aio(warehouse.close())
