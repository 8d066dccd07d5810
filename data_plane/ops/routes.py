"""``/internal/v1/...`` on the cell: reconciliation and dead letters, for holders of the cell credential."""

from __future__ import annotations

import datetime as dt
import hmac
from typing import Annotated, Any

from litestar import Request, Router, get, post
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.params import FromQuery, JSONBody, QueryParameter

from data_plane.ops import schemas
from data_plane.ops.service import MAX_DEAD_LETTERS, Operations
from kernel.errors import NotAuthenticated, PermissionDenied


def cell_credential(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """The cell's own credential (``LIVORA_CELL_SECRET``) as a bearer token."""
    secret: str = connection.app.state.settings.cell_secret
    if not secret:
        raise PermissionDenied(
            "The operations API is off on this cell: set LIVORA_CELL_SECRET to use it "
            "(or run `livora reconcile` / `livora dead-letters` on the cell's machine).",
            code="ops_api_disabled",
        )
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), secret.encode()):
        raise NotAuthenticated(
            "Send the cell credential as `Authorization: Bearer <secret>`.", code="invalid_cell_credential"
        )


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


@get("/reconciliation", operation_id="GetReconciliation")
async def get_reconciliation(
    request: Request[Any, Any, Any],
    tenant_id: FromQuery[str | None] = None,
    since: FromQuery[dt.datetime | None] = None,
    until: FromQuery[dt.datetime | None] = None,
) -> schemas.Reconciliation:
    """Per tenant and UTC hour of receipt: events accepted, in the lake (read from the Parquet files),
    dead-lettered and dropped as duplicates. `balanced` is true when, for every hour,
    accepted = in_lake + dead_lettered + duplicates (events still in flight show as a positive difference)."""
    ops: Operations = request.app.state.ops
    return await ops.reconciliation(tenant_id, _utc(since), _utc(until))


@get("/dead-letters", operation_id="ListDeadLetters")
async def list_dead_letters(
    request: Request[Any, Any, Any],
    tenant_id: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_DEAD_LETTERS)] = 100,
) -> list[schemas.DeadLetterView]:
    """Events the pipeline gave up on, oldest first, with the reason and the event as accepted."""
    ops: Operations = request.app.state.ops
    return await ops.dead_letters(tenant_id, limit)


@post("/dead-letters/replay", operation_id="ReplayDeadLetters", status_code=200)
async def replay_dead_letters(
    request: Request[Any, Any, Any], data: JSONBody[schemas.ReplayRequest]
) -> schemas.Replayed:
    """Append the named dead letters to the stream again (fix the cause first); unknown ids are listed."""
    ops: Operations = request.app.state.ops
    return await ops.replay(data.ids)


ops_router = Router(
    "/internal/v1",
    route_handlers=[get_reconciliation, list_dead_letters, replay_dead_letters],
    guards=[cell_credential],
    tags=["Operations"],
)
