"""Segment's HTTP Tracking API: /v1/batch (and /v1/events), /v1/track, identify, page, screen, group, alias."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, post
from litestar.config.cors import CORSConfig
from litestar.datastructures import State

from data_plane.ingest import schemas
from data_plane.ingest.service import SINGLE_TYPES, Ingestor
from data_plane.ingest.service import Request as IngestRequest

# NOTE: any page may call the API (`*`); whether its origin may send with a given write key is
# decided per request against the source's allowed origins, and a refusal accepts nothing.
CORS = CORSConfig(
    allow_origins=["*"],
    allow_methods=["POST", "OPTIONS"],
    allow_headers=["Authorization", "Content-Type", "Content-Encoding"],
    # Browser SDKs must read Retry-After on 429 and 503 to back off as told.
    expose_headers=["Retry-After"],
    max_age=86400,
)


async def _ingest(kind: str, request: Request[Any, Any, Any], state: State) -> Response[schemas.Accepted]:
    ingestor: Ingestor = state.ingestor
    accepted = await ingestor.ingest(
        IngestRequest(
            body=await request.body(),
            kind=kind,
            authorization=request.headers.get("authorization"),
            content_encoding=request.headers.get("content-encoding"),
            origin=request.headers.get("origin"),
            client_ip=request.client.host if request.client else None,
        )
    )
    return Response(accepted, status_code=ingestor.settings.ingest_success_status)


def _handler(kind: str, path: str, doc: str) -> Any:
    async def handler(request: Request[Any, Any, Any], state: State) -> Response[schemas.Accepted]:
        return await _ingest(kind, request, state)

    handler.__doc__ = doc
    return post(path, operation_id=f"Ingest{path.rsplit('/', 1)[-1].title()}", status_code=202, tags=["Ingestion"])(
        handler
    )


BATCH_DOC = (
    "Send up to the plan's limit of events (default 100, never above 2,500) in one request, "
    "as Segment's and RudderStack's SDKs do. Authenticate with the source's write key as the HTTP Basic "
    "user name, or `writeKey` in the body. The answer is 202 (200 on cells set up for SDKs that accept "
    "nothing else) only once every event is durably on the "
    "stream; if any event is invalid the whole batch is refused (400, or 413 for size) with every "
    "rejected event named in `errors`, and nothing is accepted."
)

ingest_router = Router(
    path="/",
    route_handlers=[
        _handler("batch", "/v1/batch", BATCH_DOC),
        _handler("batch", "/v1/events", "The same as /v1/batch (RudderStack's name)."),
        *[_handler(kind, f"/v1/{kind}", f"Send one `{kind}` call (Segment's /v1/{kind}).") for kind in SINGLE_TYPES],
    ],
)
