"""Events at the edges of the calendar (year 1, year 9999) in a tenant's lake never break its queries.

Ingestion bounds what it accepts now, but lakes written before keep such events. Each query must
answer as if they were merely far away: the same as the brute-force reference over the same events
moved to 1950 and 9000, in zones west and east of Greenwich (where local time would leave the years
a datetime holds).
"""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from data_plane.analytics import schemas
from data_plane.analytics.service import AnalyticsService
from data_plane.lake import LocalObjectStore
from data_plane.warehouse import DuckDBWarehouse
from tests.support import analytics_reference as reference
from tests.support.analytics import event, tenant, write_lake

DAY = dt.date(2026, 5, 4)
T0 = dt.datetime(2026, 5, 4, 9, 0, tzinfo=dt.UTC)
YEAR_1 = dt.datetime(1, 1, 1, 0, 30, tzinfo=dt.UTC)
YEAR_9999 = dt.datetime(9999, 12, 31, 23, 0, tzinfo=dt.UTC)
ORDER = {"revenue": 12.5, "products": [{"product_id": "p1", "price": 12.5, "quantity": 1}]}


def lake_events(old: dt.datetime, late: dt.datetime) -> list:
    events = []
    for i in range(4):
        moment = T0 + dt.timedelta(days=i, minutes=5 * i)
        events.append(event(f"v{i}", "Product Viewed", f"u{i}", moment, properties={"product_id": "p1"}))
        events.append(event(f"o{i}", "Order Completed", f"u{i}", moment + dt.timedelta(hours=2), properties=ORDER))
    events += [
        event("old1", "Product Viewed", "u1", old, properties={"product_id": "p1"}),
        event("old5", "Signed Up", "u5", old),
        event("late2", "Order Completed", "u2", late, properties=ORDER),
        event("late6", "Product Viewed", "u6", late, properties={"product_id": "p1"}),
    ]
    return events


def queries() -> dict[str, object]:
    window = {"from_date": DAY - dt.timedelta(days=2), "to_date": DAY + dt.timedelta(days=6)}
    steps = [schemas.FunnelStep(event="Product Viewed"), schemas.FunnelStep(event="Order Completed")]
    only_p1 = [schemas.Filter(property="product_id", op="equals", value="p1")]
    return {
        "funnel": schemas.FunnelQuery(**window, steps=steps),
        "retention": schemas.RetentionQuery(**window, period="day", periods=5),
        "retention_after": schemas.RetentionQuery(**window, period="week", periods=3, mode="on_or_after"),
        "retention_views": schemas.RetentionQuery(**window, start_event="Product Viewed", period="day", periods=5),
        "retention_filtered": schemas.RetentionQuery(**window, period="month", periods=2, filters=only_p1),
        "trends_events": schemas.TrendsQuery(**window, measure="events"),
        "trends_users": schemas.TrendsQuery(**window, measure="users", interval="week"),
        "trends_revenue": schemas.TrendsQuery(**window, measure="sum", property="revenue"),
        "kpis": schemas.KpiQuery(**window),
        "kpis_filtered": schemas.KpiQuery(**window, filters=only_p1),
        "products": schemas.ProductsQuery(**window),
        "ltv": schemas.LtvQuery(**window, months=3),
    }


async def ask(service: AnalyticsService, zone: str, name: str, query: object) -> object:
    view = tenant(zone)
    kind = name.split("_")[0]
    if kind == "products":
        return (await service.products(view, query)).items  # type: ignore[arg-type]
    return await getattr(service, kind)(view, query)


def expected(zone: str, name: str, query: object) -> object:
    events = lake_events(dt.datetime(1950, 1, 1, tzinfo=dt.UTC), dt.datetime(9000, 1, 1, tzinfo=dt.UTC))
    kind = name.split("_")[0]
    if kind in ("funnel", "retention", "trends"):
        return getattr(reference, kind)(events, query, zone)
    return getattr(reference, kind)(events, query, zone, None)


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Pacific/Kiritimati"])
def test_queries_answer_as_if_the_extremes_were_merely_far(zone, tmp_path, aio) -> None:
    store = LocalObjectStore(tmp_path / "lake")
    aio(write_lake(store, [lake_events(YEAR_1, YEAR_9999)]))
    warehouse = DuckDBWarehouse(store, threads=1)
    service = AnalyticsService(warehouse)
    try:
        for name, query in queries().items():
            got = aio(ask(service, zone, name, query))
            assert msgspec.to_builtins(got) == msgspec.to_builtins(expected(zone, name, query)), name
        feed = aio(service.live(tenant(zone), 50))
        stamps = {item.message_id: item.timestamp for item in feed.items}
        assert stamps["old5"] == YEAR_1 and stamps["late6"] == YEAR_9999
    finally:
        aio(warehouse.close())


def test_the_calendar_is_total_at_the_edges_of_the_era() -> None:
    from data_plane.analytics import calendar

    west, east = calendar.zone("America/New_York"), calendar.zone("Pacific/Kiritimati")
    assert calendar.from_us(calendar.MIN_US, west) == dt.datetime.min.replace(tzinfo=dt.UTC)
    assert calendar.from_us(calendar.MAX_US, east).year == 9999
    table = calendar.days(east, calendar.MIN_US, calendar.MIN_US + 86_400_000_000)
    assert table.base == calendar.FIRST_DAY.toordinal()
    assert calendar.period_first_day(10**9, "month") == dt.date.max
    assert calendar.period_first_day(-(10**9), "day") == dt.date.min
