"""The control plane's HTTP edge: who is calling, which tenant, may they, and the audit of failures."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import nullcontext
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.audit.service import build_entry
from control_plane.cells.service import BUILTIN_CELL_ID
from control_plane.identity.principal import Principal
from control_plane.identity.secrets import token_hash
from control_plane.rbac.authorizer import PLATFORM, tenant_domain
from control_plane.runtime import Runtime, Services
from kernel.errors import AppError, NotAuthenticated, NotFound, PermissionDenied
from kernel.http import current_request
from kernel.logging import get_logger
from kernel.tenancy import dangerously_unscoped, tenant_scope

SESSION_COOKIE = "livora_session"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

log = get_logger("livora.control_plane")


class UnsupportedMediaType(AppError):
    status_code = 415
    title = "Unsupported media type"
    default_code = "unsupported_media_type"


def _credential(scope: Scope) -> str | None:
    authorization = ""
    cookie = ""
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"cookie":
            cookie = value.decode("latin-1")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for part in cookie.split(";"):
        name, _, value = part.strip().partition("=")
        if name == SESSION_COOKIE and value:
            return value
    return None


def _header(scope: Scope, wanted: bytes) -> str:
    for name, value in scope.get("headers") or ():
        if name == wanted:
            return value.decode("latin-1")
    return ""


def _cross_site_capable_body(scope: Scope) -> bool:
    """A cookie-authenticated API write whose body is not declared JSON.

    A page of another site can make a browser send the session cookie with a ``text/plain`` (or form)
    body without a CORS preflight; only ``application/json`` needs one. The API refuses those bodies,
    so the cookie alone never authorises a cross-site write (the console's forms carry a CSRF token).
    """
    if scope.get("method") not in MUTATING or not scope.get("path", "").startswith("/api/"):
        return False
    if _header(scope, b"authorization").partition(" ")[0].lower() == "bearer":
        return False
    length = _header(scope, b"content-length").strip()
    if (length in ("", "0")) and not _header(scope, b"transfer-encoding"):
        return False
    media_type = _header(scope, b"content-type").partition(";")[0].strip().lower()
    return not (media_type == "application/json" or media_type.endswith("+json"))


def edge_middleware(app: ASGIApp) -> ASGIApp:
    """Resolve the principal, enter the URL's tenant scope, and audit failed mutations."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        runtime: Runtime = scope["litestar_app"].state.runtime
        context = current_request()
        token = _credential(scope)
        principal: Principal | None = None
        if token:
            async with runtime.services() as services:
                if token.startswith("lvk_"):
                    principal = await services.api_keys.authenticate(token)
                else:
                    principal = await services.identity.authenticate_session(token)
        if principal is not None and _cross_site_capable_body(scope):
            raise UnsupportedMediaType(
                "Send the body as application/json (with the session cookie, other media types are refused).",
                code="unsupported_media_type",
            )
        scope["user"] = principal
        scope["auth"] = {"credential_given": token is not None, "api_key": bool(token and token.startswith("lvk_"))}
        tenant_id = scope.get("path_params", {}).get("tenant_id")
        if context is not None:
            context.bind(principal=principal, tenant_id=tenant_id)
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with tenant_scope(tenant_id) if tenant_id else nullcontext():
            try:
                await app(scope, receive, send_wrapper)
            finally:
                if scope.get("method") in MUTATING and status >= 400:
                    await _audit_failure(runtime, scope, tenant_id, status)

    return middleware


async def _audit_failure(runtime: Runtime, scope: Scope, tenant_id: str | None, status: int) -> None:
    handler = scope.get("route_handler")
    action = handler.opt.get("audit") if handler is not None else None
    if not action:
        return
    context = current_request()
    details: dict[str, Any] = dict(context.audit_details) if context else {}
    target_id = next((v for k, v in scope.get("path_params", {}).items() if k != "tenant_id"), None)
    if tenant_id is not None and status in (401, 404):
        # The caller was not shown this tenant: keep the attempt out of the tenant's own trail
        # (strangers must not write into it) and in the platform's, where staff see it.
        details["tenant_id"] = tenant_id
        tenant_id = None
    entry = build_entry(
        action,
        tenant_id=tenant_id,
        target_id=str(target_id) if target_id is not None else None,
        outcome="denied" if status in (401, 403) else "failure",
        status_code=status,
        details=details,
    )
    try:
        async with runtime.sessionmaker() as session:
            with dangerously_unscoped():
                session.add(entry)
                await session.commit()
    except Exception:  # an audit write must never turn a 4xx into a 500
        log.exception("audit_failure_not_recorded", action=action, status=status)


async def authorize(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The one guard on every route: reads the route's ``opt`` and enforces the casbin policy.

    ``opt`` declares exactly one of ``public=True``, ``authenticated=True``,
    ``permission=(object, action)`` or ``cell=True`` (the cell contract's credential).
    On tenant routes a tenant the caller cannot see answers 404, the same as a missing one.
    """
    opt = handler.opt
    if opt.get("public") or (not opt and getattr(handler, "http_methods", None) == {"OPTIONS"}):
        # Litestar's automatic OPTIONS handler only lists the allowed methods.
        return
    if opt.get("cell"):
        await _authenticate_cell(connection)
        return
    principal: Principal | None = connection.scope.get("user")
    if principal is None:
        auth = connection.scope.get("auth") or {}
        if auth.get("api_key"):
            raise NotAuthenticated("The API key is unknown, revoked or expired.", code="invalid_api_key")
        if auth.get("credential_given"):
            raise NotAuthenticated("The session has expired or ended; sign in again.", code="invalid_session")
        raise NotAuthenticated(
            "Sign in first: send `Authorization: Bearer <token>` or the session cookie.", code="not_authenticated"
        )
    if opt.get("authenticated"):
        return
    if "permission" not in opt:
        raise RuntimeError(f"route {handler} declares no access rule")
    obj, act = opt["permission"]
    runtime: Runtime = connection.app.state.runtime
    tenant_id = connection.path_params.get("tenant_id")
    if tenant_id is None:
        if not runtime.authorizer.allows(principal, PLATFORM, obj, act):
            raise PermissionDenied(f"Your role does not allow {act} on {obj}.", code="permission_denied")
        return
    async with runtime.services() as services:
        tenant = await services.tenants.find(tenant_id)
        role = await services.members.role_of(tenant_id, principal.id) if principal.kind == "user" else None
    platform = principal.kind == "user" and principal.platform_role is not None
    belongs = role is not None or (principal.kind == "api_key" and principal.tenant_id == tenant_id)
    if tenant is None or not (platform or (belongs and tenant.status != "deleted")):
        raise NotFound(f"No tenant {tenant_id}.", code="tenant_not_found")
    if not platform and tenant.status in ("suspended", "deleting"):
        raise PermissionDenied("This tenant is suspended; contact Livora support.", code="tenant_suspended")
    if not runtime.authorizer.allows(principal, tenant_domain(tenant_id), obj, act, role):
        raise PermissionDenied(f"Your role does not allow {act} on {obj} in this tenant.", code="permission_denied")
    connection.state.tenant_role = role


async def _authenticate_cell(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """Cells present the installation's cell secret (the built-in cell) or their own registered credential.

    People and API keys are not cells. The cell's id goes to ``scope["cell_id"]``.
    """
    runtime: Runtime = connection.app.state.runtime
    secret = runtime.settings.cell_secret
    given = _credential(connection.scope) or ""
    if secret and hmac.compare_digest(token_hash(given), token_hash(secret)):
        connection.scope["cell_id"] = BUILTIN_CELL_ID  # type: ignore[typeddict-unknown-key]
        return
    if given:
        async with runtime.services() as services:
            cell = await services.cell_registry.authenticate(given)
        if cell is not None:
            connection.scope["cell_id"] = cell.id  # type: ignore[typeddict-unknown-key]
            return
    raise NotAuthenticated(
        "This endpoint is for data-plane cells and their credential.", code="invalid_cell_credential"
    )


def may(connection: ASGIConnection[Any, Any, Any, Any], obj: str, act: str) -> bool:
    """A second permission check inside a handler (e.g. owner-only changes)."""
    runtime: Runtime = connection.app.state.runtime
    principal: Principal = connection.scope["user"]
    tenant_id = connection.path_params.get("tenant_id")
    domain = tenant_domain(tenant_id) if tenant_id else PLATFORM
    return runtime.authorizer.allows(principal, domain, obj, act, connection.state.get("tenant_role"))


async def provide_services(state: State) -> AsyncIterator[Services]:
    runtime: Runtime = state.runtime
    async with runtime.services() as services:
        yield services


async def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    principal: Principal | None = request.scope.get("user")
    if principal is None:  # routes that use it are guarded; this is defence in depth
        raise NotAuthenticated("Sign in first.", code="not_authenticated")
    return principal
