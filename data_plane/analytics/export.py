"""CSV renderings of every analytics result (spreadsheet-safe: text that looks like a formula is quoted)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

import msgspec

from data_plane.analytics import schemas

_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value
    if isinstance(value, dict | list):
        return _cell(msgspec.json.encode(value).decode())
    return value


def _write(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(value) for value in row])
    return buffer.getvalue()


def _steps(series: str, breakdown: str | None, steps: list[schemas.FunnelStepResult]) -> Iterable[list[Any]]:
    for step in steps:
        yield [
            series,
            breakdown,
            step.step,
            step.event,
            step.count,
            step.conversion_from_first,
            step.conversion_from_previous,
            step.drop_off,
            step.median_seconds_to_convert,
            step.average_seconds_to_convert,
        ]


def funnel(result: schemas.FunnelResult) -> str:
    rows = list(_steps("all", None, result.steps))
    for group in result.groups:
        rows += _steps("breakdown", group.breakdown, group.steps)
    header = ["series", "breakdown", "step", "event", "count", "conversion_from_first"]
    header += ["conversion_from_previous", "drop_off", "median_seconds_to_convert", "average_seconds_to_convert"]
    return _write(header, rows)


def retention(result: schemas.RetentionResult) -> str:
    width = max((len(group.average.counts) for group in result.groups), default=1)
    header = (
        ["breakdown", "cohort", "size"] + [f"count_{k}" for k in range(width)] + [f"percent_{k}" for k in range(width)]
    )
    rows = []
    for group in result.groups:
        for cohort in group.cohorts:
            rows.append([group.breakdown, cohort.cohort, cohort.size, *cohort.counts, *cohort.percentages])
        average = group.average
        rows.append([group.breakdown, "average", None, *average.counts, *average.percentages])
    return _write(header, rows)


def trends(result: schemas.TrendsResult) -> str:
    rows = []
    for series in result.series:
        rows += [[series.breakdown, point.start, point.value] for point in series.points]
        rows.append([series.breakdown, "total", series.total])
    return _write(["breakdown", "start", result.measure], rows)


def kpis(result: schemas.KpiResult) -> str:
    fields = ["dau", "wau", "mau", "events", "orders", "revenue", "purchasers", "conversion_rate"]
    rows = [[day.date, *(getattr(day, name) for name in fields)] for day in result.days]
    totals = result.totals
    rows.append(
        [
            "total",
            totals.active_users,
            None,
            None,
            totals.events,
            totals.orders,
            totals.revenue,
            totals.purchasers,
            totals.conversion_rate,
        ]
    )
    return _write(["date", *fields], rows)


def products(result: schemas.ProductsResult) -> str:
    fields = ["product_id", "views", "add_to_cart", "purchases", "units", "revenue", "view_to_purchase"]
    return _write(fields, ([getattr(row, name) for name in fields] for row in result.items))


def ltv(result: schemas.LtvResult) -> str:
    rows = []
    for cohort in result.cohorts:
        for month, (revenue, value) in enumerate(zip(cohort.revenue, cohort.ltv, strict=True)):
            rows.append([cohort.cohort, cohort.users, month, revenue, value])
    return _write(["cohort", "users", "month", "revenue", "ltv"], rows)


def live(result: schemas.LiveFeed) -> str:
    fields = ["message_id", "event", "user_id", "anonymous_id", "timestamp", "received_at", "properties"]
    rows = []
    for item in result.items:
        rows.append(
            [
                item.message_id,
                item.event,
                item.user_id,
                item.anonymous_id,
                item.timestamp.isoformat(),
                item.received_at.isoformat(),
                item.properties,
            ]
        )
    return _write(fields, rows)
