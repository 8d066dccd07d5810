"""Analytics queries over one tenant's warehouse tables, with a per-tenant result cache."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from data_plane.analytics import calendar, engine, schemas
from data_plane.analytics.sql import all_of, breakdown_sql, number_sql
from data_plane.contract.schemas import TrackingPlan
from data_plane.warehouse.port import Warehouse
from kernel.errors import Unavailable, ValidationFailed
from kernel.ports.kv import KeyValueStore

log = structlog.get_logger("livora.analytics")

R = TypeVar("R")
MAX_CACHE_SECONDS = 300.0
MAX_POINTS = 2_000
LIVE_LIMIT = 200
_DAY_US = 86_400_000_000
_encoder = msgspec.json.Encoder(order="deterministic")


@dataclass(frozen=True)
class TenantView:
    """What analytics needs to know of a tenant: its id (the only scope a query has), time zone and plan."""

    tenant_id: str
    time_zone: str = "UTC"
    plan: TrackingPlan = field(default_factory=TrackingPlan)


@dataclass(frozen=True)
class Span:
    zone_name: str
    zone: ZoneInfo
    first: dt.date
    last: dt.date
    low: int  # first instant of `first`, µs
    high: int  # first instant after `last`, µs


def _span(tenant: TenantView, query: schemas.Window) -> Span:
    name = query.time_zone or tenant.time_zone
    zone = calendar.zone(name)
    if query.to_date < query.from_date:
        raise ValidationFailed("to_date must not be before from_date.", code="invalid_date_range")
    if (query.to_date - query.from_date).days + 1 > schemas.MAX_RANGE_DAYS:
        raise ValidationFailed(f"A range may cover at most {schemas.MAX_RANGE_DAYS} days.", code="date_range_too_long")
    if query.from_date.year < 1971 or query.to_date.year > 9998:
        raise ValidationFailed("Dates must lie between 1971 and 9998.", code="invalid_date_range")
    low = calendar.day_start(query.from_date, zone)
    high = calendar.day_start(query.to_date + dt.timedelta(days=1), zone)
    return Span(name, zone, query.from_date, query.to_date, low, high)


def _column(table: pa.Table, name: str, dtype: Any) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _in_order(table: pa.Table) -> bool:
    """Every row settled, and (uid, ts) never going down: then the scan order is the stored order."""
    if table.num_rows == 0:
        return True
    settled = table.column("settled")
    if settled.null_count or not pc.all(settled).as_py():
        return False
    uid = _column(table, "uid", np.int64)
    ts = _column(table, "ts", np.int64)
    step = np.diff(uid)
    return bool(np.all((step > 0) | ((step == 0) & (np.diff(ts) >= 0))))


def _first_of_run(keys: np.ndarray) -> np.ndarray:
    """True where a sorted array starts a new value."""
    first = np.ones(len(keys), dtype=bool)
    if len(keys) > 1:
        first[1:] = keys[1:] != keys[:-1]
    return first


def _labels(table: pa.Table) -> tuple[np.ndarray, list[str | None]]:
    """The breakdown column as integer codes, and the label of each code (None for unset)."""
    encoded = table.column("b").combine_chunks().dictionary_encode()
    labels: list[str | None] = [*encoded.dictionary.to_pylist(), None]
    codes = encoded.indices.fill_null(len(labels) - 1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, labels


def _groups(values: list[str | None], weights: dict[str | None, float | int | None]) -> list[str | None]:
    """The breakdown values kept: largest weight first, ties by value (null last), at most 50."""

    def rank(value: str | None) -> tuple[Any, ...]:
        weight = weights.get(value)
        return (weight is None, -(weight or 0), value is None, value or "")

    return sorted(set(values), key=rank)[: schemas.MAX_BREAKDOWN_GROUPS]


class AnalyticsService:
    """Every method takes the tenant explicitly; results are cached per tenant, query and lake state."""

    def __init__(
        self, warehouse: Warehouse, cache: KeyValueStore | None = None, *, cache_seconds: float = MAX_CACHE_SECONDS
    ) -> None:
        if not 0 < cache_seconds <= MAX_CACHE_SECONDS:
            raise ValueError(f"cache_seconds must be in (0, {MAX_CACHE_SECONDS}]")
        self.warehouse = warehouse
        self.cache = cache
        self.cache_seconds = cache_seconds

    async def _cached(
        self,
        tenant: TenantView,
        kind: str,
        query: msgspec.Struct | dict[str, Any],
        result_type: type[R],
        compute: Callable[[], Awaitable[R]],
    ) -> R:
        # Bringing the warehouse up to the lake first: results reflect what the lake holds now, and
        # new data changes the generation, so a cached result of older data is never found again.
        generation = await self.warehouse.refresh(tenant.tenant_id)
        if self.cache is None:
            return await compute()
        digest = hashlib.sha256(_encoder.encode([kind, generation, tenant.time_zone, tenant.plan, query])).hexdigest()[
            :40
        ]
        key = f"tenants/{tenant.tenant_id}/analytics/{kind}/{digest}"
        try:
            hit = await self.cache.get(key)
        except Unavailable as exc:
            log.warning("analytics_cache_unavailable", error=exc.detail)
            hit = None
        if hit is not None:
            return msgspec.json.decode(hit, type=result_type)
        result = await compute()
        try:
            await self.cache.set(key, msgspec.json.encode(result).decode(), ttl=self.cache_seconds)
        except Unavailable as exc:
            log.warning("analytics_cache_unavailable", error=exc.detail)
        return result

    async def _fetch(self, tenant: TenantView, sql: str, params: Sequence[Any]) -> pa.Table:
        return await self.warehouse.fetch(tenant.tenant_id, sql, params)

    async def _ordered(self, tenant: TenantView, columns: str, where: str, params: Sequence[Any]) -> pa.Table:
        """``SELECT uid, ts, {columns} FROM events WHERE {where}`` in (uid, ts, message_id) order.

        The warehouse stores settled rows in that order, so a plain scan usually is sorted already and
        costs no sort; rows not settled yet (or a scan that came back otherwise) fall back to ORDER BY.
        """
        select = f"SELECT settled, uid, ts, {columns} FROM events WHERE {where}"
        table = await self._fetch(tenant, select, params)
        if _in_order(table):
            return table
        return await self._fetch(tenant, select + " ORDER BY uid, ts, message_id", params)

    # --- funnels ---------------------------------------------------------------------------

    async def funnel(self, tenant: TenantView, query: schemas.FunnelQuery) -> schemas.FunnelResult:
        span = _span(tenant, query)
        steps = len(query.steps)
        if query.order == "any" and query.exclusions:
            raise ValidationFailed(
                "Exclusion steps need an order: use `sequential` or `strict`.", code="exclusions_need_order"
            )
        for item in query.exclusions:
            before = item.before_step or steps
            if not item.after_step < before <= steps:
                raise ValidationFailed(
                    f"An exclusion must lie between two steps of the funnel (1..{steps}), after before before.",
                    code="invalid_exclusion",
                )
        all_of(query.filters)
        for step in query.steps:
            all_of(step.filters)  # checks each filter now, before any I/O
        return await self._cached(
            tenant, "funnel", query, schemas.FunnelResult, lambda: self._funnel(tenant, query, span)
        )

    async def _funnel(self, tenant: TenantView, query: schemas.FunnelQuery, span: Span) -> schemas.FunnelResult:
        window_us = query.conversion_window_seconds * 1_000_000
        columns: list[str] = []
        params: list[Any] = []
        for k, step in enumerate(query.steps):
            sql, more = all_of(step.filters, name=step.event)
            columns.append(f"{sql} AS s{k}")
            params += more
        for i, item in enumerate(query.exclusions):
            sql, more = all_of(item.filters, name=item.event)
            columns.append(f"{sql} AS x{i}")
            params += more
        if query.breakdown:
            sql, more = breakdown_sql(query.breakdown)
            columns.append(f"{sql} AS b")
            params += more
        where, more = all_of(query.filters)
        flags: list[str] = []
        flag_params: list[Any] = []
        if query.order != "strict":
            # Only rows some step or exclusion matches (strict funnels need every row: "the next event").
            names = [step.event for step in query.steps] + [item.event for item in query.exclusions]
            flags.append(f"AND name IN ({', '.join('?' for _ in names)})")
            flag_params += names
        table = await self._ordered(
            tenant,
            ", ".join(columns),
            f"ts >= ? AND ts < ? AND {where} {' '.join(flags)}",
            [*params, span.low, span.high + window_us, *more, *flag_params],
        )
        uid = _column(table, "uid", np.int64)
        ts = _column(table, "ts", np.int64)
        matches = [_column(table, f"s{k}", bool) for k in range(len(query.steps))]
        exclusions = [
            (_column(table, f"x{i}", bool), item.after_step - 1, (item.before_step or len(query.steps)) - 1)
            for i, item in enumerate(query.exclusions)
        ]
        paths = engine.funnel_paths(uid, ts, matches, exclusions, window_us, span.low, span.high, query.order)
        names = [step.event for step in query.steps]
        result = schemas.FunnelResult(
            time_zone=span.zone_name, steps=engine.funnel_steps(names, paths.depth, paths.times)
        )
        if query.breakdown:
            labels = table.column("b").to_pylist()
            chosen = [labels[row] for row in paths.first_row.tolist()]
            weights: dict[str | None, int] = {}
            for value in chosen:
                weights[value] = weights.get(value, 0) + 1
            keys = np.array([value if value is not None else "\x00null" for value in chosen], dtype=object)
            for value in _groups(chosen, weights):  # type: ignore[arg-type]
                mask = keys == (value if value is not None else "\x00null")
                result.groups.append(
                    schemas.FunnelGroup(
                        breakdown=value,
                        steps=engine.funnel_steps(names, paths.depth[mask], paths.times[:, mask]),
                    )
                )
        return result

    # --- retention -------------------------------------------------------------------------

    async def retention(self, tenant: TenantView, query: schemas.RetentionQuery) -> schemas.RetentionResult:
        span = _span(tenant, query)
        all_of(query.filters)
        return await self._cached(
            tenant, "retention", query, schemas.RetentionResult, lambda: self._retention(tenant, query, span)
        )

    async def _retention(
        self, tenant: TenantView, query: schemas.RetentionQuery, span: Span
    ) -> schemas.RetentionResult:
        start_sql, start_params = all_of(query.filters, name=query.start_event)
        return_sql, return_params = all_of(query.filters, name=query.return_event)
        label_sql, label_params = breakdown_sql(query.breakdown) if query.breakdown else ("NULL::VARCHAR", [])
        table = await self._ordered(
            tenant,
            f"{start_sql} AS s, {return_sql} AS r, {label_sql} AS b",
            f"({start_sql} OR {return_sql})",
            [*start_params, *return_params, *label_params, *start_params, *return_params],
        )
        empty = schemas.RetentionResult(time_zone=span.zone_name, period=query.period, mode=query.mode, groups=[])
        if table.num_rows == 0:
            return empty
        uid = _column(table, "uid", np.int64)
        ts = _column(table, "ts", np.int64)
        is_start = _column(table, "s", bool)
        is_return = _column(table, "r", bool)
        periods = query.periods
        # Each user's first start event (rows come by user, then time, then message id).
        starts = np.flatnonzero(is_start)
        firsts = starts[_first_of_run(uid[starts])]
        firsts = firsts[(ts[firsts] >= span.low) & (ts[firsts] < span.high)]
        if len(firsts) == 0:
            return empty
        day_table = calendar.days(span.zone, int(ts.min()), int(ts.max()))
        number = calendar.period_number(day_table.ordinal(ts), query.period)
        if query.breakdown:
            codes, labels = _labels(table)
        else:
            codes, labels = np.zeros(len(ts), dtype=np.int64), [None]
        cohort_period = number[firsts]
        cohort_group = codes[firsts]
        low_period = int(cohort_period.min())
        span_periods = int(cohort_period.max()) - low_period + 1
        cohort_key = cohort_group * span_periods + (cohort_period - low_period)
        key_of_user = np.full(int(uid.max()) + 1, -1, dtype=np.int64)
        key_of_user[uid[firsts]] = cohort_key
        period_of_user = np.zeros(int(uid.max()) + 1, dtype=np.int64)
        period_of_user[uid[firsts]] = cohort_period
        returns = np.flatnonzero(is_return & (ts >= span.low))
        returns = returns[key_of_user[uid[returns]] >= 0]
        offset = number[returns] - period_of_user[uid[returns]]
        keep = offset >= 1
        returns, offset = returns[keep], offset[keep]
        keys = len(labels) * span_periods
        counts = np.zeros((keys, periods + 1), dtype=np.int64)
        sizes = np.bincount(cohort_key, minlength=keys)
        counts[:, 0] = sizes
        ret_uid = uid[returns]
        if query.mode == "on":
            inside = offset <= periods
            ret_uid, offset = ret_uid[inside], offset[inside]
            # Offsets never go down within a user: distinct (user, offset) pairs are runs.
            new = _first_of_run(ret_uid) | np.r_[True, offset[1:] != offset[:-1]]
            np.add.at(counts, (key_of_user[ret_uid[new]], offset[new]), 1)
        else:
            last = np.r_[ret_uid[1:] != ret_uid[:-1], True] if len(ret_uid) else np.zeros(0, dtype=bool)
            furthest = np.minimum(offset[last], periods)
            reach = np.zeros((keys, periods + 2), dtype=np.int64)
            np.add.at(reach, (key_of_user[ret_uid[last]], furthest), 1)
            # Users who got k periods or further count in every period up to k.
            counts[:, 1:] = np.cumsum(reach[:, ::-1], axis=1)[:, ::-1][:, 1 : periods + 1]
        weights: dict[str | None, int] = {}
        for g, label in enumerate(labels):
            size = int(sizes[g * span_periods : (g + 1) * span_periods].sum())
            if size:
                weights[label] = size
        begins: dict[int, int] = {}
        groups: list[schemas.RetentionGroup] = []
        code_of = {label: g for g, label in enumerate(labels)}
        for value in _groups(list(weights), weights):  # type: ignore[arg-type]
            g = code_of[value]
            cohorts: list[schemas.RetentionCohort] = []
            average_counts = [0] * (periods + 1)
            average_sizes = [0] * (periods + 1)
            for p in range(span_periods):
                key = g * span_periods + p
                size = int(sizes[key])
                if not size:
                    continue
                period = low_period + p
                row = [int(n) for n in counts[key]]
                cohorts.append(
                    schemas.RetentionCohort(
                        cohort=calendar.period_label(period, query.period),
                        size=size,
                        counts=row,
                        percentages=[100.0 * n / size for n in row],
                    )
                )
                for k in range(periods + 1):
                    if period + k not in begins:
                        first_day = calendar.period_first_day(period + k, query.period)
                        begins[period + k] = calendar.day_start(first_day, span.zone)
                    if begins[period + k] < span.high:
                        average_counts[k] += row[k]
                        average_sizes[k] += size
            groups.append(
                schemas.RetentionGroup(
                    breakdown=value,
                    cohorts=cohorts,
                    average=schemas.RetentionAverage(
                        counts=average_counts,
                        sizes=average_sizes,
                        percentages=[
                            100.0 * n / size if size else None
                            for n, size in zip(average_counts, average_sizes, strict=True)
                        ],
                    ),
                )
            )
        return schemas.RetentionResult(time_zone=span.zone_name, period=query.period, mode=query.mode, groups=groups)

    # --- trends ----------------------------------------------------------------------------

    async def trends(self, tenant: TenantView, query: schemas.TrendsQuery) -> schemas.TrendsResult:
        span = _span(tenant, query)
        all_of(query.filters)
        if query.measure in ("sum", "average") and not query.property:
            raise ValidationFailed(f"`{query.measure}` needs a numeric `property`.", code="property_required")
        hours = ((span.high - span.low) // 3_600_000_000) if query.interval == "hour" else 0
        if hours > MAX_POINTS:
            raise ValidationFailed(
                f"At most {MAX_POINTS} points per series: shorten the range or use a longer interval.",
                code="too_many_points",
            )
        return await self._cached(
            tenant, "trends", query, schemas.TrendsResult, lambda: self._trends(tenant, query, span)
        )

    async def _trends(self, tenant: TenantView, query: schemas.TrendsQuery, span: Span) -> schemas.TrendsResult:
        grid = calendar.buckets(query.interval, span.first, span.last, span.zone)
        size = len(grid.labels)
        where, params = all_of(query.filters, name=query.event)
        columns: list[str] = []
        extra: list[Any] = []
        if query.breakdown:
            sql, more = breakdown_sql(query.breakdown)
            columns.append(f"{sql} AS b")
            extra += more
        numeric = query.measure in ("sum", "average")
        if numeric:
            sql, more = number_sql(query.property or "")
            columns.append(f"{sql} AS v")
            extra += more
        condition = f"ts >= ? AND ts < ? AND {where}"
        if numeric:
            condition += f" AND {number_sql(query.property or '')[0]} IS NOT NULL"
            params = [*params, *number_sql(query.property or "")[1]]
        arguments = [*extra, span.low, span.high, *params]
        if query.measure == "users":
            table = await self._ordered(tenant, ", ".join(columns) or "NULL AS nothing", condition, arguments)
        else:
            table = await self._fetch(
                tenant, f"SELECT {', '.join(['uid', 'ts', *columns])} FROM events WHERE {condition}", arguments
            )
        ts = _column(table, "ts", np.int64)
        bucket = grid.index(ts)
        if query.breakdown:
            group, labels = _labels(table)
        else:
            group, labels = np.zeros(len(ts), dtype=np.int64), [None]
        groups = len(labels)
        cell = group * size + bucket
        totals: dict[str | None, float | int | None] = {}
        cells: dict[tuple[str | None, int], float | int | None] = {}
        zero: float | int | None = 0
        if query.measure == "events":
            per_cell = np.bincount(cell, minlength=groups * size)
            per_group = np.bincount(group, minlength=groups)
            for g, label in enumerate(labels):
                if per_group[g] or not query.breakdown:
                    totals[label] = int(per_group[g])
                    for b in range(size):
                        cells[(label, b)] = int(per_cell[g * size + b])
        elif query.measure == "users":
            uid = _column(table, "uid", np.int64)
            # Rows come by user, then time: a (user, group, bucket) repeats only right after itself,
            # unless a breakdown interleaves groups; then distinct pairs need a sort (np.unique).
            if query.breakdown:
                pairs = np.unique(np.stack([cell, uid]), axis=1)
                per_cell = np.bincount(pairs[0], minlength=groups * size)
                user_groups = np.unique(np.stack([group, uid]), axis=1)
                per_group = np.bincount(user_groups[0], minlength=groups)
            else:
                new = _first_of_run(uid) | np.r_[True, cell[1:] != cell[:-1]]
                per_cell = np.bincount(cell[new], minlength=size)
                per_group = np.array([int(np.count_nonzero(_first_of_run(uid)))])
            for g, label in enumerate(labels):
                if per_group[g] or not query.breakdown:
                    totals[label] = int(per_group[g])
                    for b in range(size):
                        cells[(label, b)] = int(per_cell[g * size + b])
        else:
            values = _column(table, "v", np.float64)
            sums = engine.fsum_by(cell, values, groups * size)
            tallies = np.bincount(cell, minlength=groups * size)
            group_sums = engine.fsum_by(group, values, groups)
            group_tallies = np.bincount(group, minlength=groups)
            zero = 0.0 if query.measure == "sum" else None
            for g, label in enumerate(labels):
                if not group_tallies[g] and query.breakdown:
                    continue
                if query.measure == "sum":
                    totals[label] = group_sums[g]
                else:
                    totals[label] = group_sums[g] / int(group_tallies[g]) if group_tallies[g] else None
                for b in range(size):
                    n = int(tallies[g * size + b])
                    if n:
                        total = sums[g * size + b]
                        cells[(label, b)] = total if query.measure == "sum" else total / n
        kept = _groups(list(totals), totals) if query.breakdown else [None]
        if not query.breakdown:
            totals.setdefault(None, zero)
        series = [
            schemas.TrendSeries(
                breakdown=value,
                total=totals.get(value, zero),
                points=[
                    schemas.TrendPoint(start=label, value=cells.get((value, b), zero))
                    for b, label in enumerate(grid.labels)
                ],
            )
            for value in kept
        ]
        return schemas.TrendsResult(
            time_zone=span.zone_name, interval=query.interval, measure=query.measure, series=series
        )

    # --- KPIs ------------------------------------------------------------------------------

    async def kpis(self, tenant: TenantView, query: schemas.KpiQuery) -> schemas.KpiResult:
        span = _span(tenant, query)
        all_of(query.filters)
        return await self._cached(tenant, "kpis", query, schemas.KpiResult, lambda: self._kpis(tenant, query, span))

    async def _kpis(self, tenant: TenantView, query: schemas.KpiQuery, span: Span) -> schemas.KpiResult:
        plan = tenant.plan
        lead = span.first - dt.timedelta(days=29)
        count = (span.last - span.first).days + 1
        total_days = (span.last - lead).days + 1
        starts = np.array(
            [calendar.day_start(lead + dt.timedelta(days=i), span.zone) for i in range(total_days)], dtype=np.int64
        )
        first_day = span.first.toordinal()
        where, params = all_of(query.filters)
        revenue_sql, revenue_params = number_sql(plan.revenue_property)
        table = await self._ordered(
            tenant,
            f"name = ? AS p, CASE WHEN name = ? THEN {revenue_sql} END AS v",
            f"ts >= ? AND ts < ? AND {where}",
            [plan.purchase_event, plan.purchase_event, *revenue_params, int(starts[0]), span.high, *params],
        )
        user = _column(table, "uid", np.int64)
        ts = _column(table, "ts", np.int64)
        purchase = _column(table, "p", bool)
        value = _column(table, "v", np.float64)
        day = np.searchsorted(starts, ts, side="right") - 1 + lead.toordinal()
        # Rows come by user, then time, so each (user, day) pair is a run of rows.
        pair = _first_of_run(user) | np.r_[True, day[1:] != day[:-1]]
        active_days = day[pair] - first_day
        dau = np.bincount(active_days[active_days >= 0], minlength=count)[:count]
        wau = engine.rolling_distinct(user[pair], day[pair], 7, first_day, count)
        mau = engine.rolling_distinct(user[pair], day[pair], 30, first_day, count)
        inside = day >= first_day
        offset = day - first_day
        day_events = np.bincount(offset[inside], minlength=count)
        bought = inside & purchase
        day_orders = np.bincount(offset[bought], minlength=count)
        buy_user, buy_day = user[bought], day[bought]
        buy_pair = _first_of_run(buy_user) | np.r_[True, buy_day[1:] != buy_day[:-1]]
        purchasers = np.bincount(buy_day[buy_pair] - first_day, minlength=count)
        priced = bought & ~np.isnan(value)
        revenue = engine.fsum_by(offset[priced], value[priced], count)
        days = []
        for i in range(count):
            active = int(dau[i])
            buyers = int(purchasers[i])
            days.append(
                schemas.KpiDay(
                    date=dt.date.fromordinal(first_day + i).isoformat(),
                    dau=active,
                    wau=int(wau[i]),
                    mau=int(mau[i]),
                    events=int(day_events[i]),
                    orders=int(day_orders[i]),
                    revenue=revenue[i],
                    purchasers=buyers,
                    conversion_rate=buyers / active if active else None,
                )
            )
        active_users = int(np.count_nonzero(_first_of_run(user[inside])))
        buyers = int(np.count_nonzero(_first_of_run(buy_user)))
        totals = schemas.KpiTotals(
            active_users=active_users,
            events=int(np.count_nonzero(inside)),
            orders=int(np.count_nonzero(bought)),
            revenue=math.fsum(value[priced].tolist()),
            purchasers=buyers,
            conversion_rate=buyers / active_users if active_users else None,
        )
        return schemas.KpiResult(time_zone=span.zone_name, days=days, totals=totals)

    # --- products --------------------------------------------------------------------------

    async def products(self, tenant: TenantView, query: schemas.ProductsQuery) -> schemas.ProductsResult:
        span = _span(tenant, query)
        all_of(query.filters)
        offset = _decode_cursor(query.cursor)
        whole = msgspec.structs.replace(query, cursor=None, limit=1)
        every = await self._cached(
            tenant, "products", whole, list[schemas.ProductRow], lambda: self._products(tenant, query, span)
        )
        items = every[offset : offset + query.limit]
        more = offset + query.limit < len(every)
        return schemas.ProductsResult(
            time_zone=span.zone_name,
            total=len(every),
            items=items,
            next_cursor=_encode_cursor(offset + query.limit) if more else None,
        )

    async def _products(self, tenant: TenantView, query: schemas.ProductsQuery, span: Span) -> list[schemas.ProductRow]:
        plan = tenant.plan
        where, params = all_of(query.filters)
        looks = await self._fetch(
            tenant,
            f"""SELECT product_id, count(*) FILTER (WHERE name = ?) AS views,
                       count(*) FILTER (WHERE name = ?) AS adds
                FROM events WHERE name IN (?, ?) AND product_id IS NOT NULL AND ts >= ? AND ts < ? AND {where}
                GROUP BY product_id""",
            [
                plan.view_event,
                plan.add_to_cart_event,
                plan.view_event,
                plan.add_to_cart_event,
                span.low,
                span.high,
                *params,
            ],
        )
        if query.filters:
            scope = (
                f"AND message_id IN (SELECT message_id FROM events WHERE name = ? AND ts >= ? AND ts < ? AND {where})"
            )
            scope_params: list[Any] = [plan.purchase_event, span.low, span.high, *params]
        else:
            scope, scope_params = "", []
        lines = await self._fetch(
            tenant,
            f"""SELECT product_id, message_id, coalesce(quantity, 1.0) AS q, price * coalesce(quantity, 1.0) AS r
                FROM product_lines WHERE name = ? AND ts >= ? AND ts < ? {scope}""",
            [plan.purchase_event, span.low, span.high, *scope_params],
        )
        stats: dict[str, list[Any]] = {}
        for product, views, adds in zip(
            looks.column("product_id").to_pylist(),
            looks.column("views").to_pylist(),
            looks.column("adds").to_pylist(),
            strict=True,
        ):
            stats[product] = [int(views), int(adds)]
        products = lines.column("product_id").to_pylist()
        distinct = sorted(set(products))
        code = {product: i for i, product in enumerate(distinct)}
        group = np.fromiter((code[p] for p in products), dtype=np.int64, count=len(products))
        quantity = _column(lines, "q", np.float64)
        revenue = _column(lines, "r", np.float64)
        units = engine.fsum_by(group, quantity, len(distinct))
        priced = ~np.isnan(revenue)
        money = engine.fsum_by(group[priced], revenue[priced], len(distinct))
        messages = lines.column("message_id").to_pylist()
        orders: dict[str, set[str]] = {}
        for product, message in zip(products, messages, strict=True):
            orders.setdefault(product, set()).add(message)
        rows = []
        for product in sorted(stats.keys() | set(distinct)):
            views, adds = stats.get(product, [0, 0])
            g = code.get(product)
            purchases = len(orders.get(product, ()))
            rows.append(
                schemas.ProductRow(
                    product_id=product,
                    views=views,
                    add_to_cart=adds,
                    purchases=purchases,
                    units=units[g] if g is not None else 0.0,
                    revenue=money[g] if g is not None else 0.0,
                    view_to_purchase=purchases / views if views else None,
                )
            )
        wanted = set(query.product_ids)
        if wanted:
            rows = [row for row in rows if row.product_id in wanted]
        if query.search:
            rows = [row for row in rows if query.search in row.product_id]
        return sort_products(rows, query.sort, query.descending)

    # --- LTV -------------------------------------------------------------------------------

    async def ltv(self, tenant: TenantView, query: schemas.LtvQuery) -> schemas.LtvResult:
        span = _span(tenant, query)
        return await self._cached(tenant, "ltv", query, schemas.LtvResult, lambda: self._ltv(tenant, query, span))

    async def _ltv(self, tenant: TenantView, query: schemas.LtvQuery, span: Span) -> schemas.LtvResult:
        plan = tenant.plan
        revenue_sql, revenue_params = number_sql(plan.revenue_property)
        table = await self._ordered(
            tenant, f"CASE WHEN name = ? THEN {revenue_sql} END AS v", "true", [plan.purchase_event, *revenue_params]
        )
        uid = _column(table, "uid", np.int64)
        ts = _column(table, "ts", np.int64)
        value = _column(table, "v", np.float64)
        # First seen: each user's first row (rows come by user, then time).
        firsts = np.flatnonzero(_first_of_run(uid))
        firsts = firsts[(ts[firsts] >= span.low) & (ts[firsts] < span.high)]
        if len(firsts) == 0:
            return schemas.LtvResult(time_zone=span.zone_name, cohorts=[])
        day_table = calendar.days(span.zone, int(ts.min()), int(ts.max()))
        month = calendar.period_number(day_table.ordinal(ts), "month")
        cohort_of_user = np.full(int(uid.max()) + 1, -1, dtype=np.int64)
        cohort_of_user[uid[firsts]] = month[firsts]
        sales = np.flatnonzero(~np.isnan(value))
        sales = sales[cohort_of_user[uid[sales]] >= 0]
        sale_cohort = cohort_of_user[uid[sales]]
        offset = month[sales] - sale_cohort
        sale_value = value[sales]
        cohorts = []
        first_months = month[firsts]
        for cohort in np.unique(first_months).tolist():
            users = int(np.count_nonzero(first_months == cohort))
            mine = sale_cohort == cohort
            revenue = [math.fsum(sale_value[mine & (offset <= m)].tolist()) for m in range(query.months)]
            cohorts.append(
                schemas.LtvCohort(
                    cohort=calendar.period_label(cohort, "month"),
                    users=users,
                    revenue=revenue,
                    ltv=[total / users for total in revenue],
                )
            )
        return schemas.LtvResult(time_zone=span.zone_name, cohorts=cohorts)

    # --- live feed -------------------------------------------------------------------------

    async def live(self, tenant: TenantView, limit: int = 50) -> schemas.LiveFeed:
        if not 1 <= limit <= LIVE_LIMIT:
            raise ValidationFailed(f"limit must be 1..{LIVE_LIMIT}.", code="invalid_limit")
        return await self._cached(tenant, "live", {"limit": limit}, schemas.LiveFeed, lambda: self._live(tenant, limit))

    async def _live(self, tenant: TenantView, limit: int) -> schemas.LiveFeed:
        table = await self._fetch(
            tenant,
            """SELECT e.message_id, e.name, u.user_key, e.ts, e.received_at, e.properties
               FROM events e JOIN users u USING (uid)
               ORDER BY e.received_at DESC, e.message_id DESC LIMIT ?""",
            [limit],
        )
        decode = msgspec.json.Decoder(dict[str, Any]).decode
        items = []
        for row in table.to_pylist():
            key: str = row["user_key"]
            items.append(
                schemas.LiveEvent(
                    message_id=row["message_id"],
                    event=row["name"],
                    user_id=key[2:] if key.startswith("u:") else None,
                    anonymous_id=key[2:] if key.startswith("a:") else None,
                    timestamp=calendar.from_us(row["ts"]),
                    received_at=calendar.from_us(row["received_at"]),
                    properties=decode(row["properties"]),
                )
            )
        return schemas.LiveFeed(items=items)


def sort_products(rows: list[schemas.ProductRow], sort: str, descending: bool) -> list[schemas.ProductRow]:
    """Sorted by ``sort`` (nulls last either way), ties by product id ascending."""
    if sort == "product_id":
        return sorted(rows, key=lambda row: row.product_id, reverse=descending)
    sign = -1 if descending else 1

    def key(row: schemas.ProductRow) -> tuple[Any, ...]:
        value = getattr(row, sort)
        return (value is None, sign * value if value is not None else 0, row.product_id)

    return sorted(rows, key=key)


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, _, number = raw.partition(":")
        offset = int(number)
        if tag != "o" or offset < 0:
            raise ValueError(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed("The cursor is not one this API gave out.", code="invalid_cursor") from None
    return offset
