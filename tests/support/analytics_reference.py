"""Brute-force analytics: every query answered by plain loops over a list of events.

Written to be obviously right, not fast, and without the service's code paths (no numpy, no SQL,
no shared calendar helpers): property tests check the warehouse-backed service against it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from data_plane.analytics import schemas
from data_plane.contract.schemas import TrackingPlan
from data_plane.events import Event

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
US = dt.timedelta(microseconds=1)


@dataclass
class Row:
    message_id: str
    user: str
    name: str
    ts: int  # µs since the epoch
    received_at: int
    properties: dict[str, Any]


def micros(moment: dt.datetime) -> int:
    return (moment - EPOCH) // US


def rows_of(events: list[Event]) -> list[Row]:
    """What analytics sees: one copy per message id (the earliest received), track/page/screen calls of
    a known user or anonymous id."""
    kept: dict[str, Event] = {}
    for event in events:
        held = kept.get(event.message_id)
        if held is None or event.received_at < held.received_at:
            kept[event.message_id] = event
    rows = []
    for event in kept.values():
        if event.type not in ("track", "page", "screen"):
            continue
        if event.user_id is not None:
            user = "u:" + event.user_id
        elif event.anonymous_id is not None:
            user = "a:" + event.anonymous_id
        else:
            continue
        if event.type == "track":
            if event.event is None:
                continue
            name = event.event
        else:
            name = "$" + event.type
        # Properties as the lake stores them (JSON), so numbers read back the same way.
        properties = json.loads(json.dumps(event.properties))
        rows.append(Row(event.message_id, user, name, micros(event.timestamp), micros(event.received_at), properties))
    return rows


# --- building blocks ------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def equals(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, bool):
        return isinstance(value, bool) and value == wanted
    if isinstance(wanted, str):
        return isinstance(value, str) and value == wanted
    return is_number(value) and float(value) == float(wanted)


def passes(row: Row, item: schemas.Filter) -> bool:
    value = row.properties.get(item.property)
    if item.op == "equals":
        return equals(value, item.value)
    if item.op == "not_equals":
        return not equals(value, item.value)
    if item.op == "contains":
        return isinstance(value, str) and isinstance(item.value, str) and item.value in value
    if item.op == "gt":
        return is_number(value) and float(value) > float(item.value)  # type: ignore[arg-type]
    if item.op == "lt":
        return is_number(value) and float(value) < float(item.value)  # type: ignore[arg-type]
    if item.op == "is_set":
        return value is not None
    return value is None


def passes_all(row: Row, filters: list[schemas.Filter]) -> bool:
    return all(passes(row, item) for item in filters)


def label(row: Row, prop: str) -> str | None:
    value = row.properties.get(prop)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def local(ts: int, tz: ZoneInfo) -> dt.datetime:
    return (EPOCH + dt.timedelta(microseconds=ts)).astimezone(tz)


def midnight(day: dt.date, tz: ZoneInfo) -> int:
    """First instant whose local date is ``day``, found by search (no reliance on fold rules)."""
    guess = micros(dt.datetime.combine(day, dt.time(0)).replace(tzinfo=dt.UTC)) - 30 * 3600 * 10**6
    step = 3600 * 10**6
    while local(guess, tz).date() < day:
        guess += step
    # Now somewhere inside `day` (or after); walk back minute by minute to its first instant.
    while local(guess - 60 * 10**6, tz).date() >= day:
        guess -= 60 * 10**6
    return guess


def span(query: schemas.Window, default_zone: str) -> tuple[ZoneInfo, int, int]:
    tz = ZoneInfo(query.time_zone or default_zone)
    return tz, midnight(query.from_date, tz), midnight(query.to_date + dt.timedelta(days=1), tz)


def rank_groups(weights: dict[str | None, Any]) -> list[str | None]:
    def key(value: str | None) -> tuple[Any, ...]:
        weight = weights[value]
        return (weight is None, -(weight or 0), value is None, value or "")

    return sorted(weights, key=key)[:50]


def seconds(deltas: list[int]) -> tuple[float | None, float | None]:
    if not deltas:
        return None, None
    return statistics.median(deltas) / 1e6, sum(deltas) / len(deltas) / 1e6


# --- funnels -----------------------------------------------------------------------------------


def funnel(events: list[Event], query: schemas.FunnelQuery, zone: str = "UTC") -> schemas.FunnelResult:
    _, low, high = span(query, zone)
    window = query.conversion_window_seconds * 10**6
    steps = query.steps
    count = len(steps)
    per_user: dict[str, list[Row]] = defaultdict(list)
    for row in rows_of(events):
        if low <= row.ts < high + window and passes_all(row, query.filters):
            per_user[row.user].append(row)

    def matches(row: Row, k: int) -> bool:
        return row.name == steps[k].event and passes_all(row, steps[k].filters)

    def excluded(row: Row, i: int) -> bool:
        item = query.exclusions[i]
        return row.name == item.event and passes_all(row, item.filters)

    kept: list[tuple[int, list[int], str | None]] = []  # depth, step times, breakdown
    for user_rows in per_user.values():
        user_rows.sort(key=lambda row: (row.ts, row.message_id))
        best: tuple[int, int, list[int], str | None] | None = None  # depth, start, times, label
        for start, first in enumerate(user_rows):
            if not low <= first.ts < high:
                continue
            if query.order == "any":
                if not any(matches(first, k) for k in range(count)):
                    continue
                found: list[int | None] = []
                for k in range(count):
                    hit = None
                    for j in range(start, len(user_rows)):
                        if matches(user_rows[j], k):
                            hit = j
                            break
                    if hit is not None and user_rows[hit].ts - first.ts <= window:
                        found.append(hit)
                    else:
                        found.append(None)
                depth = 0
                while depth < count and found[depth] is not None:
                    depth += 1
                times = []
                latest = None
                for k in range(depth):
                    moment = user_rows[found[k]].ts  # type: ignore[index]
                    latest = moment if latest is None else max(latest, moment)
                    times.append(latest)
                step_one = user_rows[found[0]] if depth else None  # type: ignore[index]
            else:
                if not matches(first, 0):
                    continue
                path = [start]
                for k in range(1, count):
                    if query.order == "strict":
                        j = path[-1] + 1
                        ok = j < len(user_rows) and matches(user_rows[j], k)
                    else:
                        j = path[-1] + 1
                        while j < len(user_rows) and not matches(user_rows[j], k):
                            j += 1
                        ok = j < len(user_rows)
                    if not ok or user_rows[j].ts - first.ts > window:
                        break
                    path.append(j)
                depth = len(path)
                capped = depth
                for i, item in enumerate(query.exclusions):
                    a = item.after_step - 1
                    b = (item.before_step or count) - 1
                    if depth > b and any(excluded(user_rows[x], i) for x in range(path[a] + 1, path[b])):
                        capped = min(capped, b)
                depth = capped
                times = [user_rows[j].ts for j in path]
                step_one = first
            if depth == 0:
                continue
            group = label(step_one, query.breakdown) if query.breakdown and step_one else None
            if best is None or depth > best[0]:
                best = (depth, start, times, group)
        if best is not None:
            kept.append((best[0], best[2], best[3]))

    def summarise(attempts: list[tuple[int, list[int], str | None]]) -> list[schemas.FunnelStepResult]:
        results = []
        first_count = sum(1 for depth, _, _ in attempts if depth >= 1)
        previous = first_count
        for k in range(count):
            reached = [(depth, times) for depth, times, _ in attempts if depth > k]
            n = len(reached)
            median = average = None
            if k and n:
                median, average = seconds([times[k] - times[k - 1] for _, times in reached])
            results.append(
                schemas.FunnelStepResult(
                    step=k + 1,
                    event=steps[k].event,
                    count=n,
                    conversion_from_first=n / first_count if first_count else None,
                    conversion_from_previous=n / previous if previous else None,
                    drop_off=previous - n,
                    median_seconds_to_convert=median,
                    average_seconds_to_convert=average,
                )
            )
            previous = n
        return results

    result = schemas.FunnelResult(time_zone=query.time_zone or zone, steps=summarise(kept))
    if query.breakdown:
        weights: dict[str | None, Any] = defaultdict(int)
        for _, _, group in kept:
            weights[group] += 1
        for group in rank_groups(dict(weights)):
            result.groups.append(
                schemas.FunnelGroup(breakdown=group, steps=summarise([a for a in kept if a[2] == group]))
            )
    return result


# --- calendars ----------------------------------------------------------------------------------


def period_number(ts: int, tz: ZoneInfo, period: str) -> int:
    day = local(ts, tz).date()
    if period == "day":
        return day.toordinal()
    if period == "week":
        return (day - dt.timedelta(days=day.weekday())).toordinal()
    return day.year * 12 + day.month - 1


def period_first_day(number: int, period: str) -> dt.date:
    if period in ("day", "week"):
        return dt.date.fromordinal(number)
    return dt.date(number // 12, number % 12 + 1, 1)


def periods_between(first: int, later: int, period: str) -> int:
    if period == "week":
        return (later - first) // 7
    return later - first


# --- retention ----------------------------------------------------------------------------------


def retention(events: list[Event], query: schemas.RetentionQuery, zone: str = "UTC") -> schemas.RetentionResult:
    tz, low, high = span(query, zone)
    rows = [row for row in rows_of(events) if passes_all(row, query.filters)]
    first: dict[str, Row] = {}
    for row in rows:
        if query.start_event is not None and row.name != query.start_event:
            continue
        held = first.get(row.user)
        if held is None or (row.ts, row.message_id) < (held.ts, held.message_id):
            first[row.user] = row
    cohort = {user: row for user, row in first.items() if low <= row.ts < high}
    returned: dict[str, set[int]] = defaultdict(set)
    for row in rows:
        if row.user not in cohort or row.ts < low:
            continue
        if query.return_event is not None and row.name != query.return_event:
            continue
        start = period_number(cohort[row.user].ts, tz, query.period)
        k = periods_between(start, period_number(row.ts, tz, query.period), query.period)
        if k >= 1:
            returned[row.user].add(k)
    by_group: dict[str | None, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for user, row in cohort.items():
        group = label(row, query.breakdown) if query.breakdown else None
        by_group[group][period_number(row.ts, tz, query.period)].append(user)
    weights = {group: sum(len(users) for users in cohorts.values()) for group, cohorts in by_group.items()}
    groups = []
    for group in rank_groups(weights):
        cohorts = []
        sums = [0] * (query.periods + 1)
        sizes = [0] * (query.periods + 1)
        for number in sorted(by_group[group]):
            users = by_group[group][number]
            counts = [len(users)]
            for k in range(1, query.periods + 1):
                if query.mode == "on":
                    counts.append(sum(1 for user in users if k in returned[user]))
                else:
                    counts.append(sum(1 for user in users if any(j >= k for j in returned[user])))
            cohorts.append(
                schemas.RetentionCohort(
                    cohort=period_first_day(number, query.period).isoformat(),
                    size=len(users),
                    counts=counts,
                    percentages=[100.0 * c / len(users) for c in counts],
                )
            )
            for k in range(query.periods + 1):
                if query.period == "day":
                    day = period_first_day(number + k, "day")
                elif query.period == "week":
                    day = period_first_day(number + 7 * k, "week")
                else:
                    day = period_first_day(number + k, "month")
                if midnight(day, tz) < high:
                    sums[k] += counts[k]
                    sizes[k] += len(users)
        groups.append(
            schemas.RetentionGroup(
                breakdown=group,
                cohorts=cohorts,
                average=schemas.RetentionAverage(
                    counts=sums,
                    sizes=sizes,
                    percentages=[100.0 * c / s if s else None for c, s in zip(sums, sizes, strict=True)],
                ),
            )
        )
    return schemas.RetentionResult(
        time_zone=query.time_zone or zone, period=query.period, mode=query.mode, groups=groups
    )


# --- trends -------------------------------------------------------------------------------------


def bucket_label(ts: int, tz: ZoneInfo, interval: str) -> str:
    moment = local(ts, tz)
    if interval == "hour":
        return moment.replace(minute=0, second=0, microsecond=0).isoformat()
    day = moment.date()
    if interval == "week":
        day -= dt.timedelta(days=day.weekday())
    elif interval == "month":
        day = day.replace(day=1)
    return day.isoformat()


def all_labels(tz: ZoneInfo, low: int, high: int, interval: str) -> list[str]:
    labels: list[str] = []
    step = 60 * 10**6 if interval == "hour" else 3600 * 10**6
    moment = low
    while moment < high:
        found = bucket_label(moment, tz, interval)
        if not labels or labels[-1] != found:
            labels.append(found)
        moment += step
    return labels


def trends(events: list[Event], query: schemas.TrendsQuery, zone: str = "UTC") -> schemas.TrendsResult:
    tz, low, high = span(query, zone)
    labels = all_labels(tz, low, high, query.interval)
    picked = []
    for row in rows_of(events):
        if not low <= row.ts < high or not passes_all(row, query.filters):
            continue
        if query.event is not None and row.name != query.event:
            continue
        value = None
        if query.property is not None:
            raw = row.properties.get(query.property)
            value = float(raw) if is_number(raw) else None
            if query.measure in ("sum", "average") and value is None:
                continue
        group = label(row, query.breakdown) if query.breakdown else None
        picked.append((group, bucket_label(row.ts, tz, query.interval), row.user, value))

    def measure(items: list[tuple[str | None, str, str, float | None]]) -> float | int | None:
        if query.measure == "events":
            return len(items)
        if query.measure == "users":
            return len({user for _, _, user, _ in items})
        values = [value for _, _, _, value in items]
        if query.measure == "sum":
            return math.fsum(values)  # type: ignore[arg-type]
        return math.fsum(values) / len(values) if values else None  # type: ignore[arg-type]

    groups: dict[str | None, list[Any]] = defaultdict(list)
    for item in picked:
        groups[item[0]].append(item)
    if not query.breakdown:
        groups.setdefault(None, [])
    weights = {group: measure(items) for group, items in groups.items()}
    series = []
    for group in rank_groups(weights) if query.breakdown else [None]:
        items = groups[group]
        series.append(
            schemas.TrendSeries(
                breakdown=group,
                total=measure(items),
                points=[
                    schemas.TrendPoint(start=name, value=measure([item for item in items if item[1] == name]))
                    for name in labels
                ],
            )
        )
    return schemas.TrendsResult(
        time_zone=query.time_zone or zone, interval=query.interval, measure=query.measure, series=series
    )


# --- KPIs ---------------------------------------------------------------------------------------


def kpis(
    events: list[Event], query: schemas.KpiQuery, zone: str = "UTC", plan: TrackingPlan | None = None
) -> schemas.KpiResult:
    plan = plan or TrackingPlan()
    tz, low, high = span(query, zone)
    rows = [row for row in rows_of(events) if passes_all(row, query.filters)]
    by_day: dict[dt.date, list[Row]] = defaultdict(list)
    for row in rows:
        by_day[local(row.ts, tz).date()].append(row)

    def revenue_of(row: Row) -> float | None:
        value = row.properties.get(plan.revenue_property)
        return float(value) if is_number(value) else None

    days = []
    day = query.from_date
    while day <= query.to_date:
        today = by_day.get(day, [])

        def active(length: int, day: dt.date = day) -> int:
            users = set()
            for back in range(length):
                users |= {row.user for row in by_day.get(day - dt.timedelta(days=back), [])}
            return len(users)

        purchases = [row for row in today if row.name == plan.purchase_event]
        values = [value for row in purchases if (value := revenue_of(row)) is not None]
        dau = active(1)
        buyers = len({row.user for row in purchases})
        days.append(
            schemas.KpiDay(
                date=day.isoformat(),
                dau=dau,
                wau=active(7),
                mau=active(30),
                events=len(today),
                orders=len(purchases),
                revenue=math.fsum(values),
                purchasers=buyers,
                conversion_rate=buyers / dau if dau else None,
            )
        )
        day += dt.timedelta(days=1)
    inside = [row for row in rows if low <= row.ts < high]
    purchases = [row for row in inside if row.name == plan.purchase_event]
    users = len({row.user for row in inside})
    buyers = len({row.user for row in purchases})
    totals = schemas.KpiTotals(
        active_users=users,
        events=len(inside),
        orders=len(purchases),
        revenue=math.fsum(value for row in purchases if (value := revenue_of(row)) is not None),
        purchasers=buyers,
        conversion_rate=buyers / users if users else None,
    )
    return schemas.KpiResult(time_zone=query.time_zone or zone, days=days, totals=totals)


# --- products -----------------------------------------------------------------------------------


def products(
    events: list[Event], query: schemas.ProductsQuery, zone: str = "UTC", plan: TrackingPlan | None = None
) -> list[schemas.ProductRow]:
    """Every product row, sorted (pagination is the caller's)."""
    plan = plan or TrackingPlan()
    _, low, high = span(query, zone)
    views: dict[str, int] = defaultdict(int)
    adds: dict[str, int] = defaultdict(int)
    orders: dict[str, set[str]] = defaultdict(set)
    units: dict[str, list[float]] = defaultdict(list)
    money: dict[str, list[float]] = defaultdict(list)
    for row in rows_of(events):
        if not low <= row.ts < high or not passes_all(row, query.filters):
            continue
        product = row.properties.get("product_id")
        if row.name == plan.view_event and isinstance(product, str):
            views[product] += 1
        if row.name == plan.add_to_cart_event and isinstance(product, str):
            adds[product] += 1
        if row.name == plan.purchase_event and isinstance(row.properties.get("products"), list):
            for item in row.properties["products"]:
                if not isinstance(item, dict) or not isinstance(item.get("product_id"), str):
                    continue
                pid = item["product_id"]
                quantity = float(item["quantity"]) if is_number(item.get("quantity")) else 1.0
                orders[pid].add(row.message_id)
                units[pid].append(quantity)
                if is_number(item.get("price")):
                    money[pid].append(float(item["price"]) * quantity)
    rows = []
    for pid in set(views) | set(adds) | set(orders):
        rows.append(
            schemas.ProductRow(
                product_id=pid,
                views=views.get(pid, 0),
                add_to_cart=adds.get(pid, 0),
                purchases=len(orders.get(pid, ())),
                units=math.fsum(units.get(pid, [])),
                revenue=math.fsum(money.get(pid, [])),
                view_to_purchase=len(orders.get(pid, ())) / views[pid] if views.get(pid) else None,
            )
        )
    if query.product_ids:
        rows = [row for row in rows if row.product_id in query.product_ids]
    if query.search:
        rows = [row for row in rows if query.search in row.product_id]
    rows.sort(key=lambda row: row.product_id)
    if query.sort == "product_id":
        return sorted(rows, key=lambda row: row.product_id, reverse=query.descending)
    with_value = [row for row in rows if getattr(row, query.sort) is not None]
    without = [row for row in rows if getattr(row, query.sort) is None]
    # Stable sorts: product id order survives among equal values.
    with_value.sort(key=lambda row: getattr(row, query.sort), reverse=query.descending)
    return with_value + without


# --- LTV ----------------------------------------------------------------------------------------


def ltv(
    events: list[Event], query: schemas.LtvQuery, zone: str = "UTC", plan: TrackingPlan | None = None
) -> schemas.LtvResult:
    plan = plan or TrackingPlan()
    tz, low, high = span(query, zone)
    rows = rows_of(events)
    first: dict[str, int] = {}
    for row in rows:
        first[row.user] = min(first.get(row.user, row.ts), row.ts)
    cohort_of = {user: period_number(ts, tz, "month") for user, ts in first.items() if low <= ts < high}
    sales: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        value = row.properties.get(plan.revenue_property)
        if row.user in cohort_of and row.name == plan.purchase_event and is_number(value):
            month = cohort_of[row.user]
            sales[month].append((period_number(row.ts, tz, "month") - month, float(value)))
    cohorts = []
    for month in sorted(set(cohort_of.values())):
        users = sum(1 for m in cohort_of.values() if m == month)
        revenue = [math.fsum(v for k, v in sales[month] if k <= m) for m in range(query.months)]
        cohorts.append(
            schemas.LtvCohort(
                cohort=period_first_day(month, "month").isoformat(),
                users=users,
                revenue=revenue,
                ltv=[total / users for total in revenue],
            )
        )
    return schemas.LtvResult(time_zone=query.time_zone or zone, cohorts=cohorts)
