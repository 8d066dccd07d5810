"""SSO endpoints: a tenant's connections (owners and admins), the browser sign-in flow, the sign-in page."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import Redirect

from control_plane.http import SESSION_COOKIE, may
from control_plane.identity.principal import Principal
from control_plane.runtime import Services
from control_plane.sso import schemas
from control_plane.sso.service import session_cookie_max_age
from control_plane.tenants.routes import Limit
from kernel.pagination import DEFAULT_LIMIT

# Binds a started sign-in to the browser that started it (the callback must come back with it).
BINDING_COOKIE = "livora_sso"
BINDING_PATH = "/api/v1/sso"

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


class SsoConnectionController(Controller):
    path = "/api/v1/tenants/{tenant_id:str}/sso/connections"
    tags = ["Single sign-on"]

    @post(
        "/",
        operation_id="CreateSsoConnection",
        opt={"permission": ("sso", "write"), "audit": "sso_connection.created"},
    )
    async def create_connection(
        self,
        tenant_id: FromPath[str],
        data: JSONBody[schemas.SsoConnectionCreate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        request: Request[Any, Any, Any],
    ) -> schemas.SsoConnection:
        """Connect an OpenID Connect provider. Register the answer's `redirect_uri` at the provider.

        The client secret is stored encrypted and never returned. Each email domain belongs to one
        connection in the whole installation (409 `sso_domain_taken`). Only owners may map a claim
        (or the default) to the owner role (403 `owner_required`). Nothing is fetched here: use
        TestSsoConnection to check the provider.
        """
        return await services.sso.create(tenant_id, data, principal.id, may_grant_owner=may(request, "owners", "write"))

    @get("/", operation_id="ListSsoConnections", opt={"permission": ("sso", "read")})
    async def list_connections(
        self,
        tenant_id: FromPath[str],
        services: NamedDependency[Services],
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> schemas.SsoConnectionPage:
        """The tenant's SSO connections, oldest first (client secrets are never shown)."""
        return await services.sso.list(tenant_id, cursor=cursor, limit=limit)

    @get("/{connection_id:str}", operation_id="GetSsoConnection", opt={"permission": ("sso", "read")})
    async def get_connection(
        self, tenant_id: FromPath[str], connection_id: FromPath[str], services: NamedDependency[Services]
    ) -> schemas.SsoConnection:
        """One SSO connection."""
        return await services.sso.get(tenant_id, connection_id)

    @patch(
        "/{connection_id:str}",
        operation_id="UpdateSsoConnection",
        opt={"permission": ("sso", "write"), "audit": "sso_connection.updated"},
    )
    async def update_connection(
        self,
        tenant_id: FromPath[str],
        connection_id: FromPath[str],
        data: JSONBody[schemas.SsoConnectionUpdate],
        services: NamedDependency[Services],
        request: Request[Any, Any, Any],
    ) -> schemas.SsoConnection:
        """Change a connection; give `client_secret` to replace the stored one. Disabling it ends the
        sessions it opened."""
        return await services.sso.update(
            tenant_id, connection_id, data, may_grant_owner=may(request, "owners", "write")
        )

    @delete(
        "/{connection_id:str}",
        operation_id="DeleteSsoConnection",
        status_code=204,
        opt={"permission": ("sso", "write"), "audit": "sso_connection.deleted"},
    )
    async def delete_connection(
        self, tenant_id: FromPath[str], connection_id: FromPath[str], services: NamedDependency[Services]
    ) -> None:
        """Remove a connection and end the sessions it opened. Users it created keep their accounts."""
        await services.sso.delete(tenant_id, connection_id)

    @post(
        "/{connection_id:str}/test",
        operation_id="TestSsoConnection",
        status_code=200,
        opt={"permission": ("sso", "write"), "audit": "sso_connection.tested"},
    )
    async def test_connection(
        self, tenant_id: FromPath[str], connection_id: FromPath[str], services: NamedDependency[Services]
    ) -> schemas.SsoConnectionTest:
        """Fetch the provider's discovery document and signing keys now and report what was found.

        Always answers 200: `ok` false with `error_code` and `detail` says what failed.
        """
        return await services.sso.test(tenant_id, connection_id)


