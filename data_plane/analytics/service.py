"""Analytics queries over one tenant's warehouse tables, with a per-tenant result cache."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import pyarrow as pa
import structlog

from data_plane.analytics import calendar, engine, schemas
from data_plane.analytics.sql import all_of, breakdown_sql, number_sql
from data_plane.contract.schemas import TrackingPlan
from data_plane.warehouse.port import SLOT_US, Warehouse
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


def _number(day: dt.date, period: calendar.Interval) -> int:
    """``calendar.period_number`` of one local date."""
    return int(calendar.period_number(np.array([day.toordinal()], dtype=np.int64), period)[0])


def _horizon(span: Span, period: calendar.Interval, periods: int) -> int:
    """The first instant after the period ``periods`` periods after the range's last one."""
    return int(calendar.period_starts(_number(span.last, period) + periods + 1, 0, period, span.zone)[0])


_KEY = 4096  # more than the days a KPI query spans (1,098 + 29)
_NONE = _KEY - 1


def _numeric(prop: str) -> tuple[str, list[Any]]:
    """The property as a number (NULL unless a JSON number): the ``revenue`` column the warehouse
    extracted when the data landed, or read from the JSON text for any other property."""
    if prop == "revenue":
        return "revenue", []
    return number_sql(prop)


def _aligned(starts: np.ndarray, end: int) -> bool:
    """Whether every bucket starts and ends on a boundary of the rollup's 15-minute slots (true of every
    time zone's days and hours since the 1970s; not of local mean times of old)."""
    return bool(np.all(starts % SLOT_US == 0)) and end % SLOT_US == 0


def _cache_key(tenant_id: str, kind: str, digest: bytes, version: str) -> str:
    return f"tenants/{tenant_id}/analytics/{kind}/{hashlib.sha256(digest + version.encode()).hexdigest()[:40]}"


def _column(table: pa.Table, name: str, dtype: Any) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _in_order(table: pa.Table) -> bool:
    """(uid, ts) never going down: then the scan came in the stored order."""
    if table.num_rows == 0:
        return True
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


_Cohorts = tuple[list[str | None], int, int, np.ndarray, np.ndarray]


