"""The engine-side paths (rollups, first-seen and predecessor columns) equal the brute-force reference.

Queries without filters or breakdowns take those paths; the general property tests reach them only
now and then, so these draw such queries every time, over the same random lakes (ties, duplicate
deliveries, anonymous users, DST days, empty ranges).
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from data_plane.analytics import schemas
from tests.support import analytics_reference as reference
from tests.support.analytics import tenant
from tests.unit.test_analytics_properties import COMMON, NAMES, PLAN, answer, event_sets, same, windows


def _events(batches: Any) -> list:
    return [e for batch in batches for e in batch]


@COMMON
@given(data=st.data(), lake=event_sets())
def test_retention_by_first_seen_equals_the_reference(data: Any, lake: Any) -> None:
    zone, day, batches = lake
    query = schemas.RetentionQuery(
        **data.draw(windows(day)),
        period=data.draw(st.sampled_from(["day", "week", "month"])),
        periods=data.draw(st.integers(1, 10)),
        mode=data.draw(st.sampled_from(["on", "on_or_after"])),
    )
    got = answer(batches, lambda service: service.retention(tenant(zone), query))
    same(got, reference.retention(_events(batches), query, zone))


@COMMON
@given(data=st.data(), lake=event_sets())
def test_event_and_user_counts_equal_the_reference(data: Any, lake: Any) -> None:
    zone, day, batches = lake
    query = schemas.TrendsQuery(
        **data.draw(windows(day)),
        event=data.draw(st.sampled_from([None, *NAMES])),
        measure=data.draw(st.sampled_from(["events", "users"])),
        interval=data.draw(st.sampled_from(["hour", "day", "week", "month"])),
    )
    got = answer(batches, lambda service: service.trends(tenant(zone), query))
    same(got, reference.trends(_events(batches), query, zone))


@COMMON
@given(data=st.data(), lake=event_sets())
def test_unfiltered_kpis_equal_the_reference(data: Any, lake: Any) -> None:
    zone, day, batches = lake
    query = schemas.KpiQuery(**data.draw(windows(day)))
    got = answer(batches, lambda service: service.kpis(tenant(zone), query))
    same(got, reference.kpis(_events(batches), query, zone, PLAN))


def test_days_off_the_rollups_grain_are_counted_from_the_events() -> None:
    """Monrovia kept local mean time (UTC-0:44:30) until 1972: its days do not start on a 15-minute
    slot, so event counts come from the events, not the rollup, and still equal the reference."""
    import datetime as dt

    from tests.support.analytics import event

    zone = "Africa/Monrovia"
    start = dt.datetime(1971, 6, 1, 2, 0, tzinfo=dt.UTC)
    events = [
        event(f"m{i:03d}", NAMES[i % len(NAMES)], f"user{i % 5}", start + dt.timedelta(hours=5 * i + 0.25 * (i % 3)))
        for i in range(60)
    ]
    window = {"from_date": dt.date(1971, 6, 2), "to_date": dt.date(1971, 6, 11)}
    for query in (
        schemas.TrendsQuery(**window, measure="events"),
        schemas.TrendsQuery(**window, measure="users", event="Order Completed"),
    ):
        got = answer([events], lambda service, query=query: service.trends(tenant(zone), query))
        same(got, reference.trends(events, query, zone))
    kpis = schemas.KpiQuery(**window)
    same(answer([events], lambda service: service.kpis(tenant(zone), kpis)), reference.kpis(events, kpis, zone, PLAN))


@COMMON
@given(lake=event_sets(), cuts=st.lists(st.integers(0, 45), max_size=4))
def test_columns_kept_up_file_by_file_equal_the_reference(lake: Any, cuts: list[int]) -> None:
    """As a live lake grows: each file is taken in by its own refresh (no re-layout), so the derived
    columns of earlier rows are kept up incrementally; every plain query still equals the reference."""
    import asyncio

    from data_plane.analytics.service import AnalyticsService
    from data_plane.lake import MemoryObjectStore
    from data_plane.warehouse import DuckDBWarehouse
    from tests.support.analytics import write_lake

    zone, day, batches = lake
    events = _events(batches)
    bounds = sorted({0, len(events), *(c for c in cuts if c < len(events))})
    pieces = [events[a:b] for a, b in itertools.pairwise(bounds)]
    window = {"from_date": day - dt.timedelta(days=1), "to_date": day + dt.timedelta(days=8)}
    queries = [
        ("trends", schemas.TrendsQuery(**window, measure="users", interval="day")),
        ("trends", schemas.TrendsQuery(**window, measure="users", interval="hour", event=NAMES[0])),
        ("kpis", schemas.KpiQuery(**window)),
        ("retention", schemas.RetentionQuery(**window, period="day", periods=5)),
        ("ltv", schemas.LtvQuery(**window, months=2)),
    ]

    async def run() -> list[Any]:
        store = MemoryObjectStore()
        warehouse = DuckDBWarehouse(store, threads=1, settle_fraction=1e9)
        service = AnalyticsService(warehouse)
        try:
            for number, piece in enumerate(pieces):
                # Distinct delivery ids per piece: each lands as new files beside the earlier ones.
                await write_lake(store, [[]] * number + [piece])
                await warehouse.refresh("acme")
            return [await getattr(service, kind)(tenant(zone), query) for kind, query in queries]
        finally:
            await warehouse.close()

    got = asyncio.run(run())
    for (kind, query), answer_ in zip(queries, got, strict=True):
        want = (
            getattr(reference, kind)(events, query, zone, PLAN)
            if kind in ("kpis", "ltv")
            else getattr(reference, kind)(events, query, zone)
        )
        same(answer_, want)
