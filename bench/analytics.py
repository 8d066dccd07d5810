"""Analytics benchmark: a large tenant's lake, each query type timed uncached and cached, beside ClickHouse.

    .venv/bin/python bench/analytics.py [--events 10000000] [--users 1000000] [--days 90] [--dir PATH]
                                        [--threads 2] [--memory-limit 2GB] [--no-chdb] [--json]

Generates the events with pyarrow (vectorised, one day at a time) straight into the lake layout
(``tenants/{tenant}/events/date=…/hour=…/*.parquet``, zstd), then builds the tenant's warehouse
(DuckDB) from the lake and times every query: median of 3 runs with the result cache off
("uncached"), and median of 3 cache hits ("cached"). Then loads the same lake into ClickHouse
(embedded ``chdb``: a MergeTree ordered by (user, time), the same thread count) and times the same
questions there in the same run. Prints each figure beside its target and ClickHouse's, with the
ratio (ClickHouse's time / ours: above 1 means faster than ClickHouse); ``--json`` prints the figures
as one JSON object instead. ``--events 100000000`` runs the large case.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
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


def current_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def memory_mb(limit: str) -> float:
    """``2GB``, ``512MB``… in MB (DuckDB's units are powers of 1000; taken as 1024 here, the larger)."""
    number = float(limit.upper().rstrip("IB").rstrip("GMKT"))
    unit = limit.upper().rstrip("IB")[-1]
    return number * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}[unit]


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


TARGET_SECONDS = 0.5  # every query, uncached, on 10 M events / 1 M users
MEMORY_TARGET_MB = 16 * 1024  # 100 M events must fit in 16 GB


def say(text: str = "", quiet: bool = False) -> None:
    if not quiet:
        print(text, flush=True)


async def measure(root: Path, days: int, threads: int | None, memory_limit: str | None, quiet: bool) -> dict[str, Any]:
    baseline = current_mb()
    store = LocalObjectStore(root / "lake")
    warehouse = DuckDBWarehouse(store, directory=root / "warehouse", threads=threads, memory_limit=memory_limit)
    started = time.perf_counter()
    await warehouse.refresh(TENANT)
    build = time.perf_counter() - started
    say(f"warehouse built from the lake: {build:.1f} s (peak memory so far {peak_mb():.0f} MB)", quiet)
    started = time.perf_counter()
    await warehouse.refresh(TENANT)
    idle = time.perf_counter() - started
    say(f"refresh with nothing new (lists the lake): {1000 * idle:.0f} ms", quiet)
    tenant = TenantView(TENANT)
    uncached = AnalyticsService(warehouse)
    cached = AnalyticsService(warehouse, MemoryKeyValueStore())
    figures: dict[str, dict[str, float]] = {}
    for name, run in queries(days).items():
        cold = await timed(lambda run=run: run(uncached, tenant))
        await run(cached, tenant)
        warm = await timed(lambda run=run: run(cached, tenant))
        figures[name] = {"uncached_s": cold, "cached_ms": 1000 * warm}
        say(f"  {name}: {cold:.3f} s uncached, {1000 * warm:.1f} ms cached", quiet)
    peak = peak_mb()
    # What a query holds outside DuckDB (arrays, Arrow results) grows with the events it reads; DuckDB's
    # own memory stays under its limit (it spills to disk past it). Measured once more per query, traced.
    pool = pa.default_memory_pool()
    tracemalloc.start()
    for run in queries(days).values():
        await run(uncached, tenant)
    arrays_mb = (tracemalloc.get_traced_memory()[1] + pool.max_memory()) / 2**20
    tracemalloc.stop()
    await warehouse.close()
    return {
        "baseline_mb": baseline,
        "build_s": build,
        "idle_refresh_ms": 1000 * idle,
        "queries": figures,
        "peak_mb": peak,
        "query_arrays_mb": arrays_mb,
    }