def _retention_result(
    query: schemas.RetentionQuery,
    span: Span,
    labels: list[str | None],
    low_period: int,
    span_periods: int,
    sizes: np.ndarray,
    counts: np.ndarray,
) -> schemas.RetentionResult:
    """The answer from cohort sizes and counts, both indexed by ``group * span_periods + period - low_period``."""
    periods = query.periods
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
        reads: tuple[int | None, int | None] = (None, None),
    ) -> R:
        """``compute()``, or its cached result for the same tenant, query and lake files in ``reads``.

        ``reads`` is the span of event times (µs, None for no bound) whose hour partitions the answer
        depends on: new files elsewhere in the lake leave the entry valid, and a hit lists only those
        partitions. A miss brings the warehouse up to the whole lake first, so results reflect what the
        lake holds now.
        """
        tenant_id = tenant.tenant_id
        if self.cache is None:
            await self.warehouse.refresh(tenant_id)
            return await compute()
        low, high = reads
        digest = _encoder.encode([kind, tenant.time_zone, tenant.plan, query])
        version = await self.warehouse.version(tenant_id, low, high, fresh=True)
        hit = await self._cache_get(_cache_key(tenant_id, kind, digest, version))
        if hit is not None:
            return msgspec.json.decode(hit, type=result_type)
        await self.warehouse.refresh(tenant_id)
        version = await self.warehouse.version(tenant_id, low, high, fresh=False)
        result = await compute()
        # Stored only if no refresh moved those partitions meanwhile (the result might mix both states).
        if await self.warehouse.version(tenant_id, low, high, fresh=False) == version:
            try:
                await self.cache.set(
                    _cache_key(tenant_id, kind, digest, version),
                    msgspec.json.encode(result).decode(),
                    ttl=self.cache_seconds,
                )
            except Unavailable as exc:
                log.warning("analytics_cache_unavailable", error=exc.detail)
        return result

    async def _cache_get(self, key: str) -> str | None:
        assert self.cache is not None
        try:
            return await self.cache.get(key)
        except Unavailable as exc:
            log.warning("analytics_cache_unavailable", error=exc.detail)
            return None

    async def _fetch(self, tenant: TenantView, sql: str, params: Sequence[Any]) -> pa.Table:
        return await self.warehouse.fetch(tenant.tenant_id, sql, params)

    async def _ordered(self, tenant: TenantView, columns: str, where: str, params: Sequence[Any]) -> pa.Table:
        """``SELECT uid, ts, {columns} FROM events WHERE {where}`` in (uid, ts, message_id) order.

        The warehouse stores settled rows in that order, so a plain scan usually is sorted already and
        costs no sort; rows not settled yet (or a scan that came back otherwise) fall back to ORDER BY.
        """
        select = f"SELECT uid, ts, {columns} FROM events WHERE {where}"
        # Unsettled rows sit at the table's end since its last re-layout: their count costs next to nothing.
        unsettled = await self._fetch(tenant, "SELECT count(*) AS n FROM events WHERE NOT settled", [])
        if unsettled.column("n")[0].as_py() == 0:
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
        reads = (span.low, span.high + query.conversion_window_seconds * 1_000_000)
        return await self._cached(
            tenant, "funnel", query, schemas.FunnelResult, lambda: self._funnel(tenant, query, span), reads
        )

    async def _funnel(self, tenant: TenantView, query: schemas.FunnelQuery, span: Span) -> schemas.FunnelResult:
        window_us = query.conversion_window_seconds * 1_000_000
        columns: list[str] = []
        params: list[Any] = []
        wanted = [step.event for step in query.steps] + [item.event for item in query.exclusions]
        plain = not any(step.filters for step in query.steps) and not any(item.filters for item in query.exclusions)
        distinct = sorted(set(wanted))
        if plain:
            # Steps by name only: one small code per row (its name's place in `distinct`, -1 for another
            # name) instead of a boolean column per step.
            branches = " ".join(f"WHEN ? THEN {i}" for i in range(len(distinct)))
            columns.append(f"(CASE name {branches} ELSE -1 END)::TINYINT AS code")
            params += distinct
        else:
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
            flags.append(f"AND name IN ({', '.join('?' for _ in wanted)})")
            flag_params += wanted
        table = await self._ordered(
            tenant,
            ", ".join(columns),
            f"ts >= ? AND ts < ? AND {where} {' '.join(flags)}",
            [*params, span.low, span.high + window_us, *more, *flag_params],
        )
        uid = _column(table, "uid", np.int64)
        ts = _column(table, "ts", np.int64)
        if plain:
            code = _column(table, "code", np.int8)
            by_name = {name: code == i for i, name in enumerate(distinct)}
            matches = [by_name[step.event] for step in query.steps]
            masks = [by_name[item.event] for item in query.exclusions]
        else:
            matches = [_column(table, f"s{k}", bool) for k in range(len(query.steps))]
            masks = [_column(table, f"x{i}", bool) for i in range(len(query.exclusions))]
        exclusions = [
            (mask, item.after_step - 1, (item.before_step or len(query.steps)) - 1)
            for mask, item in zip(masks, query.exclusions, strict=True)
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
        # An answer depends on every earlier event (a cohort is the first start event ever) and on
        # returns up to `periods` after the range.
        reads = (None, _horizon(span, query.period, query.periods))
        return await self._cached(
            tenant, "retention", query, schemas.RetentionResult, lambda: self._retention(tenant, query, span), reads
        )

    async def _retention(
        self, tenant: TenantView, query: schemas.RetentionQuery, span: Span
    ) -> schemas.RetentionResult:
        empty = schemas.RetentionResult(time_zone=span.zone_name, period=query.period, mode=query.mode, groups=[])
        plain = query.start_event is None and query.return_event is None and not query.filters and not query.breakdown
        found = await (
            self._retention_plain(tenant, query, span) if plain else self._retention_rows(tenant, query, span)
        )
        if found is None:
            return empty
        labels, low_period, span_periods, sizes, counts = found
        return _retention_result(query, span, labels, low_period, span_periods, sizes, counts)

    async def _retention_plain(self, tenant: TenantView, query: schemas.RetentionQuery, span: Span) -> _Cohorts | None:
        """Cohorts by first seen, returns by any event: counted by the engine from the users' first and last
        event times and each event's predecessor (a row opens a (user, period) pair when its predecessor
        lies in an earlier period), reading only the range and the periods after it."""
        periods = query.periods
        first_period = _number(span.first, query.period)
        span_periods = _number(span.last, query.period) - first_period + 1
        bounds = calendar.period_starts(first_period, span_periods + periods, query.period, span.zone)
        of = functools.partial(calendar.bucket_sql, bounds[:-1], int(bounds[-1]))
        beyond = span_periods + periods
        if query.mode == "on":
            start = calendar.bucket_start_sql(bounds[:-1], int(bounds[-1]), "ts")
            returns = f"""SELECT c, p - c AS k, count(*) AS n FROM (
                    SELECT {of("first_ts")} AS c, {of("ts")} AS p FROM events
                    WHERE first_ts >= ? AND first_ts < ? AND ts < ? AND (prev_ts IS NULL OR prev_ts < {start}))
                WHERE p > c AND p - c <= ? GROUP BY ALL"""
            params: list[Any] = [span.low, span.high, int(bounds[-1]), periods]
        else:
            # A user's furthest return is their last event's period (capped: later counts as `periods`).
            returns = f"""SELECT c, least(coalesce({of("last_ts")}, {beyond}), c + ?) - c AS k, count(*) AS n
                FROM (SELECT {of("first_ts")} AS c, last_ts FROM users WHERE first_ts >= ? AND first_ts < ?)
                GROUP BY ALL"""
            params = [periods, span.low, span.high]
        table = await self._fetch(
            tenant,
            f"""SELECT 0 AS kind, {of("first_ts")} AS c, 0 AS k, count(*) AS n FROM users
                WHERE first_ts >= ? AND first_ts < ? GROUP BY ALL
                UNION ALL SELECT 1, * FROM ({returns})""",
            [span.low, span.high, *params],
        )
        kind = _column(table, "kind", np.int64)
        cohort = _column(table, "c", np.int64)
        offset = _column(table, "k", np.int64)
        n = _column(table, "n", np.int64)
        sizes = np.zeros(span_periods, dtype=np.int64)
        np.add.at(sizes, cohort[kind == 0], n[kind == 0])
        if not sizes.any():
            return None
        counts = np.zeros((span_periods, periods + 2), dtype=np.int64)
        picked = (kind == 1) & (offset >= 1)
        np.add.at(counts, (cohort[picked], offset[picked]), n[picked])
        if query.mode != "on":
            # Users who got k periods or further count in every period up to k.
            counts = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
        counts = counts[:, : periods + 1]
        counts[:, 0] = sizes
        return [None], first_period, span_periods, sizes, counts

    async def _retention_rows(self, tenant: TenantView, query: schemas.RetentionQuery, span: Span) -> _Cohorts | None:
        start_sql, start_params = all_of(query.filters, name=query.start_event)
        return_sql, return_params = all_of(query.filters, name=query.return_event)
        label_sql, label_params = breakdown_sql(query.breakdown) if query.breakdown else ("NULL::VARCHAR", [])
        table = await self._ordered(
            tenant,
            f"{start_sql} AS s, {return_sql} AS r, {label_sql} AS b",
            f"({start_sql} OR {return_sql})",
            [*start_params, *return_params, *label_params, *start_params, *return_params],
        )
        if table.num_rows == 0:
            return None
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
            return None
        # Period numbers over the range and the periods after it only: earlier rows are neither cohorts
        # nor returns, later ones are `periods` or more after every cohort (however far: year 9999 too).
        horizon = _horizon(span, query.period, periods)
        day_table = calendar.days(span.zone, span.low, horizon - 1)
        number = calendar.period_number(day_table.ordinal(np.clip(ts, span.low, horizon - 1)), query.period)
        number[ts >= horizon] = _number(span.last, query.period) + periods + 1
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
        return labels, low_period, span_periods, sizes, counts

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
            tenant,
            "trends",
            query,
            schemas.TrendsResult,
            lambda: self._trends(tenant, query, span),
            (span.low, span.high),
        )

    async def _trends(self, tenant: TenantView, query: schemas.TrendsQuery, span: Span) -> schemas.TrendsResult:
        grid = calendar.buckets(query.interval, span.first, span.last, span.zone)
        size = len(grid.labels)
        if not query.filters and not query.breakdown and query.measure in ("events", "users"):
            return await self._trends_plain(tenant, query, span, grid)
        where, params = all_of(query.filters, name=query.event)
        columns: list[str] = []
        extra: list[Any] = []
        if query.breakdown:
            sql, more = breakdown_sql(query.breakdown)
            columns.append(f"{sql} AS b")
            extra += more
        numeric = query.measure in ("sum", "average")
        if numeric:
            sql, more = _numeric(query.property or "")
            columns.append(f"{sql} AS v")
            extra += more
        condition = f"ts >= ? AND ts < ? AND {where}"
        if numeric:
            condition += f" AND {_numeric(query.property or '')[0]} IS NOT NULL"
            params = [*params, *_numeric(query.property or "")[1]]
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

    async def _trends_plain(
        self, tenant: TenantView, query: schemas.TrendsQuery, span: Span, grid: calendar.Buckets
    ) -> schemas.TrendsResult:
        """Events per bucket from the 15-minute rollup; distinct users per bucket as the rows whose
        predecessor (of the same name, for one event) lies in another bucket or before the range."""
        of = functools.partial(calendar.bucket_sql, grid.starts, grid.end)
        named, params = ("AND name = ?", [query.event]) if query.event is not None else ("", [])
        if query.measure == "events" and _aligned(grid.starts, grid.end):
            table = await self._fetch(
                tenant,
                f"""SELECT {of(f"slot * {SLOT_US}")} AS b, sum(events)::BIGINT AS n, 0 AS t FROM counts
                    WHERE slot >= ? AND slot < ? {named} GROUP BY b""",
                [span.low // SLOT_US, span.high // SLOT_US, *params],
            )
        elif query.measure == "events":
            table = await self._fetch(
                tenant,
                f"""SELECT {of("ts")} AS b, count(*) AS n, 0 AS t FROM events
                    WHERE ts >= ? AND ts < ? {named} GROUP BY b""",
                [span.low, span.high, *params],
            )
        else:
            prev = "prev_same_ts" if query.event is not None else "prev_ts"
            start = calendar.bucket_start_sql(grid.starts, grid.end, "ts")
            table = await self._fetch(
                tenant,
                f"""SELECT {of("ts")} AS b, count(*) AS n, count(*) FILTER (WHERE {prev} IS NULL OR {prev} < ?) AS t
                    FROM events WHERE ts >= ? AND ts < ? {named} AND ({prev} IS NULL OR {prev} < {start})
                    GROUP BY b""",
                [span.low, span.low, span.high, *params],
            )
        per = np.zeros(len(grid.labels), dtype=np.int64)
        np.add.at(per, _column(table, "b", np.int64), _column(table, "n", np.int64))
        counted = _column(table, "n" if query.measure == "events" else "t", np.int64)
        series = schemas.TrendSeries(
            breakdown=None,
            total=int(counted.sum()),
            points=[
                schemas.TrendPoint(start=label, value=int(value))
                for label, value in zip(grid.labels, per.tolist(), strict=True)
            ],
        )
        return schemas.TrendsResult(
            time_zone=span.zone_name, interval=query.interval, measure=query.measure, series=[series]
        )

    # --- KPIs ------------------------------------------------------------------------------

    async def kpis(self, tenant: TenantView, query: schemas.KpiQuery) -> schemas.KpiResult:
        span = _span(tenant, query)
        all_of(query.filters)
        reads = (calendar.day_start(span.first - dt.timedelta(days=29), span.zone), span.high)
        return await self._cached(
            tenant, "kpis", query, schemas.KpiResult, lambda: self._kpis(tenant, query, span), reads
        )

    async def _kpis(self, tenant: TenantView, query: schemas.KpiQuery, span: Span) -> schemas.KpiResult:
        plan = tenant.plan
        lead = span.first - dt.timedelta(days=29)
        count = (span.last - span.first).days + 1
        total_days = (span.last - lead).days + 1
        starts = np.array(
            [calendar.day_start(lead + dt.timedelta(days=i), span.zone) for i in range(total_days)], dtype=np.int64
        )
        if not query.filters:
            return await self._kpis_plain(tenant, span, starts, count)
        first_day = span.first.toordinal()
        where, params = all_of(query.filters)
        revenue_sql, revenue_params = _numeric(plan.revenue_property)
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

    async def _kpis_plain(self, tenant: TenantView, span: Span, starts: np.ndarray, count: int) -> schemas.KpiResult:
        """KPIs with no filters, counted by the engine: events and orders from the 15-minute rollup,
        distinct users from each event's predecessor (a row opens a (user, day) pair when its
        predecessor lies on another day; that day bounds the user's 7- and 30-day windows), revenue
        summed exactly over the range's purchase values."""
        plan = tenant.plan
        total_days = len(starts)
        lead_days = total_days - count
        of = functools.partial(calendar.bucket_sql, starts, span.high)
        if _aligned(starts, span.high):
            volume = f"""SELECT 2, {of(f"slot * {SLOT_US}")} * {_KEY} + (name = ?)::BIGINT, sum(events)::BIGINT
                FROM counts WHERE slot >= ? AND slot < ? GROUP BY ALL"""
            volume_params: list[Any] = [plan.purchase_event, span.low // SLOT_US, span.high // SLOT_US]
        else:
            volume = f"""SELECT 2, {of("ts")} * {_KEY} + (name = ?)::BIGINT, count(*) FROM events
                WHERE ts >= ? AND ts < ? GROUP BY ALL"""
            volume_params = [plan.purchase_event, span.low, span.high]
        lead_low = int(starts[0])
        # Each row as (day, days since the user's previous active day, 0 for the same day, or `_NONE` when
        # none since the lead began): a pair key, exact for any range (at most 1,127 days here).
        pair = f"{of('ts')} * {_KEY} + coalesce({of('ts')} - {of('{prev}')}, {_NONE})"
        table = await self._fetch(
            tenant,
            f"""SELECT 0 AS kind, k, count(*) AS n FROM (
                    SELECT {pair.format(prev="prev_ts")} AS k FROM events WHERE ts >= ? AND ts < ?)
                WHERE k % {_KEY} > 0 GROUP BY k
                UNION ALL
                SELECT 1, k, count(*) FROM (
                    SELECT {pair.format(prev="prev_same_ts")} AS k FROM events WHERE name = ? AND ts >= ? AND ts < ?)
                WHERE k % {_KEY} > 0 GROUP BY k
                UNION ALL {volume}""",
            [lead_low, span.high, plan.purchase_event, lead_low, span.high, *volume_params],
        )
        revenue_sql, revenue_params = _numeric(plan.revenue_property)
        sales = await self._fetch(
            tenant,
            f"""SELECT {of("ts")} AS d, v FROM (
                    SELECT ts, {revenue_sql} AS v FROM events WHERE name = ? AND ts >= ? AND ts < ?)
                WHERE v IS NOT NULL""",
            [*revenue_params, plan.purchase_event, span.low, span.high],
        )
        kind = _column(table, "kind", np.int64)
        key = _column(table, "k", np.int64)
        n = _column(table, "n", np.int64)
        day, gap = key // _KEY, key % _KEY
        before = gap == _NONE
        previous = day - gap

        def per_day(mask: np.ndarray) -> np.ndarray:
            totals = np.zeros(total_days, dtype=np.int64)
            np.add.at(totals, day[mask], n[mask])
            return totals

        def rolling(window: int) -> np.ndarray:
            # A user counts on the days [day, day + window - 1] from each active day; a day whose
            # previous active day is closer than the window only extends the run already counted.
            act = kind == 0
            begin = np.clip(
                np.where(before[act], day[act], np.maximum(day[act], previous[act] + window)), 0, total_days
            )
            end = np.clip(day[act] + window, 0, total_days)
            useful = begin < end
            delta = np.zeros(total_days + 1, dtype=np.int64)
            np.add.at(delta, begin[useful], n[act][useful])
            np.subtract.at(delta, end[useful], n[act][useful])
            return np.cumsum(delta)[:total_days]

        dau = per_day(kind == 0)
        wau, mau = rolling(7), rolling(30)
        purchasers = per_day(kind == 1)
        events = per_day(kind == 2)
        orders = per_day((kind == 2) & (gap == 1))
        sale_day = _column(sales, "d", np.int64) - lead_days
        values = _column(sales, "v", np.float64)
        revenue = engine.fsum_by(sale_day, values, count)
        days = []
        for i in range(count):
            j = lead_days + i
            active, buyers = int(dau[j]), int(purchasers[j])
            days.append(
                schemas.KpiDay(
                    date=(span.first + dt.timedelta(days=i)).isoformat(),
                    dau=active,
                    wau=int(wau[j]),
                    mau=int(mau[j]),
                    events=int(events[j]),
                    orders=int(orders[j]),
                    revenue=revenue[i],
                    purchasers=buyers,
                    conversion_rate=buyers / active if active else None,
                )
            )
        # A user counts once over the range: on their first active day in it.
        opening = (day >= lead_days) & (before | (previous < lead_days))
        active_users = int(n[(kind == 0) & opening].sum())
        buyers = int(n[(kind == 1) & opening].sum())
        totals = schemas.KpiTotals(
            active_users=active_users,
            events=int(events[lead_days:].sum()),
            orders=int(orders[lead_days:].sum()),
            revenue=math.fsum(values.tolist()),
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
            tenant,
            "products",
            whole,
            list[schemas.ProductRow],
            lambda: self._products(tenant, query, span),
            (span.low, span.high),
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
        # Lines by product code (Arrow's dictionary), orders as distinct (product, message) pairs: no
        # Python object per line.
        encoded = lines.column("product_id").combine_chunks().dictionary_encode()
        distinct: list[str] = encoded.dictionary.to_pylist()
        code = {product: i for i, product in enumerate(distinct)}
        group = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        quantity = _column(lines, "q", np.float64)
        revenue = _column(lines, "r", np.float64)
        units = engine.fsum_by(group, quantity, len(distinct))
        priced = ~np.isnan(revenue)
        money = engine.fsum_by(group[priced], revenue[priced], len(distinct))
        pairs = pa.table({"p": encoded.indices, "m": lines.column("message_id")})
        counted = pairs.group_by("p").aggregate([("m", "count_distinct")])
        orders = dict(zip(counted["p"].to_pylist(), counted["m_count_distinct"].to_pylist(), strict=True))
        rows = []
        for product in sorted(stats.keys() | set(distinct)):
            views, adds = stats.get(product, [0, 0])
            g = code.get(product)
            purchases = int(orders.get(g, 0)) if g is not None else 0
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
        reads = (None, _horizon(span, "month", query.months - 1))
        return await self._cached(
            tenant, "ltv", query, schemas.LtvResult, lambda: self._ltv(tenant, query, span), reads
        )

    async def _ltv(self, tenant: TenantView, query: schemas.LtvQuery, span: Span) -> schemas.LtvResult:
        """Cohorts from the users' first-seen times; sales of those users up to ``months`` after the last
        cohort only, each with its cohort and month computed by the engine; sums exact."""
        plan = tenant.plan
        first_month = _number(span.first, "month")
        cohorts_count = _number(span.last, "month") - first_month + 1
        bounds = calendar.period_starts(first_month, cohorts_count + query.months - 1, "month", span.zone)
        of = functools.partial(calendar.bucket_sql, bounds[:-1], int(bounds[-1]))
        sizes = await self._fetch(
            tenant,
            f"SELECT {of('first_ts')} AS c, count(*) AS n FROM users WHERE first_ts >= ? AND first_ts < ? GROUP BY c",
            [span.low, span.high],
        )
        if sizes.num_rows == 0:
            return schemas.LtvResult(time_zone=span.zone_name, cohorts=[])
        revenue_sql, revenue_params = _numeric(plan.revenue_property)
        sales = await self._fetch(
            tenant,
            f"""SELECT c, m - c AS k, v FROM (
                    SELECT {of("first_ts")} AS c, {of("ts")} AS m, {revenue_sql} AS v FROM events
                    WHERE name = ? AND first_ts >= ? AND first_ts < ? AND ts < ?)
                WHERE v IS NOT NULL AND m - c < ?""",
            [*revenue_params, plan.purchase_event, span.low, span.high, int(bounds[-1]), query.months],
        )
        users = dict(zip(_column(sizes, "c", np.int64).tolist(), _column(sizes, "n", np.int64).tolist(), strict=True))
        sale_cohort = _column(sales, "c", np.int64)
        offset = _column(sales, "k", np.int64)
        value = _column(sales, "v", np.float64)
        cohorts = []
        for cohort in sorted(users):
            mine = sale_cohort == cohort
            revenue = [math.fsum(value[mine & (offset <= m)].tolist()) for m in range(query.months)]
            cohorts.append(
                schemas.LtvCohort(
                    cohort=calendar.period_label(first_month + cohort, "month"),
                    users=users[cohort],
                    revenue=revenue,
                    ltv=[total / users[cohort] for total in revenue],
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
            # The limit-th latest receipt first (a top-N over one integer column): only rows received
            # then or later are sorted, ties included; their users are looked up after.
            """WITH edge AS (SELECT received_at FROM events ORDER BY received_at DESC LIMIT 1 OFFSET ?)
               SELECT message_id, name, uid, ts, received_at, properties FROM events
               WHERE received_at >= coalesce((SELECT received_at FROM edge), -9223372036854775808)
               ORDER BY received_at DESC, message_id DESC LIMIT ?""",
            [limit - 1, limit],
        )
        users = await self._fetch(
            tenant,
            "SELECT uid, user_key FROM users WHERE uid IN (SELECT unnest(?::INTEGER[]))",
            [sorted(set(table.column("uid").to_pylist()))],
        )
        key_of = dict(zip(users.column("uid").to_pylist(), users.column("user_key").to_pylist(), strict=True))
        decode = msgspec.json.Decoder(dict[str, Any]).decode
        items = []
        for row in table.to_pylist():
            key: str = key_of[row["uid"]]
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
