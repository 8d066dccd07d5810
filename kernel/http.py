"""HTTP plumbing shared by both planes: RFC 9457 problem details and per-request context."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import msgspec
import structlog
from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from kernel.errors import AppError

PROBLEM_JSON = "application/problem+json"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

log = structlog.get_logger("livora.http")


class Problem(msgspec.Struct, omit_defaults=True):
    """RFC 9457 problem details, with Livora's stable ``code`` and the ``request_id``."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = None


def problem_type(code: str) -> str:
    return f"urn:livora:problem:{code}"


def problem_response(
    request: Request[Any, Any, Any],
    *,
    status: int,
    code: str,
    detail: str,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Problem]:
    context = current_request()
    body = Problem(
        type=problem_type(code),
        title=title or HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        code=code,
        instance=request.url.path,
        request_id=context.request_id if context else None,
        errors=errors,
    )
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "quota_exceeded",
}


def _app_error(request: Request[Any, Any, Any], exc: AppError) -> Response[Problem]:
    return problem_response(
        request,
        status=exc.status_code,
        code=exc.code,
        detail=exc.detail,
        title=exc.title,
        errors=exc.errors,
        headers=exc.headers,
    )


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    status = exc.status_code
    if status >= 500:
        return _unexpected(request, exc)
    errors: list[dict[str, Any]] | None = None
    if isinstance(exc.extra, list):
        errors = [e if isinstance(e, dict) else {"message": str(e)} for e in exc.extra]
    elif isinstance(exc.extra, dict) and exc.extra:
        errors = [exc.extra]
    code = "validation_failed" if status == 400 and errors else _HTTP_CODES.get(status, "http_error")
    return problem_response(request, status=status, code=code, detail=exc.detail, errors=errors, headers=exc.headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    log.exception("unhandled_error", error=type(exc).__name__)
    return problem_response(
        request,
        status=500,
        code="internal_error",
        detail="Something went wrong on our side. It was logged; quote the request_id if you contact support.",
    )


EXCEPTION_HANDLERS: dict[type[Exception], Any] = {
    AppError: _app_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}


PROBLEM_DESCRIPTIONS = {
    400: "Invalid request: the body or a parameter is malformed (`errors` lists each problem).",
    401: "No credential, or an unknown, expired or revoked one.",
    403: "The credential may not do this (or the tenant is suspended).",
    404: "No such object, or it belongs to a tenant you cannot see.",
    409: "The object's current state does not allow this.",
    410: "The object has expired.",
    413: "The request or one of its parts is too large.",
    422: "The request is well-formed but cannot be applied (the detail and `code` say why).",
    429: "Too many requests; retry after `Retry-After` seconds.",
    503: "A dependency is down; retry after `Retry-After` seconds.",
}


def declare_problems(app: Litestar, statuses: Callable[[HTTPRouteHandler, str], set[int]]) -> None:
    """Document the problem-details answers of every route (``statuses`` says which), for clients and checks."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if not isinstance(handler, HTTPRouteHandler) or "OPTIONS" in handler.http_methods:
                continue
            responses = dict(handler.responses or {})
            for status in sorted(statuses(handler, route.path)):
                responses.setdefault(
                    status,
                    ResponseSpec(
                        data_container=Problem,
                        media_type=PROBLEM_JSON,
                        description=PROBLEM_DESCRIPTIONS[status],
                        generate_examples=False,
                    ),
                )
            handler.responses = responses


# --- per-request context ------------------------------------------------------------------


@dataclass
class RequestContext:
    """Who is asking, from where; read by services for the audit trail and by logs."""

    request_id: str
    source_ip: str | None = None
    method: str = ""
    path: str = ""
    principal: Any = None
    tenant_id: str | None = None
    # Extra facts a handler wants recorded if the request fails (e.g. the email of a failed sign-in).
    audit_details: dict[str, Any] = field(default_factory=dict)

    def bind(self, **values: Any) -> None:
        for key, value in values.items():
            setattr(self, key, value)
        structlog.contextvars.bind_contextvars(**{k: _log_value(v) for k, v in values.items() if k != "audit_details"})


def _log_value(value: Any) -> Any:
    return getattr(value, "log_label", value)


_request: ContextVar[RequestContext | None] = ContextVar("livora_request", default=None)


def current_request() -> RequestContext | None:
    return _request.get()


def enter_request(context: RequestContext) -> Any:
    """Make ``context`` current (CLI and jobs use this too); returns a token for ``exit_request``."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=context.request_id, tenant_id=context.tenant_id, principal=None)
    return _request.set(context)


def exit_request(token: Any) -> None:
    _request.reset(token)
    structlog.contextvars.clear_contextvars()


def request_context_middleware(app: ASGIApp) -> ASGIApp:
    """Assign a request id, bind it to logs, echo it as ``X-Request-ID`` and log each request."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        client = scope.get("client")
        context = RequestContext(
            request_id=request_id,
            source_ip=client[0] if client else None,
            method=scope.get("method", ""),
            path=scope.get("path", ""),
        )
        token = enter_request(context)
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            log.info(
                "request",
                method=context.method,
                path=context.path,
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            exit_request(token)

    return middleware