# The same questions in ClickHouse's dialect, over a MergeTree ordered by (user, time). Revenue, product
# ids and the integer user were extracted at load, as the warehouse does when data lands.
def clickhouse_queries(days: int) -> dict[str, str]:
    low = dt.datetime.combine(START, dt.time(0)).isoformat(" ")
    high = dt.datetime.combine(START + dt.timedelta(days=days), dt.time(0)).isoformat(" ")
    lead = dt.datetime.combine(START - dt.timedelta(days=29), dt.time(0)).isoformat(" ")
    inside = f"ts >= '{low}' AND ts < '{high}'"
    firsts = f"SELECT user, min(ts) AS f FROM events GROUP BY user HAVING f >= '{low}' AND f < '{high}'"
    return {
        "funnel, 4 steps, 7-day window": f"""
            SELECT level, count() FROM (
                SELECT user, windowFunnel(604800)(toDateTime(ts), event = 'Product Viewed', event = 'Product Added',
                       event = 'Checkout Started', event = 'Order Completed') AS level
                FROM events WHERE ts >= '{low}' AND ts < toDateTime64('{high}', 6) + INTERVAL 7 DAY
                GROUP BY user) GROUP BY level""",
        "retention, 12 weeks": f"""
            SELECT c, k, uniqExact(user) FROM (
                SELECT e.user AS user, toMonday(f.f) AS c, dateDiff('week', toMonday(f.f), toMonday(e.ts)) AS k
                FROM events e INNER JOIN ({firsts}) f ON e.user = f.user)
            WHERE k BETWEEN 0 AND 12 GROUP BY c, k""",
        "top 20 products by revenue": f"""
            SELECT product_id, countIf(event = 'Product Viewed') AS views, countIf(event = 'Product Added') AS adds,
                   countIf(event = 'Order Completed') AS purchases, sumIf(revenue, event = 'Order Completed') AS money
            FROM events WHERE {inside} AND product_id != '' GROUP BY product_id ORDER BY money DESC LIMIT 20""",
        "DAU over the range (trends)": f"SELECT toDate(ts) AS d, uniqExact(user) FROM events WHERE {inside} GROUP BY d",
        "events per day": f"SELECT toDate(ts) AS d, count() FROM events WHERE {inside} GROUP BY d",
        "revenue per week": f"""SELECT toMonday(ts) AS w, sum(revenue) FROM events
            WHERE {inside} AND event = 'Order Completed' GROUP BY w""",
        "KPIs: DAU, WAU, MAU, revenue…": f"""
            WITH daily AS (
                SELECT toDate(ts) AS d, groupBitmapState(user) AS s, count() AS n,
                       countIf(event = 'Order Completed') AS orders, sumIf(revenue, event = 'Order Completed') AS money,
                       uniqExactIf(user, event = 'Order Completed') AS buyers
                FROM events WHERE ts >= '{lead}' AND ts < '{high}' GROUP BY d)
            SELECT d, any(w.dau), any(w.wau), any(m.mau) FROM (
                SELECT day AS d, bitmapCardinality(groupBitmapMergeState(s)) AS wau, 0 AS dau
                FROM (SELECT d + arrayJoin(range(7)) AS day, s FROM daily) GROUP BY day) w
            JOIN (SELECT day AS d, bitmapCardinality(groupBitmapMergeState(s)) AS mau
                  FROM (SELECT d + arrayJoin(range(30)) AS day, s FROM daily) GROUP BY day) m USING d
            JOIN (SELECT d, n, orders, money, buyers FROM daily) x USING d
            WHERE d >= '{low[:10]}' AND d < '{high[:10]}' GROUP BY d""",
        "LTV, 3 months": f"""
            SELECT c, k, sum(revenue), any(users) FROM (
                SELECT toStartOfMonth(f.f) AS c, dateDiff('month', toStartOfMonth(f.f), toStartOfMonth(e.ts)) AS k,
                       e.revenue AS revenue
                FROM events e INNER JOIN ({firsts}) f ON e.user = f.user WHERE e.event = 'Order Completed') AS sales
            JOIN (SELECT toStartOfMonth(f) AS c, count() AS users FROM ({firsts}) GROUP BY c) AS sizes USING c
            WHERE k < 3 GROUP BY c, k""",
        "live feed (50)": "SELECT message_id, event, user, ts FROM events ORDER BY received_at DESC LIMIT 50",
    }


