"""Every analytics query equals a brute-force loop over the same random events: exactly, not roughly.

Events land in a real lake (Parquet files, some message ids stored twice with different receipt
times) and are read back by the DuckDB warehouse; the reference reads the raw event list. The
generated sets have ties in timestamps, users missing steps, duplicate deliveries, anonymous users,
page calls, odd property types, days around DST changes and ranges with no events at all.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_plane.analytics import schemas
from data_plane.analytics.service import AnalyticsService
from data_plane.contract.schemas import TrackingPlan
from data_plane.events import Event
from data_plane.lake import MemoryObjectStore
from data_plane.warehouse import DuckDBWarehouse
from tests.support import analytics_reference as reference
from tests.support.analytics import event, tenant, write_lake

# Days around DST changes (and a zone whose clocks jumped at midnight) and their zones.
PLACES = [
    ("Europe/Paris", dt.date(2026, 3, 27)),
    ("Europe/Paris", dt.date(2026, 10, 23)),
    ("America/New_York", dt.date(2026, 10, 30)),
    ("America/Santiago", dt.date(2022, 9, 8)),
    ("Asia/Kolkata", dt.date(2026, 1, 29)),
    ("Australia/Lord_Howe", dt.date(2026, 4, 2)),
    ("UTC", dt.date(2026, 2, 26)),
]
NAMES = ["Product Viewed", "Product Added", "Order Completed", "Signed Up"]
SPAN_MINUTES = 9 * 24 * 60
PLAN = TrackingPlan()

property_values = st.sampled_from(["a", "b", "ab", 1, 2.5, True, False, None])
money = st.sampled_from([1.5, 2, 0.1, 0.2, 1e-3, 7, -1, "12", True, None])
product_ids = st.sampled_from(["p1", "p2", "p10", 3])
line = st.fixed_dictionaries(
    {"product_id": product_ids}, optional={"price": money, "quantity": st.sampled_from([1, 2, 0.5, "3", None])}
)


@st.composite
def properties(draw: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if draw(st.booleans()):
        found["plan"] = draw(property_values)
    if draw(st.booleans()):
        found["revenue"] = draw(money)
    if draw(st.booleans()):
        found["product_id"] = draw(product_ids)
    if draw(st.integers(0, 3)) == 0:
        found["products"] = draw(st.lists(line, max_size=3))
    return found


@st.composite
def event_sets(draw: Any) -> tuple[str, dt.date, list[list[Event]]]:
    zone, day = draw(st.sampled_from(PLACES))
    origin = dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC)
    # Coarse minutes make equal timestamps (ties) common.
    granularity = draw(st.sampled_from([1, 30, 360]))
    count = draw(st.integers(0, 45))
    events: list[Event] = []
    for i in range(count):
        minute = draw(st.integers(0, SPAN_MINUTES // granularity)) * granularity
        moment = origin + dt.timedelta(minutes=minute, microseconds=draw(st.sampled_from([0, 0, 0, 1, 500_000])))
        kind = draw(st.sampled_from(["track"] * 6 + ["page", "identify"]))
        events.append(
            event(
                f"m{i:03d}",
                draw(st.sampled_from(NAMES)),
                f"user{draw(st.integers(0, 5))}",
                moment,
                properties=draw(properties()),
                received_at=moment + dt.timedelta(seconds=draw(st.integers(0, 5))),
                anonymous=draw(st.integers(0, 4)) == 0,
                kind=kind,
            )
        )
    # Some deliveries again in a later file, received earlier or later, with other content.
    again = []
    for item in draw(st.lists(st.sampled_from(events), max_size=5, unique_by=lambda e: e.message_id)) if events else []:
        again.append(
            msgspec.structs.replace(
                item,
                received_at=item.received_at + dt.timedelta(seconds=draw(st.sampled_from([-3, 7]))),
                event=draw(st.sampled_from(NAMES)),
                properties=draw(properties()),
            )
        )
    return zone, day, [events, again]


filters = st.lists(
    st.one_of(
        st.builds(
            schemas.Filter,
            property=st.just("plan"),
            op=st.sampled_from(["equals", "not_equals"]),
            value=property_values.filter(lambda v: v is not None),
        ),
        st.builds(schemas.Filter, property=st.just("plan"), op=st.just("contains"), value=st.just("a")),
        st.builds(
            schemas.Filter,
            property=st.sampled_from(["plan", "revenue"]),
            op=st.sampled_from(["gt", "lt"]),
            value=st.sampled_from([0.15, 1, 2.5]),
        ),
        st.builds(
            schemas.Filter,
            property=st.sampled_from(["plan", "revenue", "nope"]),
            op=st.sampled_from(["is_set", "is_not_set"]),
        ),
    ),
    max_size=2,
)


@st.composite
def windows(draw: Any, day: dt.date) -> dict[str, Any]:
    start = day + dt.timedelta(days=draw(st.integers(-3, 9)))
    return {"from_date": start, "to_date": start + dt.timedelta(days=draw(st.integers(0, 8)))}


def answer(batches: list[list[Event]], ask: Any) -> Any:
    async def run() -> Any:
        store = MemoryObjectStore()
        await write_lake(store, batches)
        # Half the examples keep every row unsettled (queries sort), half lay rows out by user at once.
        settle = 0.0 if len(batches[0]) % 2 else 1e9
        warehouse = DuckDBWarehouse(store, threads=1, settle_fraction=settle)
        try:
            return await ask(AnalyticsService(warehouse))
        finally:
            await warehouse.close()

    return asyncio.run(run())


def same(got: Any, want: Any) -> None:
    assert msgspec.to_builtins(got) == msgspec.to_builtins(want)


COMMON = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@COMMON
@given(data=st.data(), lake=event_sets())
def test_funnels_equal_the_reference(data: Any, lake: Any) -> None:
    zone, day, batches = lake
    order = data.draw(st.sampled_from(["sequential", "strict", "any"]))
    steps = data.draw(
        st.lists(st.builds(schemas.FunnelStep, event=st.sampled_from(NAMES), filters=filters), min_size=2, max_size=4)
    )
    exclusions = []
    if order != "any" and data.draw(st.booleans()):
        after = data.draw(st.integers(1, len(steps) - 1))
        before = data.draw(st.integers(after + 1, len(steps)))
        exclusions = [schemas.Exclusion(event=data.draw(st.sampled_from(NAMES)), after_step=after, before_step=before)]
    query = schemas.FunnelQuery(
        **data.draw(windows(day)),
        steps=steps,
        order=order,
        exclusions=exclusions,
        conversion_window_seconds=data.draw(st.sampled_from([60, 1800, 86_400, 14 * 86_400])),
        filters=data.draw(filters),
        breakdown=data.draw(st.sampled_from([None, "plan"])),
    )
    got = answer(batches, lambda service: service.funnel(tenant(zone), query))
    same(got, reference.funnel([e for batch in batches for e in batch], query, zone))


@COMMON
@given(data=st.data(), lake=event_sets())
def test_retention_equals_the_reference(data: Any, lake: Any) -> None:
    zone, day, batches = lake
    query = schemas.RetentionQuery(
        **data.draw(windows(day)),
        start_event=data.draw(st.sampled_from([None, *NAMES])),
        return_event=data.draw(st.sampled_from([None, *NAMES])),
        period=data.draw(st.sampled_from(["day", "week", "month"])),
        periods=data.draw(st.integers(1, 10)),
        mode=data.draw(st.sampled_from(["on", "on_or_after"])),
        filters=data.draw(filters),
        breakdown=data.draw(st.sampled_from([None, "plan"])),
    )
    got = answer(batches, lambda service: service.retention(tenant(zone), query))
    same(got, reference.retention([e for batch in batches for e in batch], query, zone))


@COMMON
@given(data=st.data(), lake=event_sets())
def test_trends_equal_the_reference(data: Any, lake: Any) -> None:
    zone, day, batches = lake
    measure = data.draw(st.sampled_from(["events", "users", "sum", "average"]))
    query = schemas.TrendsQuery(
        **data.draw(windows(day)),
        event=data.draw(st.sampled_from([None, *NAMES])),
        measure=measure,
        property="revenue" if measure in ("sum", "average") else None,
        interval=data.draw(st.sampled_from(["hour", "day", "week", "month"])),
        filters=data.draw(filters),
        breakdown=data.draw(st.sampled_from([None, "plan"])),
    )
    got = answer(batches, lambda service: service.trends(tenant(zone), query))
    same(got, reference.trends([e for batch in batches for e in batch], query, zone))


@COMMON
@given(data=st.data(), lake=event_sets())
def test_kpis_equal_the_reference(data: Any, lake: Any) -> None:
    zone, day, batches = lake
    query = schemas.KpiQuery(**data.draw(windows(day)), filters=data.draw(filters))
    got = answer(batches, lambda service: service.kpis(tenant(zone), query))
    same(got, reference.kpis([e for batch in batches for e in batch], query, zone, PLAN))


@COMMON
@given(data=st.data(), lake=event_sets())
def test_products_equal_the_reference(data: Any, lake: Any) -> None:
    zone, day, batches = lake
    query = schemas.ProductsQuery(
        **data.draw(windows(day)),
        filters=data.draw(filters),
        sort=data.draw(
            st.sampled_from(["product_id", "views", "add_to_cart", "purchases", "units", "revenue", "view_to_purchase"])
        ),
        descending=data.draw(st.booleans()),
        search=data.draw(st.sampled_from([None, "1", "p"])),
        limit=2,
    )
    want = reference.products([e for batch in batches for e in batch], query, zone, PLAN)

    async def pages(service: AnalyticsService) -> list[schemas.ProductRow]:
        rows: list[schemas.ProductRow] = []
        cursor = None
        while True:
            page = await service.products(tenant(zone), msgspec.structs.replace(query, cursor=cursor))
            assert page.total == len(want)
            rows += page.items
            cursor = page.next_cursor
            if cursor is None:
                return rows

    same(answer(batches, pages), want)


@COMMON
@given(data=st.data(), lake=event_sets())
def test_ltv_equals_the_reference(data: Any, lake: Any) -> None:
    zone, day, batches = lake
    query = schemas.LtvQuery(**data.draw(windows(day)), months=data.draw(st.integers(1, 4)))
    got = answer(batches, lambda service: service.ltv(tenant(zone), query))
    same(got, reference.ltv([e for batch in batches for e in batch], query, zone, PLAN))
