"""Analytics request and result types (msgspec), shared by the API, the service and the reference."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec

from data_plane.analytics.calendar import Interval

# Top-level event property names; quotes and backslashes would break out of a JSON path.
PropertyName = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r'^[^"\\]+$')]
EventName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Operator = Literal["equals", "not_equals", "contains", "gt", "lt", "is_set", "is_not_set"]
MAX_WINDOW_SECONDS = 365 * 86_400
MAX_RANGE_DAYS = 3 * 366
MAX_BREAKDOWN_GROUPS = 50


class Filter(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A condition on one event property.

    - `equals` / `not_equals`: a string matches a string property, a number a numeric one (compared as
      numbers), a boolean a boolean one. `not_equals` is true when `equals` is not (including when unset).
    - `contains`: the property is a string containing `value` (a string; case-sensitive).
    - `gt` / `lt`: the property is a number greater / less than `value` (a number).
    - `is_set` / `is_not_set`: the property is present and not null / absent or null (no `value`).
    """

    property: PropertyName
    op: Operator
    value: str | float | bool | None = None


class Window(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # Local dates in the time zone, both included.
    from_date: dt.date
    to_date: dt.date
    # IANA time zone; the tenant's own (from its settings) when left out.
    time_zone: str | None = None


class Filtered(Window, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # Conditions every counted event must meet (all of them).
    filters: Annotated[list[Filter], msgspec.Meta(max_length=20)] = []


class BrokenDown(Filtered, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # Split the result by this property's value (strings as they are, other values as JSON text);
    # the 50 largest groups are returned.
    breakdown: PropertyName | None = None


# --- funnels ------------------------------------------------------------------------------


class FunnelStep(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    event: EventName
    filters: Annotated[list[Filter], msgspec.Meta(max_length=20)] = []


class Exclusion(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A user who does this event after their step `after_step` and before their step `before_step`
    (1-based; default: the last step) does not count from `before_step` on."""

    event: EventName
    filters: Annotated[list[Filter], msgspec.Meta(max_length=20)] = []
    after_step: Annotated[int, msgspec.Meta(ge=1, le=19)] = 1
    before_step: Annotated[int, msgspec.Meta(ge=2, le=20)] | None = None


class FunnelQuery(BrokenDown, kw_only=True, frozen=True, forbid_unknown_fields=True):
    steps: Annotated[list[FunnelStep], msgspec.Meta(min_length=2, max_length=20)]
    # Time from the first step to the last, 1 minute to 365 days.
    conversion_window_seconds: Annotated[int, msgspec.Meta(ge=60, le=MAX_WINDOW_SECONDS)] = 14 * 86_400
    # sequential: steps in order, other events may come between; strict: each step is the user's very
    # next event; any: the steps in any order.
    order: Literal["sequential", "strict", "any"] = "sequential"
    exclusions: Annotated[list[Exclusion], msgspec.Meta(max_length=10)] = []


class FunnelStepResult(msgspec.Struct, kw_only=True):
    step: int
    event: str
    count: int
    # Share of the first step's users, and of the previous step's (null when that is 0).
    conversion_from_first: float | None
    conversion_from_previous: float | None
    # Users lost since the previous step.
    drop_off: int
    # Time from the previous step, over the users who reached this one (null for step 1 or nobody).
    median_seconds_to_convert: float | None
    average_seconds_to_convert: float | None


class FunnelGroup(msgspec.Struct, kw_only=True):
    breakdown: str | None
    steps: list[FunnelStepResult]


class FunnelResult(msgspec.Struct, kw_only=True):
    time_zone: str
    steps: list[FunnelStepResult]
    # With a breakdown: the same per value of the property on the user's first step (largest first).
    groups: list[FunnelGroup] = []


# --- retention ----------------------------------------------------------------------------


class RetentionQuery(BrokenDown, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # Cohort users by their first ever start event (any event when left out: first seen) ...
    start_event: EventName | None = None
    # ... and count them again when they do the return event (any event when left out).
    return_event: EventName | None = None
    period: Literal["day", "week", "month"] = "week"
    periods: Annotated[int, msgspec.Meta(ge=1, le=52)] = 12
    # on: returned in that very period; on_or_after: in that period or any later one.
    mode: Literal["on", "on_or_after"] = "on"


class RetentionCohort(msgspec.Struct, kw_only=True):
    # The local date the cohort's period starts on.
    cohort: str
    size: int
    # counts[k]: users who returned k periods after their cohort's (counts[0] is the size).
    counts: list[int]
    percentages: list[float]


class RetentionAverage(msgspec.Struct, kw_only=True):
    # Weighted by cohort size, over the cohorts whose period k has begun by the end of the range.
    counts: list[int]
    sizes: list[int]
    percentages: list[float | None]


class RetentionGroup(msgspec.Struct, kw_only=True):
    breakdown: str | None
    cohorts: list[RetentionCohort]
    average: RetentionAverage


class RetentionResult(msgspec.Struct, kw_only=True):
    time_zone: str
    period: str
    mode: str
    groups: list[RetentionGroup]


# --- trends and KPIs ----------------------------------------------------------------------


class TrendsQuery(BrokenDown, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # The event counted; every event when left out.
    event: EventName | None = None
    # events: how many; users: distinct users; sum / average: of the numeric `property`.
    measure: Literal["events", "users", "sum", "average"] = "events"
    property: PropertyName | None = None
    interval: Interval = "day"


class TrendPoint(msgspec.Struct, kw_only=True):
    # Local start of the bucket: a date, or for hours a local time with its UTC offset.
    start: str
    value: float | None


class TrendSeries(msgspec.Struct, kw_only=True):
    breakdown: str | None
    # Over the whole range (distinct users are distinct over the range, not a sum of buckets).
    total: float | None
    points: list[TrendPoint]


class TrendsResult(msgspec.Struct, kw_only=True):
    time_zone: str
    interval: str
    measure: str
    series: list[TrendSeries]


class KpiQuery(Filtered, kw_only=True, frozen=True, forbid_unknown_fields=True):
    pass


class KpiDay(msgspec.Struct, kw_only=True):
    date: str
    # Distinct users that day, in the 7 days and in the 30 days ending that day.
    dau: int
    wau: int
    mau: int
    events: int
    # Purchase events, the revenue property summed over them, and distinct purchasing users.
    orders: int
    revenue: float
    purchasers: int
    # purchasers / dau (null when nobody was active).
    conversion_rate: float | None


class KpiTotals(msgspec.Struct, kw_only=True):
    active_users: int
    events: int
    orders: int
    revenue: float
    purchasers: int
    conversion_rate: float | None


class KpiResult(msgspec.Struct, kw_only=True):
    time_zone: str
    days: list[KpiDay]
    totals: KpiTotals


# --- products and LTV ---------------------------------------------------------------------

ProductSort = Literal["product_id", "views", "add_to_cart", "purchases", "units", "revenue", "view_to_purchase"]


class ProductsQuery(Filtered, kw_only=True, frozen=True, forbid_unknown_fields=True):
    sort: ProductSort = "revenue"
    descending: bool = True
    # Only these products, and/or those whose id contains `search`.
    product_ids: Annotated[list[str], msgspec.Meta(max_length=200)] = []
    search: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 50
    # From the previous page's `next_cursor`.
    cursor: str | None = None


class ProductRow(msgspec.Struct, kw_only=True):
    product_id: str
    views: int
    add_to_cart: int
    # Purchase events listing the product, the quantities summed (1 when not a number) and
    # price * quantity summed (entries without a numeric price add nothing).
    purchases: int
    units: float
    revenue: float
    # purchases / views (null without views).
    view_to_purchase: float | None


class ProductsResult(msgspec.Struct, kw_only=True):
    time_zone: str
    total: int
    items: list[ProductRow]
    next_cursor: str | None


class LtvQuery(Window, kw_only=True, frozen=True, forbid_unknown_fields=True):
    months: Annotated[int, msgspec.Meta(ge=1, le=36)] = 12


class LtvCohort(msgspec.Struct, kw_only=True):
    # The month users were first seen (YYYY-MM-01).
    cohort: str
    users: int
    # revenue[m]: revenue of the cohort's users from their cohort month through m months later.
    revenue: list[float]
    # ltv[m] = revenue[m] / users.
    ltv: list[float]


class LtvResult(msgspec.Struct, kw_only=True):
    time_zone: str
    cohorts: list[LtvCohort]


# --- live feed ----------------------------------------------------------------------------


class LiveEvent(msgspec.Struct, kw_only=True):
    message_id: str
    event: str
    user_id: str | None
    anonymous_id: str | None
    timestamp: dt.datetime
    received_at: dt.datetime
    properties: dict[str, Any]


class LiveFeed(msgspec.Struct, kw_only=True):
    items: list[LiveEvent]