def clickhouse(root: Path, days: int, threads: int, quiet: bool) -> tuple[float, dict[str, float]]:
    from chdb import session

    folder = root / "clickhouse"
    shutil.rmtree(folder, ignore_errors=True)
    db = session.Session(str(folder))
    settings = f"SETTINGS max_threads = {threads}"
    files = str(root / "lake" / "tenants" / TENANT / "events" / "*" / "*" / "*.parquet")
    started = time.perf_counter()
    db.query(
        """CREATE TABLE events (user UInt32, ts DateTime64(6), received_at DateTime64(6), message_id String,
               event LowCardinality(String), product_id String, revenue Float64)
           ENGINE = MergeTree ORDER BY (user, ts)"""
    )
    db.query(
        f"""INSERT INTO events SELECT toUInt32(replaceOne(user_id, 'user-', '')), timestamp, received_at, message_id,
               event, if(event = 'Order Completed', JSONExtractString(properties, 'products', 1, 'product_id'),
                         JSONExtractString(properties, 'product_id')),
               if(isNaN(revenue), 0, revenue)
           FROM file('{files}', Parquet) {settings}"""
    )
    db.query(f"OPTIMIZE TABLE events FINAL {settings}")
    load = time.perf_counter() - started
    say(f"ClickHouse (chdb) loaded the same lake: {load:.1f} s", quiet)
    figures = {}
    for name, sql in clickhouse_queries(days).items():
        times = []
        for _ in range(3):
            started = time.perf_counter()
            result = db.query(f"{sql} {settings}", "CSV")
            times.append(time.perf_counter() - started)
            if result.has_error():
                raise RuntimeError(f"{name}: {result.error_message()}")
        figures[name] = statistics.median(times)
    db.close()
    shutil.rmtree(folder, ignore_errors=True)
    return load, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--threads", type=int, default=2, help="threads for DuckDB and ClickHouse alike")
    parser.add_argument("--memory-limit", default="2GB", help="DuckDB's memory limit (it spills to disk past it)")
    parser.add_argument("--dir", type=Path, default=None, help="keep the lake here (reused when present)")
    parser.add_argument("--no-chdb", action="store_true", help="skip the ClickHouse comparison")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--json-file", type=Path, default=None, help="also write that JSON object to this file")
    args = parser.parse_args()
    quiet = args.json
    root = args.dir or Path(tempfile.mkdtemp(prefix="livora-bench-analytics-"))
    try:
        if not (root / "lake").exists():
            started = time.perf_counter()
            files = generate(root / "lake", args.events, args.users, args.days)
            say(
                f"generated {args.events:,} events, {args.users:,} users, {args.days} days: {files} files "
                f"in {time.perf_counter() - started:.1f} s",
                quiet,
            )
        shutil.rmtree(root / "warehouse", ignore_errors=True)
        ours = asyncio.run(measure(root, args.days, args.threads or None, args.memory_limit, quiet))
        theirs: dict[str, float] = {}
        load = None
        if not args.no_chdb:
            load, theirs = clickhouse(root, args.days, args.threads or 2, quiet)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    # The large case: the process's base, DuckDB at its limit, and the query arrays scaled with the events
    # (a linear model; `--events 100000000` measures it instead).
    scale = 100_000_000 / args.events
    projected = max(
        ours["peak_mb"] if scale <= 1 else 0.0,
        ours["baseline_mb"] + memory_mb(args.memory_limit) + ours["query_arrays_mb"] * scale,
    )
    rows = {}
    for name, figure in ours["queries"].items():
        other = theirs.get(name)
        rows[name] = {
            **figure,
            "target_s": TARGET_SECONDS,
            "chdb_s": other,
            "chdb_ratio": other / figure["uncached_s"] if other else None,
        }
    report = {
        "events": args.events,
        "users": args.users,
        "days": args.days,
        "threads": args.threads,
        "warehouse_build_s": ours["build_s"],
        "idle_refresh_ms": ours["idle_refresh_ms"],
        "chdb_load_s": load,
        "peak_mb": ours["peak_mb"],
        "duckdb_memory_limit": args.memory_limit,
        "query_arrays_mb": ours["query_arrays_mb"],
        "peak_mb_projected_100m": projected,
        "peak_mb_target_100m": MEMORY_TARGET_MB,
        "queries": rows,
    }
    if args.json_file:
        args.json_file.write_text(json.dumps(report) + "\n")
    if args.json:
        print(json.dumps(report))
        return
    print()
    print(f"{'query':<34} {'uncached (s)':>12} {'target':>7} {'chdb (s)':>9} {'chdb/ours':>9} {'cached (ms)':>12}")
    for name, row in rows.items():
        chdb_s = f"{row['chdb_s']:.3f}" if row["chdb_s"] is not None else "-"
        ratio = f"{row['chdb_ratio']:.2f}x" if row["chdb_ratio"] is not None else "-"
        print(f"{name:<34} {row['uncached_s']:>12.3f} {'< 0.5':>7} {chdb_s:>9} {ratio:>9} {row['cached_ms']:>12.1f}")
    print(
        f"\npeak memory (RSS, before ClickHouse ran): {ours['peak_mb']:.0f} MB (DuckDB limited to "
        f"{args.memory_limit}; query arrays at most {ours['query_arrays_mb']:.0f} MB); projected for 100 M "
        f"events: {projected / 1024:.1f} GB (target: 16 GB)"
    )


if __name__ == "__main__":
    main()
