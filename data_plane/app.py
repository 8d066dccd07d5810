"""The data-plane cell's Litestar application: ingestion (more APIs join it as they are built)."""

from __future__ import annotations

import msgspec
from litestar import Litestar, get
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

from data_plane.contract.keeper import ConfigKeeper
from data_plane.ingest.routes import CORS, ingest_router
from data_plane.ingest.service import Ingestor
from data_plane.settings import CellSettings
from data_plane.stream.port import Stream
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


def create_cell_app(settings: CellSettings, keeper: ConfigKeeper, stream: Stream, *, own: bool = True) -> Litestar:
    """The cell app over a config keeper and a stream. With ``own``, the app starts and stops the keeper."""
    ingestor = Ingestor(settings, keeper, stream)

    async def start(app: Litestar) -> None:
        if own:
            await keeper.start()

    async def stop(app: Litestar) -> None:
        if own:
            await keeper.stop()

    app = Litestar(
        route_handlers=[health, ready, ingest_router],
        state=State({"keeper": keeper, "ingestor": ingestor, "stream": stream}),
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
    return {503} if handler.operation_id == "CellReady" else set()
