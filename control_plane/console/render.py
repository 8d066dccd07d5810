"""Rendering a console page: the shell's context (who, where, navigation by role) around a template."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from litestar import Request, Response
from litestar.datastructures import Cookie

from control_plane.console.security import SECURITY_HEADERS, THEME_COOKIE, page_csrf
from control_plane.identity import schemas as identity_schemas
from control_plane.identity.principal import Principal
from control_plane.rbac.authorizer import PLATFORM, tenant_domain
from control_plane.runtime import Services

HERE = Path(__file__).parent
PREFIX = "/console"

templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class Link:
    label: str
    href: str
    current: bool = False


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


templates.filters["when"] = _when


WORKSPACE_ADMIN_PAGES = (
    ("Members", "members", "invites", "read"),
    ("API keys", "api-keys", "api_keys", "read"),
    ("Sources", "sources", "sources", "write"),
    ("Single sign-on", "sso", "sso", "read"),
    ("Audit log", "audit", "audit", "read"),
)


def navigation(
    services: Services, principal: Principal | None, path: str, tenant_id: str | None, tenant_role: str | None
) -> list[Link]:
    """The menu, by what the casbin policy lets this person do (the same check the routes make)."""
    if principal is None:
        return []
    allows = services.runtime.authorizer.allows
    items: list[tuple[str, str]] = [("Overview", PREFIX)]
    if allows(principal, PLATFORM, "tenant", "read"):
        items.append(("Tenants", f"{PREFIX}/ops/tenants"))
    if allows(principal, PLATFORM, "tenant", "write"):
        items.append(("New tenant", f"{PREFIX}/ops/tenants/new"))
    if allows(principal, PLATFORM, "cells", "read"):
        items.append(("Cells", f"{PREFIX}/ops/cells"))
    if allows(principal, PLATFORM, "billing", "read"):
        items.append(("Finance", f"{PREFIX}/finance"))
    if tenant_id and allows(principal, tenant_domain(tenant_id), "tenant", "read", tenant_role):
        items.append(("Workspace", f"{PREFIX}/t/{tenant_id}"))
        # The workspace admin pages, each shown by the same permission its route requires (console/admin.py).
        for label, page, obj, act in WORKSPACE_ADMIN_PAGES:
            if allows(principal, tenant_domain(tenant_id), obj, act, tenant_role):
                items.append((label, f"{PREFIX}/t/{tenant_id}/{page}"))
        if allows(principal, tenant_domain(tenant_id), "invoices", "read", tenant_role):
            items.append(("Billing", f"{PREFIX}/t/{tenant_id}/billing"))
    items.append(("Account", f"{PREFIX}/account"))
    # The deepest matching entry is the current one (New tenant, not Tenants, on the wizard).
    matches = [href for _, href in items if path == href or (href != PREFIX and path.startswith(href + "/"))]
    current = max(matches, key=len) if matches else (PREFIX if path == PREFIX else None)
    return [Link(label, href, href == current) for label, href in items]


async def render(
    request: Request[Any, Any, Any],
    services: Services | None,
    template: str,
    *,
    title: str,
    crumbs: list[Link] | None = None,
    status_code: int = 200,
    cookies: list[Cookie] | None = None,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Response[str]:
    """A full page (or, for ``_``-named templates, an htmx fragment) with the console's security headers."""
    principal: Principal | None = request.scope.get("user")
    me: identity_schemas.Me | None = None
    if services is not None and principal is not None and principal.kind == "user":
        me = await services.identity.me(principal)
    tenant_id = request.path_params.get("tenant_id")
    tenant_role = request.state.get("tenant_role")
    csrf, csrf_cookie = page_csrf(request)
    theme = request.cookies.get(THEME_COOKIE)
    html = templates.get_template(template).render(
        title=title,
        me=me,
        principal=principal,
        nav=navigation(services, principal, request.url.path, tenant_id, tenant_role) if services else [],
        crumbs=crumbs or [],
        csrf=csrf,
        theme=theme if theme in ("light", "dark") else None,
        path=request.url.path,
        **context,
    )
    return Response(
        html,
        status_code=status_code,
        media_type="text/html",
        headers={**SECURITY_HEADERS, **(headers or {})},
        cookies=[*(cookies or []), *([csrf_cookie] if csrf_cookie else [])],
    )
