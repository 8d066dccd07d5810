"""The engine-side paths (rollups, first-seen and predecessor columns) equal the brute-force reference.

Queries without filters or breakdowns take those paths; the general property tests reach them only
now and then, so these draw such queries every time, over the same random lakes (ties, duplicate
deliveries, anonymous users, DST days, empty ranges).
"""

from __future__ import annotations

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
