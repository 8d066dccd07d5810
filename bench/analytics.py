"""Analytics benchmark: a large tenant's lake, then each query type timed uncached and cached.

    .venv/bin/python bench/analytics.py [--events 10000000] [--users 1000000] [--days 90] [--dir PATH]

Generates the events with pyarrow (vectorised, one day at a time) straight into the lake layout
(``tenants/{tenant}/events/date=…/hour=…/*.parquet``, zstd), then builds the tenant's warehouse
(DuckDB) from the lake and times every query: median of 3 runs with the result cache off
("uncached"), and median of 3 cache hits ("cached"). Prints a table and the peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_plane.analytics import schemas
from data_plane.analytics.service import AnalyticsService, TenantView
from data_plane.lake import LocalObjectStore
from data_plane.lake.schema import COMPRESSION, EVENT_SCHEMA
from data_plane.warehouse import DuckDBWarehouse
from kernel.ports.kv import MemoryKeyValueStore

TENANT = "ten_bench"
START = dt.date(2026, 1, 5)
# About 20 event names; the e-commerce ones drive funnels, products, revenue and LTV.
NAMES = [
    ("Product Viewed", 0.24),
    ("Product Added", 0.08),
    ("Checkout Started", 0.04),
    ("Order Completed", 0.025),
    ("Page Viewed", 0.20),
    ("Product List Viewed", 0.08),
    ("Products Searched", 0.06),
    ("Signed In", 0.04),
    ("Signed Up", 0.01),
    ("Cart Viewed", 0.04),
    ("Product Removed", 0.02),
    ("Coupon Applied", 0.01),
    ("Promotion Viewed", 0.04),
    ("Promotion Clicked", 0.01),
    ("Wishlist Added", 0.015),
    ("Review Submitted", 0.005),
    ("Video Played", 0.04),
    ("Newsletter Subscribed", 0.005),
    ("Support Contacted", 0.005),
    ("Signed Out", 0.035),
]
PRODUCTS = 5_000


def _strings(values: pa.Array, prefix: str) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(values, pa.string()), "")


def generate(root: Path, events: int, users: int, days: int, seed: int = 7) -> int:
    """Write ``events`` events over ``days`` days into the lake at ``root``; returns the files written."""
    rng = np.random.default_rng(seed)
    names = np.array([name for name, _ in NAMES])
    weights = np.array([weight for _, weight in NAMES])
    weights = weights / weights.sum()
    per_day = np.full(days, events // days)
    per_day[: events % days] += 1
    files = 0
    first_id = 0
    for day_number in range(days):
        count = int(per_day[day_number])
        day = START + dt.timedelta(days=day_number)
        base = int(dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC).timestamp() * 1_000_000)
        ts = np.sort(base + rng.integers(0, 86_400_000_000, count))
        # Activity is skewed: a minority of users make most events (x² of a uniform draw).
        user = (users * rng.random(count) ** 2).astype(np.int64)
        kind = rng.choice(len(names), count, p=weights)
        event = names[kind]
        product = rng.zipf(1.3, count) % PRODUCTS
        price = np.round(5 + (product % 97) * 1.25, 2)
        quantity = 1 + (rng.random(count) < 0.2).astype(np.int64)
        product_id = _strings(pa.array(product), "p")
        with_product = pc.binary_join_element_wise('{"product_id":"', product_id, '"}', "")
        order = pc.binary_join_element_wise(
            '{"revenue":',
            pc.cast(pa.array(price * quantity), pa.string()),
            ',"products":[{"product_id":"',
            product_id,
            '","price":',
            pc.cast(pa.array(price), pa.string()),
            ',"quantity":',
            pc.cast(pa.array(quantity), pa.string()),
            "}]}",
            "",
        )
        is_view = np.isin(event, ["Product Viewed", "Product Added", "Product Removed", "Wishlist Added"])
        is_order = event == "Order Completed"
        properties = pc.if_else(pa.array(is_order), order, pc.if_else(pa.array(is_view), with_product, "{}"))
        stamps = pa.array(ts, pa.timestamp("us", tz="UTC"))
        table = pa.table(
            {
                "message_id": _strings(pa.array(np.arange(first_id, first_id + count)), "m"),
                "tenant_id": pa.array([TENANT] * count),
                "source_id": pa.array(["src_bench"] * count),
                "type": pa.array(["track"] * count),
                "event": pa.array(event),
                "name": pa.nulls(count, pa.string()),
                "user_id": _strings(pa.array(user), "user-"),
                "anonymous_id": pa.nulls(count, pa.string()),
                "group_id": pa.nulls(count, pa.string()),
                "previous_id": pa.nulls(count, pa.string()),
                "timestamp": stamps,
                "original_timestamp": stamps,
                "sent_at": stamps,
                "received_at": stamps,
                "properties": properties,
                "traits": pa.array(["{}"] * count),
                "context": pa.array(["{}"] * count),
                "integrations": pa.array(["{}"] * count),
                "session_id": pa.nulls(count, pa.string()),
                "revenue": pa.array(np.where(is_order, price * quantity, np.nan), from_pandas=True),
            },
            schema=EVENT_SCHEMA,
        )
        first_id += count
        hours = (ts - base) // 3_600_000_000
        cuts = np.searchsorted(hours, np.arange(25))
        for hour in range(24):
            part = table.slice(int(cuts[hour]), int(cuts[hour + 1] - cuts[hour]))
            if part.num_rows == 0:
                continue
            folder = root / "tenants" / TENANT / "events" / f"date={day.isoformat()}" / f"hour={hour:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(part, folder / "part-bench.parquet", compression=COMPRESSION)
            files += 1
    return files


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def timed(run: Callable[[], Awaitable[Any]], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def queries(days: int) -> dict[str, Callable[[AnalyticsService, TenantView], Awaitable[Any]]]:
    first, last = START, START + dt.timedelta(days=days - 1)
    window = {"from_date": first, "to_date": last}
    funnel = schemas.FunnelQuery(
        **window,
        steps=[
            schemas.FunnelStep(event="Product Viewed"),
            schemas.FunnelStep(event="Product Added"),
            schemas.FunnelStep(event="Checkout Started"),
            schemas.FunnelStep(event="Order Completed"),
        ],
        conversion_window_seconds=7 * 86_400,
    )
    retention = schemas.RetentionQuery(**window, period="week", periods=12)
    products = schemas.ProductsQuery(**window, sort="revenue", limit=20)
    dau = schemas.TrendsQuery(**window, measure="users", interval="day")
    events = schemas.TrendsQuery(**window, measure="events", interval="day", breakdown=None)
    revenue = schemas.TrendsQuery(**window, event="Order Completed", measure="sum", property="revenue", interval="week")
    kpis = schemas.KpiQuery(**window)
    ltv = schemas.LtvQuery(from_date=first, to_date=last, months=3)
    return {
        "funnel, 4 steps, 7-day window": lambda s, t: s.funnel(t, funnel),
        "retention, 12 weeks": lambda s, t: s.retention(t, retention),
        "top 20 products by revenue": lambda s, t: s.products(t, products),
        "DAU over the range (trends)": lambda s, t: s.trends(t, dau),
        "events per day": lambda s, t: s.trends(t, events),
        "revenue per week": lambda s, t: s.trends(t, revenue),
        "KPIs: DAU, WAU, MAU, revenue…": lambda s, t: s.kpis(t, kpis),
        "LTV, 3 months": lambda s, t: s.ltv(t, ltv),
        "live feed (50)": lambda s, t: s.live(t, 50),
    }


async def measure(root: Path, days: int, threads: int | None) -> None:
    store = LocalObjectStore(root / "lake")
    warehouse = DuckDBWarehouse(store, directory=root / "warehouse", threads=threads)
    started = time.perf_counter()
    await warehouse.refresh(TENANT)
    build = time.perf_counter() - started
    print(f"warehouse built from the lake: {build:.1f} s (peak memory so far {peak_mb():.0f} MB)")
    started = time.perf_counter()
    await warehouse.refresh(TENANT)
    print(f"refresh with nothing new (lists the lake): {1000 * (time.perf_counter() - started):.0f} ms")
    tenant = TenantView(TENANT)
    uncached = AnalyticsService(warehouse)
    cached = AnalyticsService(warehouse, MemoryKeyValueStore())
    print()
    print(f"{'query':<34} {'uncached (s)':>13} {'cached (ms)':>12}")
    for name, run in queries(days).items():
        cold = await timed(lambda run=run: run(uncached, tenant))
        await run(cached, tenant)
        warm = await timed(lambda run=run: run(cached, tenant))
        print(f"{name:<34} {cold:>13.3f} {1000 * warm:>12.1f}", flush=True)
    await warehouse.close()
    print(f"\npeak memory (RSS, this process): {peak_mb():.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--threads", type=int, default=0, help="DuckDB threads (0: one per core)")
    parser.add_argument("--dir", type=Path, default=None, help="keep the lake here (reused when present)")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="livora-bench-analytics-"))
    try:
        if not (root / "lake").exists():
            started = time.perf_counter()
            files = generate(root / "lake", args.events, args.users, args.days)
            print(
                f"generated {args.events:,} events, {args.users:,} users, {args.days} days: {files} files "
                f"in {time.perf_counter() - started:.1f} s"
            )
        shutil.rmtree(root / "warehouse", ignore_errors=True)
        asyncio.run(measure(root, args.days, args.threads or None))
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
