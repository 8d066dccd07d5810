"""The data-plane cell's Litestar application: ingestion (more APIs join it as they are built)."""

from __future__ import annotations

import asyncio

import msgspec
from litestar import Litestar, get
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

from data_plane.analytics import open_analytics
from data_plane.analytics.routes import AnalyticsController
from data_plane.contract.keeper import ConfigKeeper
from data_plane.ingest.ratelimit import rate_limit_drivers
from data_plane.ingest.routes import CORS, ingest_router
from data_plane.ingest.service import Ingestor
from data_plane.lake.store import open_lake_store
from data_plane.ops.routes import ops_router
from data_plane.ops.service import Operations
from data_plane.settings import CellSettings
from data_plane.spaces import SpaceController, TenantSpaces
from data_plane.stream.port import Stream
from data_plane.usage.ledger import open_ledger
from data_plane.usage.push import HttpUsageSink, UsagePusher, UsageSink
from kernel.errors import Unavailable
from kernel.http import EXCEPTION_HANDLERS, declare_problems, request_context_middleware


class Health(msgspec.Struct, omit_defaults=True):
    status: str
    config_version: str | None = None


@get("/health", operation_id="CellHealth", tags=["Health"])
async def health() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@get("/ready", operation_id="CellReady", tags=["Health"])
async def ready(state: State) -> Health:
    """Readiness: the cell has a tenant config (pulled, or from its cache). 503 until it has one."""
    keeper: ConfigKeeper = state.keeper
    if not keeper.config.version:
        raise Unavailable("No tenant config yet: the control plane was never reached.", code="no_config")
    return Health(status="ok", config_version=keeper.config.version)


def create_cell_app(
    settings: CellSettings,
    keeper: ConfigKeeper,
    stream: Stream,
    *,
    own: bool = True,
    usage_sink: UsageSink | None = None,
    spaces: TenantSpaces | None = None,
    close_stream: bool = False,
) -> Litestar:
    """The cell app over a config keeper and a stream. With ``own``, the app starts and stops the keeper;
    with ``close_stream``, it closes the stream when it stops.

    Usage goes to ``usage_sink``; without one, to the control plane at ``control_plane_url`` when
    that is set, and otherwise it waits in the ledger's outbox.
    """
    ledger = open_ledger(settings, stream)
    lake = open_lake_store(settings)
    # Shared by every ingest process of the cell, so a tenant's limit does not grow with their number.
    buckets = rate_limit_drivers.create(settings.rate_limit_driver, settings.rate_limit_path, settings.redis_url)
    ingestor = Ingestor(settings, keeper, stream, buckets=buckets, ledger=ledger)
    analytics = open_analytics(settings, lake, keeper)
    if usage_sink is None and settings.control_plane_url:
        usage_sink = HttpUsageSink(settings.control_plane_url, settings.cell_secret)
    pusher = (
        UsagePusher(ledger, usage_sink, settings.cell_id, interval=settings.usage_push_seconds)
        if usage_sink is not None
        else None
    )
    stopping = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def start(app: Litestar) -> None:
        if own:
            await keeper.start()
        if pusher is not None:
            stopping.clear()
            tasks.append(asyncio.create_task(pusher.run(stopping), name="usage-pusher"))

    async def stop(app: Litestar) -> None:
        stopping.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()
        if own:
            await keeper.stop()
        if usage_sink is not None:
            await usage_sink.close()
        await ledger.close()
        await buckets.close()
        await analytics.close()
        await lake.close()
        if close_stream:
            await stream.close()

    app = Litestar(
        route_handlers=[
            health,
            ready,
            ingest_router,
            ops_router,
            AnalyticsController,
            *([SpaceController] if spaces else []),
        ],
        state=State(
            {
                "settings": settings,
                "keeper": keeper,
                "ingestor": ingestor,
                "stream": stream,
                "ledger": ledger,
                "ops": Operations(stream, ledger, lake),
                # Tenant spaces for the control plane's provisioning (see data_plane.spaces).
                "spaces": spaces,
                "cell_secret": settings.cell_secret,
                "analytics": analytics.service,
                "analytics_auth": analytics.auth,
            }
        ),
        middleware=[request_context_middleware],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(
            title="Livora data-plane cell",
            version="1.0.0",
            description="Segment-compatible ingestion. Errors are RFC 9457 problem details with a stable `code`.",
            path="/schema",
            render_plugins=[JsonRenderPlugin()],
        ),
        on_startup=[start],
        on_shutdown=[stop],
        request_max_body_size=settings.max_request_bytes,
        cors_config=CORS,
        logging_config=None,
        debug=False,
    )
    declare_problems(app, _problem_statuses)
    return app


def _problem_statuses(handler: HTTPRouteHandler, path: str) -> set[int]:
    if path.startswith("/v1/"):
        return {400, 401, 403, 413, 429, 503}
    if path.startswith("/internal/"):
        return {400, 401, 403, 503}
    return {503} if handler.operation_id == "CellReady" else set()