class SsoSignInController(Controller):
    path = "/api/v1/sso"
    tags = ["Single sign-on"]

    @get("/discover", operation_id="DiscoverSso", opt={"public": True})
    async def discover(self, services: NamedDependency[Services], email: FromQuery[str]) -> schemas.SsoDiscovery:
        """How this email signs in: `sso` (open `start_url` in the browser) or `password`."""
        return await services.sso.discover(email[:320])

    # The two browser redirects below are navigations, not API calls: left out of the OpenAPI document.

    @get("/start", operation_id="StartSsoSignIn", opt={"public": True}, include_in_schema=False)
    async def start(
        self,
        services: NamedDependency[Services],
        request: Request[Any, Any, Any],
        email: FromQuery[str | None] = None,
        connection_id: FromQuery[str | None] = None,
        return_to: FromQuery[str | None] = None,
    ) -> Redirect:
        """Redirect the browser to its organisation's identity provider (chosen by the email's domain, or
        `connection_id`), with PKCE, `state` and `nonce`; `return_to` is a path on this site for afterwards."""
        binding = request.cookies.get(BINDING_COOKIE) or ""
        if not (20 <= len(binding) <= 100):
            binding = secrets.token_urlsafe(32)
        url = await services.sso.start(
            email=(email or "")[:320] or None, connection_id=connection_id, return_to=return_to, binding=binding
        )
        settings = services.runtime.settings
        cookie = Cookie(
            key=BINDING_COOKIE,
            value=binding,
            httponly=True,
            secure=settings.cookie_secure,
            samesite="lax",
            path=BINDING_PATH,
            max_age=settings.sso_login_ttl_seconds,
        )
        return Redirect(url, status_code=302, cookies=[cookie])

    @get("/callback", operation_id="FinishSsoSignIn", opt={"public": True}, include_in_schema=False)
    async def callback(
        self,
        services: NamedDependency[Services],
        request: Request[Any, Any, Any],
        # `state` is a name Litestar reserves for the app state, hence the alias.
        oidc_state: Annotated[str | None, QueryParameter(name="state")] = None,
        code: FromQuery[str | None] = None,
        error: FromQuery[str | None] = None,
    ) -> Redirect:
        """Where the identity provider sends the browser back. Checks the sign-in, opens a session (the same
        HttpOnly cookie as a password sign-in) and redirects to `return_to`. Refusals are problem details."""
        signed_in = await services.sso.finish(
            state=oidc_state,
            code=code,
            error=error,
            binding=request.cookies.get(BINDING_COOKIE),
            source_ip=request.client.host if request.client else None,
            user_agent=request.headers.get("user-agent"),
        )
        settings = services.runtime.settings
        cookies = [
            Cookie(
                key=SESSION_COOKIE,
                value=signed_in.session.token,
                httponly=True,
                secure=settings.cookie_secure,
                samesite="lax",
                path="/",
                max_age=session_cookie_max_age(signed_in.session.expires_at),
            ),
            Cookie(key=BINDING_COOKIE, value="", max_age=0, path=BINDING_PATH, httponly=True),
        ]
        return Redirect(signed_in.return_to, status_code=302, cookies=cookies)


class SignInPageController(Controller):
    path = "/login"

    @get("/", operation_id="SignInPage", opt={"public": True}, include_in_schema=False, media_type="text/html")
    async def page(self, services: NamedDependency[Services], request: Request[Any, Any, Any]) -> Response[str]:
        """The sign-in page: type your email, continue with your organisation's provider or your password."""
        principal: Principal | None = request.scope.get("user")
        me = await services.identity.me(principal) if principal is not None and principal.kind == "user" else None
        nonce = secrets.token_urlsafe(16)
        html = _templates.get_template("login.html").render(me=me, nonce=nonce)
        return Response(
            html,
            media_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": f"default-src 'none'; script-src 'nonce-{nonce}'; "
                "style-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'",
                "X-Frame-Options": "DENY",
                "Referrer-Policy": "no-referrer",
            },
        )
