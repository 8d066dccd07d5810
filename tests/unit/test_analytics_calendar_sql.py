"""The engine's bucket lookup (``calendar.bucket_sql``, ``bucket_start_sql``) equals ``calendar.locate``
for every instant, in zones with DST changes, half-hour steps and old local mean times."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from data_plane.analytics import calendar

ZONES = ["UTC", "Europe/Paris", "Australia/Lord_Howe", "America/Santiago", "Asia/Kolkata", "Africa/Monrovia"]


@settings(max_examples=60, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    first=st.dates(dt.date(1960, 1, 1), dt.date(2030, 12, 31)),
    days=st.integers(0, 120),
    interval=st.sampled_from(["hour", "day", "week", "month"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_engine_finds_the_same_bucket_as_locate(zone, first, days, interval, seed) -> None:
    if interval == "hour":
        days = min(days, 20)
    tz = calendar.zone(zone)
    grid = calendar.buckets(interval, first, first + dt.timedelta(days=days), tz)
    rng = np.random.default_rng(seed)
    # Instants inside, at every bucket edge (and one µs either side), and outside the range.
    inside = rng.integers(int(grid.starts[0]), grid.end, 200)
    edges = np.concatenate([grid.starts, grid.starts - 1, grid.starts + 1, [grid.end - 1, grid.end]])
    ts = np.concatenate([inside, edges, [int(grid.starts[0]) - 1, calendar.MIN_US, calendar.MAX_US]])
    connection = duckdb.connect()
    try:
        got = connection.sql(
            f"""SELECT {calendar.bucket_sql(grid.starts, grid.end, "t")} AS b,
                       {calendar.bucket_start_sql(grid.starts, grid.end, "t")} AS s
                FROM (SELECT unnest(?::BIGINT[]) AS t)""",
            params=[ts.tolist()],
        ).fetchall()
    finally:
        connection.close()
    within = (ts >= grid.starts[0]) & (ts < grid.end)
    want = calendar.locate(grid.starts, ts)
    for value, ok, index, (bucket, start) in zip(ts.tolist(), within, want.tolist(), got, strict=True):
        if ok:
            assert (bucket, start) == (index, int(grid.starts[index])), value
        else:
            assert (bucket, start) == (None, None), value
