"""The analytics API of a cell: funnels, retention, trends, KPIs, products, LTV and the live feed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler
from litestar.params import JSONBody, QueryParameter

from data_plane.analytics import export, schemas
from data_plane.analytics.auth import AnalyticsAuth
from data_plane.analytics.service import LIVE_LIMIT, AnalyticsService, TenantView
from kernel.http import current_request

Format = Annotated[
    Literal["json", "csv"],
    QueryParameter(description="`csv` answers the same result as a CSV file (text/csv)."),
]

CREDENTIALS = (
    "Authenticate with `Authorization: Bearer <tenant API key with the analytics:read scope>`, or with a cell "
    "token the control plane issues to people with the `analyst` role or higher "
    "(`POST /api/v1/tenants/{tenant_id}/analytics/token`). The tenant is the credential's; another tenant's "
    "data is never reachable. Dates are local dates in the tenant's time zone (or `time_zone`), both included. "
    "Add `?format=csv` for a CSV file. Results are cached for at most 5 minutes and never outlive new data."
)


def authenticate(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Guard: runs before the body is read, so a stranger learns nothing about the request's validity."""
    auth: AnalyticsAuth = connection.app.state.analytics_auth
    reader = auth.authenticate(connection.headers.get("authorization"))
    tenant = reader.tenant
    context = current_request()
    if context is not None:
        context.bind(tenant_id=tenant.id, principal=f"{reader.kind}:{reader.id}")
    connection.state.analytics_tenant = TenantView(tenant.id, tenant.time_zone, tenant.tracking_plan)


def _tenant(request: Request[Any, Any, Any], state: State) -> TenantView:
    tenant: TenantView = request.state.analytics_tenant
    return tenant


def _answer(result: Any, fmt: str, render: Callable[[Any], str], name: str) -> Response[Any]:
    if fmt == "csv":
        return Response(
            render(result),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
    return Response(result)


class AnalyticsController(Controller):
    path = "/v1/analytics"
    tags = ["Analytics"]
    guards = [authenticate]

    @post("/funnels", operation_id="QueryFunnel", status_code=200)
    async def query_funnel(
        self,
        data: JSONBody[schemas.FunnelQuery],
        request: Request[Any, Any, Any],
        state: State,
        format: Format = "json",
    ) -> Response[schemas.FunnelResult]:
        """Conversion through 2 to 20 ordered steps within a conversion window (default 14 days, 1 minute
        to 365 days): per step the users, conversion from the first and the previous step, drop-off, and
        median and average time from the previous step. Each user counts once, with their deepest attempt.
        `order`: `sequential` (other events may come between), `strict` (each step is the user's next
        event) or `any`. Exclusion steps stop a user who does the excluded event between two steps.
        Users enter with a first-step event inside the dates; later steps may fall after them, within
        the window."""
        service: AnalyticsService = state.analytics
        result = await service.funnel(_tenant(request, state), data)
        return _answer(result, format, export.funnel, "funnel")

    @post("/retention", operation_id="QueryRetention", status_code=200)
    async def query_retention(
        self,
        data: JSONBody[schemas.RetentionQuery],
        request: Request[Any, Any, Any],
        state: State,
        format: Format = "json",
    ) -> Response[schemas.RetentionResult]:
        """Cohorts of users by the period (day, week from Monday, month) of their first ever start event
        (or first event), within the dates; per cohort how many returned 1..`periods` periods later
        (`on`: in that period; `on_or_after`: then or later), with percentages and an average row weighted
        by cohort size over the cohorts whose period has begun."""
        service: AnalyticsService = state.analytics
        result = await service.retention(_tenant(request, state), data)
        return _answer(result, format, export.retention, "retention")

    @post("/trends", operation_id="QueryTrends", status_code=200)
    async def query_trends(
        self,
        data: JSONBody[schemas.TrendsQuery],
        request: Request[Any, Any, Any],
        state: State,
        format: Format = "json",
    ) -> Response[schemas.TrendsResult]:
        """Events, distinct users, or the sum or average of a numeric property, per hour, day, week or
        month of the tenant's calendar (DST-aware), optionally split by a property."""
        service: AnalyticsService = state.analytics
        result = await service.trends(_tenant(request, state), data)
        return _answer(result, format, export.trends, "trends")

    @post("/kpis", operation_id="QueryKpis", status_code=200)
    async def query_kpis(
        self, data: JSONBody[schemas.KpiQuery], request: Request[Any, Any, Any], state: State, format: Format = "json"
    ) -> Response[schemas.KpiResult]:
        """Per day: DAU, WAU and MAU (distinct users over 1, 7 and 30 days ending that day), events,
        orders, revenue, purchasers and conversion rate (purchasers / DAU); and totals over the dates.
        Purchase events and the revenue property come from the tenant's tracking plan."""
        service: AnalyticsService = state.analytics
        result = await service.kpis(_tenant(request, state), data)
        return _answer(result, format, export.kpis, "kpis")

    @post("/products", operation_id="QueryProducts", status_code=200)
    async def query_products(
        self,
        data: JSONBody[schemas.ProductsQuery],
        request: Request[Any, Any, Any],
        state: State,
        format: Format = "json",
    ) -> Response[schemas.ProductsResult]:
        """Per product id: views, add-to-cart, purchases, units, revenue and view-to-purchase conversion,
        from the tracking plan's events (`product_id` on views and adds, `products[]` on purchases);
        sortable, filterable, paginated with `cursor`."""
        service: AnalyticsService = state.analytics
        result = await service.products(_tenant(request, state), data)
        return _answer(result, format, export.products, "products")

    @post("/ltv", operation_id="QueryLtv", status_code=200)
    async def query_ltv(
        self, data: JSONBody[schemas.LtvQuery], request: Request[Any, Any, Any], state: State, format: Format = "json"
    ) -> Response[schemas.LtvResult]:
        """Lifetime value by acquisition month (the month a user was first seen, within the dates):
        cumulative revenue of the cohort and per user, for each of `months` months."""
        service: AnalyticsService = state.analytics
        result = await service.ltv(_tenant(request, state), data)
        return _answer(result, format, export.ltv, "ltv")

    @get("/live", operation_id="LiveFeed")
    async def live_feed(
        self,
        request: Request[Any, Any, Any],
        state: State,
        limit: Annotated[int, QueryParameter(ge=1, le=LIVE_LIMIT, description="How many events.")] = 50,
        format: Format = "json",
    ) -> Response[schemas.LiveFeed]:
        """The latest events to reach the lake, newest receipt first (a few seconds behind ingestion)."""
        service: AnalyticsService = state.analytics
        result = await service.live(_tenant(request, state), limit)
        return _answer(result, format, export.live, "live")


AnalyticsController.__doc__ = CREDENTIALS
