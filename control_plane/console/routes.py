"""Console pages. Thin handlers: they read a form, call the same services as the API, render a template."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import msgspec
from litestar import Controller, Request, Response, Router, get, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect

from billing.render import money
from control_plane.console.render import PREFIX, Link, render, templates
from control_plane.console.security import (
    SECURITY_HEADERS,
    check_csrf,
    cleared_session_cookie,
    session_cookie,
)
from control_plane.http import authorize
from control_plane.identity.principal import Principal
from control_plane.identity.schemas import InviteAccept, LoginRequest, PasswordChange
from control_plane.provisioning.schemas import ProvisionRequest
from control_plane.rbac.authorizer import PLATFORM, tenant_domain
from control_plane.runtime import Services
from control_plane.sso.service import safe_return_to
from control_plane.tenants.schemas import TenantCreate
from kernel.errors import AppError, NotAuthenticated, NotFound, ValidationFailed
from tenant_templates import shipped

STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
PLANS = ("free", "growth", "enterprise")
STATUSES = ("pending", "provisioning", "active", "suspended", "deleting", "deleted", "failed")
UNFINISHED_RUNS = ("queued", "running")
PAGE_SIZE = 25

Form = dict[str, str]


async def read_form(request: Request[Any, Any, Any]) -> Form:
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str) and key != "_csrf"}


def client_ip(request: Request[Any, Any, Any]) -> str | None:
    return request.client.host if request.client else None


def next_path(value: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    target = safe_return_to(value)
    return target if target == PREFIX or target.startswith(PREFIX + "/") else PREFIX


def see_other(request: Request[Any, Any, Any], url: str, **kwargs: Any) -> Response[Any]:
    """After a successful form: a full navigation (htmx requests are told to navigate too)."""
    if request.headers.get("hx-request"):
        return Response("", status_code=204, headers={"HX-Redirect": url}, **kwargs)
    return Redirect(url, status_code=303, **kwargs)


def problem_text(exc: AppError) -> str:
    return exc.detail


def validation_text(exc: msgspec.ValidationError) -> str:
    # msgspec says e.g. "Expected `str` of length >= 1 - at `$.name`"; name the form field instead.
    message = str(exc)
    text, _, where = message.rpartition(" - at `$.")
    return f"{where.rstrip('`')}: {text}" if where else message


# --- errors as pages ---------------------------------------------------------------------------


def _error_page(request: Request[Any, Any, Any], status: int, title: str, detail: str) -> Response[str]:
    html = templates.get_template("error.html").render(
        title=title,
        detail=detail,
        status=status,
        me=None,
        principal=request.scope.get("user"),
        nav=[],
        crumbs=[],
        csrf="",
        theme=request.cookies.get("livora_theme") if request.cookies.get("livora_theme") in ("light", "dark") else None,
        path=request.url.path,
    )
    return Response(html, status_code=status, media_type="text/html", headers=SECURITY_HEADERS)


def console_app_error(request: Request[Any, Any, Any], exc: AppError) -> Response[Any]:
    """Problems become pages: sign-in for 401, and a 404 page for a foreign tenant, as the API answers."""
    if isinstance(exc, NotAuthenticated):
        target = f"{PREFIX}/login?{urlencode({'next': request.url.path})}"
        if request.headers.get("hx-request"):
            return Response("", status_code=401, headers={"HX-Redirect": target})
        return Redirect(target, status_code=303)
    titles = {403: "Not allowed", 404: "Not found", 409: "Conflict", 410: "Gone"}
    return _error_page(request, exc.status_code, titles.get(exc.status_code, "Something is wrong"), exc.detail)


def console_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code if 400 <= exc.status_code < 500 else 500
    detail = exc.detail if status < 500 else "Something went wrong on our side; it was logged."
    return _error_page(request, status, "Something is wrong", detail)


# --- shell -------------------------------------------------------------------------------------


@get("/", operation_id="ConsoleRoot", opt={"public": True}, include_in_schema=False)
async def root() -> Redirect:
    """The site's root is the console."""
    return Redirect(PREFIX, status_code=302)


@get(
    f"{PREFIX}/static/{{name:path}}",
    operation_id="ConsoleStatic",
    opt={"public": True},
    include_in_schema=False,
)
async def static(name: FromPath[str]) -> Response[bytes]:
    """The console's CSS, script and the vendored htmx, from this package (nothing from a CDN)."""
    relative = name.lstrip("/")
    path = (STATIC / relative).resolve()
    kind = STATIC_TYPES.get(path.suffix)
    if kind is None or not path.is_relative_to(STATIC.resolve()) or not path.is_file():
        raise NotFound(f"No console asset {relative}.", code="asset_not_found")
    return Response(
        path.read_bytes(),
        media_type=kind,
        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
    )


@get(f"{PREFIX}/{{rest:path}}", operation_id="ConsoleNotFound", opt={"public": True}, include_in_schema=False)
async def not_found(rest: FromPath[str]) -> None:
    """Any other console address: a page that says so (the API's unknown paths stay problem details)."""
    raise NotFound("There is no such page in the console.", code="page_not_found")


class ShellController(Controller):
    path = PREFIX

    @get("/", operation_id="ConsoleHome", opt={"authenticated": True})
    async def home(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """Start page: staff see the platform at a glance (first tenants, revenue, cells); a member of one
        workspace goes straight to it."""
        principal: Principal = request.scope["user"]
        me = await services.identity.me(principal)
        platform = services.runtime.authorizer.allows(principal, PLATFORM, "tenant", "read")
        if not platform and len(me.memberships) == 1:
            return Redirect(f"{PREFIX}/t/{me.memberships[0].tenant_id}", status_code=303)
        allows = services.runtime.authorizer.allows
        recent = await services.tenants.list(limit=5) if platform else None
        revenue = None
        if allows(principal, PLATFORM, "billing", "read"):
            revenue = await services.billing.revenue(dt.datetime.now(dt.UTC))
        cells = None
        if allows(principal, PLATFORM, "cells", "read"):
            await services.cell_registry.ensure_builtin(services.runtime.settings.builtin_cell_url)
            await services.db.commit()
            cells = (await services.cell_registry.list(limit=PAGE_SIZE)).items
        return await render(
            request,
            services,
            "home.html",
            title="Overview",
            platform=platform,
            may_create=allows(principal, PLATFORM, "tenant", "write"),
            recent=recent.items if recent else [],
            revenue=revenue,
            cells=cells,
            money=money,
        )

    @get("/switch", operation_id="ConsoleSwitchTenant", opt={"authenticated": True})
    async def switch(self, tenant_id: FromQuery[str]) -> Redirect:
        """The tenant switcher's target (the tenant page itself checks access)."""
        return Redirect(f"{PREFIX}/t/{quote(tenant_id, safe='')}", status_code=303)


# --- accounts ----------------------------------------------------------------------------------


class AccountPagesController(Controller):
    """Sign-in, sign-out, invitations and forgotten passwords: the pages before (and around) a session."""

    path = PREFIX

    @get("/login", operation_id="ConsoleLoginPage", opt={"public": True})
    async def login_page(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], next: FromQuery[str | None] = None
    ) -> Response[Any]:
        """Sign in: your work email first; single sign-on when your organisation has it, else your password."""
        if request.scope.get("user") is not None:
            return Redirect(next_path(next), status_code=303)
        return await render(request, None, "login.html", title="Sign in", step="email", email="", next=next_path(next))

    @post("/login", operation_id="ConsoleLogin", opt={"public": True, "audit": "session.created"})
    async def login(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """Email step (discovers SSO) or password step (opens the session and sets its HttpOnly cookie)."""
        form = await read_form(request)
        email, password, target = form.get("email", "").strip(), form.get("password", ""), next_path(form.get("next"))
        page = {"title": "Sign in", "email": email, "next": target}
        if not password:
            if not email:
                return await render(request, None, "login.html", step="email", error="Enter your email.", **page)
            how = await services.sso.discover(email[:320])
            if how.method == "sso" and how.start_url:
                sso_url = f"{how.start_url}&{urlencode({'return_to': target})}"
                return await render(request, None, "login.html", step="sso", sso_url=sso_url, **page)
            return await render(request, None, "login.html", step="password", **page)
        try:
            session = await services.identity.login(
                msgspec.convert({"email": email, "password": password}, LoginRequest),
                source_ip=client_ip(request),
                user_agent=request.headers.get("user-agent"),
            )
        except (AppError, msgspec.ValidationError) as exc:
            status = exc.status_code if isinstance(exc, AppError) else 400
            detail = problem_text(exc) if isinstance(exc, AppError) else "Enter your email and password."
            headers = exc.headers if isinstance(exc, AppError) else None
            return await render(
                request,
                None,
                "login.html",
                step="password",
                error=detail,
                status_code=status,
                headers=headers,
                **page,
            )
        settings = services.runtime.settings
        return see_other(
            request, target, cookies=[session_cookie(settings, session.token, settings.session_ttl_seconds)]
        )

    @post("/logout", operation_id="ConsoleLogout", opt={"authenticated": True, "audit": "session.deleted"})
    async def logout(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """End this session and clear its cookie."""
        principal: Principal = request.scope["user"]
        if principal.kind == "user":
            await services.identity.logout(principal)
        return see_other(
            request, f"{PREFIX}/login?signed_out=1", cookies=[cleared_session_cookie(services.runtime.settings)]
        )

    @get("/forgot", operation_id="ConsoleForgotPasswordPage", opt={"public": True})
    async def forgot_page(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """Ask for a password-reset link by mail."""
        return await render(request, None, "forgot.html", title="Reset your password", sent=False, email="")

    @post("/forgot", operation_id="ConsoleForgotPassword", opt={"public": True, "audit": "password_reset.requested"})
    async def forgot(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """Mail the link if an account has this email; the page says the same either way."""
        form = await read_form(request)
        email = form.get("email", "").strip()[:320]
        if len(email) < 3:
            return await render(
                request,
                None,
                "forgot.html",
                title="Reset your password",
                sent=False,
                email=email,
                error="Enter the email you sign in with.",
                status_code=400,
            )
        await services.identity.request_password_reset(email, source_ip=client_ip(request))
        return await render(request, None, "forgot.html", title="Check your mail", sent=True, email=email)

    @get("/reset", operation_id="ConsoleResetPasswordPage", opt={"public": True})
    async def reset_page(self, request: Request[Any, Any, Any], token: FromQuery[str] = "") -> Response[Any]:
        """Choose a new password with the link from the reset mail."""
        return await render(request, None, "reset.html", title="Choose a new password", token=token[:200], done=False)

    @post("/reset", operation_id="ConsoleResetPassword", opt={"public": True, "audit": "password_reset.completed"})
    async def reset(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """Set the new password; the link stops working and every session of the account ends."""
        form = await read_form(request)
        token, password = form.get("token", "")[:200], form.get("new_password", "")
        page = {"title": "Choose a new password", "token": token}
        try:
            if password != form.get("confirm_password", ""):
                raise ValidationFailed("The two passwords differ.", code="password_mismatch")
            await services.identity.reset_password(token, password)
        except AppError as exc:
            return await render(
                request, None, "reset.html", done=False, error=exc.detail, status_code=exc.status_code, **page
            )
        return await render(
            request,
            None,
            "reset.html",
            done=True,
            cookies=[cleared_session_cookie(services.runtime.settings)],
            **page,
        )

    @get("/invite", operation_id="ConsoleInvitePage", opt={"public": True})
    async def invite_page(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], token: FromQuery[str] = ""
    ) -> Response[Any]:
        """The invitation mail's link: join with a name and a password, continue with single sign-on, or accept
        as the person already signed in."""
        token = token[:200]
        try:
            invite = await services.identity.describe_invite(token)
        except AppError as exc:
            return await render(
                request, None, "invite.html", title="Invitation", invite=None, token="", error=exc.detail
            )
        how = await services.sso.discover(invite.email)
        sso_url = None
        if how.method == "sso" and how.start_url:
            back = f"{PREFIX}/invite?{urlencode({'token': token})}"
            sso_url = f"{how.start_url}&{urlencode({'return_to': back})}"
        return await render(
            request,
            None,
            "invite.html",
            title="Accept your invitation",
            invite=invite,
            token=token,
            sso_url=sso_url,
            signed_in_as=_signed_in_email(request),
        )

    @post("/invite", operation_id="ConsoleAcceptInvite", opt={"public": True, "audit": "invite.accepted"})
    async def accept_invite(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services]
    ) -> Response[Any]:
        """Accept: the account gets its password (new accounts), the membership, and a signed-in session."""
        form = await read_form(request)
        token, password = form.get("token", "")[:200], form.get("password", "")
        try:
            invite = await services.identity.describe_invite(token)
        except AppError as exc:
            return await render(
                request, None, "invite.html", title="Invitation", invite=None, token="", error=exc.detail
            )
        signed_in_as = _signed_in_email(request)
        page = {
            "title": "Accept your invitation",
            "invite": invite,
            "token": token,
            "sso_url": None,
            "signed_in_as": signed_in_as,
        }
        # Signed in as the invited person (say, by single sign-on): accept for that account, nothing to choose.
        principal: Principal | None = request.scope.get("user") if signed_in_as == invite.email else None
        try:
            if principal is None and invite.needs_password and password != form.get("confirm_password", ""):
                raise ValidationFailed("The two passwords differ.", code="password_mismatch")
            fields = {"token": token}
            if principal is None:
                fields |= {"password": password or None, "name": form.get("name", "").strip()[:200] or None}
            accepted = await services.identity.accept_invite(msgspec.convert(fields, InviteAccept), signed_in=principal)
        except (AppError, msgspec.ValidationError) as exc:
            detail = exc.detail if isinstance(exc, AppError) else validation_text(exc)
            status = exc.status_code if isinstance(exc, AppError) else 400
            return await render(request, None, "invite.html", error=detail, status_code=status, **page)
        target = f"{PREFIX}/t/{accepted.tenant_id}" if accepted.tenant_id else PREFIX
        if principal is not None:
            return see_other(request, target)
        if not invite.needs_password:
            # An existing account signs in the way it always does.
            return see_other(request, f"{PREFIX}/login?{urlencode({'next': target, 'joined': 1})}")
        try:
            session = await services.identity.login(
                LoginRequest(email=accepted.user.email, password=password),
                source_ip=client_ip(request),
                user_agent=request.headers.get("user-agent"),
            )
        except AppError:
            return see_other(request, f"{PREFIX}/login?{urlencode({'next': target, 'joined': 1})}")
        settings = services.runtime.settings
        return see_other(
            request, target, cookies=[session_cookie(settings, session.token, settings.session_ttl_seconds)]
        )


def _signed_in_email(request: Request[Any, Any, Any]) -> str | None:
    principal: Principal | None = request.scope.get("user")
    return principal.label if principal is not None and principal.kind == "user" else None


class AccountController(Controller):
    """Your own account: profile, password, sessions."""

    path = f"{PREFIX}/account"

    async def _page(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        *,
        error: str | None = None,
        notice: str | None = None,
        status_code: int = 200,
    ) -> Response[Any]:
        principal: Principal = request.scope["user"]
        sessions = await services.identity.list_sessions(principal) if principal.kind == "user" else []
        return await render(
            request,
            services,
            "account.html",
            title="Your account",
            crumbs=[Link("Overview", PREFIX), Link("Account", f"{PREFIX}/account", True)],
            sessions=sessions,
            error=error,
            notice=notice,
            status_code=status_code,
        )

    @get("/", operation_id="ConsoleAccount", opt={"authenticated": True})
    async def account(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """Who you are, where you belong, your password and your signed-in sessions."""
        return await self._page(request, services)

    @post(
        "/password", operation_id="ConsoleChangePassword", opt={"authenticated": True, "audit": "user.password_changed"}
    )
    async def change_password(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services]
    ) -> Response[Any]:
        """Change your password; your other sessions end, this one stays."""
        form = await read_form(request)
        principal: Principal = request.scope["user"]
        try:
            if form.get("new_password", "") != form.get("confirm_password", ""):
                raise ValidationFailed("The two new passwords differ.", code="password_mismatch")
            change = msgspec.convert(
                {"current_password": form.get("current_password", ""), "new_password": form.get("new_password", "")},
                PasswordChange,
            )
            await services.identity.change_password(principal, change)
        except (AppError, msgspec.ValidationError) as exc:
            detail = exc.detail if isinstance(exc, AppError) else "Fill in your current and your new password."
            status = exc.status_code if isinstance(exc, AppError) else 400
            return await self._page(request, services, error=detail, status_code=status)
        return await self._page(request, services, notice="Your password was changed; your other sessions ended.")

    @post(
        "/sessions/{session_id:str}/revoke",
        operation_id="ConsoleRevokeSession",
        opt={"authenticated": True, "audit": "session.revoked"},
    )
    async def revoke_session(
        self, request: Request[Any, Any, Any], session_id: FromPath[str], services: NamedDependency[Services]
    ) -> Response[Any]:
        """Sign out one of your sessions; revoking this one signs you out here."""
        principal: Principal = request.scope["user"]
        await services.identity.revoke_session(principal, session_id)
        if session_id == principal.session_id:
            return see_other(request, f"{PREFIX}/login", cookies=[cleared_session_cookie(services.runtime.settings)])
        return see_other(request, f"{PREFIX}/account")


# --- ops: tenants ------------------------------------------------------------------------------


def template_previews() -> list[dict[str, Any]]:
    """What each template creates, for the wizard's preview (read from the shipped catalog)."""
    previews = []
    catalog = shipped()
    # New tenants get a template's latest version.
    for template in (catalog.get(name) for name in catalog.names()):
        starter = template.starter
        previews.append(
            {
                "name": template.name,
                "title": template.title,
                "description": template.description,
                "version": template.version,
                "partitions": template.resources.stream_partitions,
                "retention_days": template.resources.lake_retention_days,
                "stores": list(template.resources.stores),
                "events": [e.event for e in starter.tracking_plan],
                "segments": [s.title for s in starter.segments],
                "dashboards": [d.title for d in starter.dashboards],
                "journeys": [j.title for j in starter.journeys],
                "pipelines": [p.title for p in starter.crm_pipelines],
            }
        )
    return sorted(previews, key=lambda p: (p["name"] != "base", p["name"]))


class OpsTenantController(Controller):
    path = f"{PREFIX}/ops/tenants"

    @get("/", operation_id="ConsoleTenants", opt={"permission": ("tenant", "read")})
    async def tenants(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        q: FromQuery[str] = "",
        status: FromQuery[str] = "",
        plan: FromQuery[str] = "",
        cursor: FromQuery[str | None] = None,
    ) -> Response[Any]:
        """Every tenant, searchable by name or slug, filtered by status and plan."""
        q = q.strip()[:200]
        status = status if status in STATUSES else ""
        plan = plan if plan in PLANS else ""
        listed = await services.tenants.list(
            q=q or None, status=status or None, plan=plan or None, cursor=cursor, limit=PAGE_SIZE
        )
        filters = {k: v for k, v in {"q": q, "status": status, "plan": plan}.items() if v}
        principal: Principal = request.scope["user"]
        return await render(
            request,
            services,
            "tenants.html",
            title="Tenants",
            crumbs=[Link("Overview", PREFIX), Link("Tenants", self.path, True)],
            tenants=listed.items,
            next_url=f"{self.path}?{urlencode({**filters, 'cursor': listed.next_cursor})}"
            if listed.next_cursor
            else None,
            q=q,
            status=status,
            plan=plan,
            filtered=bool(filters),
            statuses=STATUSES,
            plans=PLANS,
            may_create=services.runtime.authorizer.allows(principal, PLATFORM, "tenant", "write"),
        )

    @get("/new", operation_id="ConsoleNewTenant", opt={"permission": ("tenant", "write")})
    async def new_tenant(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """The onboarding wizard: name, plan, template (with what it creates), deployment pattern, owner."""
        return await self._wizard(request, services, {})

    async def _wizard(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        form: Form,
        error: str | None = None,
        status_code: int = 200,
    ) -> Response[Any]:
        return await render(
            request,
            services,
            "tenant_new.html",
            title="Onboard a tenant",
            crumbs=[Link("Overview", PREFIX), Link("Tenants", self.path), Link("New tenant", f"{self.path}/new", True)],
            form=form,
            plans=PLANS,
            previews=template_previews(),
            error=error,
            status_code=status_code,
        )

    @post("/", operation_id="ConsoleCreateTenant", opt={"permission": ("tenant", "write"), "audit": "tenant.created"})
    async def create_tenant(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services]
    ) -> Response[Any]:
        """Create the tenant and start provisioning it; the tenant's page then shows the run step by step."""
        form = await read_form(request)
        principal: Principal = request.scope["user"]
        fields = {
            "name": form.get("name", "").strip(),
            "plan": form.get("plan", "free"),
            "template": form.get("template", "base"),
            "deployment_pattern": form.get("deployment_pattern", "B"),
        }
        for optional in ("slug", "region", "owner_email", "role_arn"):
            if form.get(optional, "").strip():
                fields[optional] = form[optional].strip()
        # A Pattern A tenant without its role yet waits, pending, for the client to create it.
        fields["provision"] = fields["deployment_pattern"] == "B" or "role_arn" in fields
        try:
            data = msgspec.convert(fields, TenantCreate)
            tenant = await services.tenants.create(data, principal.id)
            if data.provision:
                params = {"role_arn": data.role_arn} if data.role_arn else None
                await services.provisioning.start(
                    tenant.id, "provision", created_by=principal.id, params=params, wait=False
                )
        except (AppError, msgspec.ValidationError) as exc:
            detail = exc.detail if isinstance(exc, AppError) else validation_text(exc)
            status = exc.status_code if isinstance(exc, AppError) else 400
            return await self._wizard(request, services, form, error=detail, status_code=status)
        return see_other(request, f"{PREFIX}/t/{tenant.id}")


class OpsCellController(Controller):
    path = f"{PREFIX}/ops/cells"

    @get("/", operation_id="ConsoleCells", opt={"permission": ("cells", "read")})
    async def cells(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], cursor: FromQuery[str | None] = None
    ) -> Response[Any]:
        """Every data-plane cell: pattern, region, health from its heartbeats, tenants placed against capacity."""
        await services.cell_registry.ensure_builtin(services.runtime.settings.builtin_cell_url)
        await services.db.commit()
        listed = await services.cell_registry.list(cursor=cursor, limit=PAGE_SIZE)
        return await render(
            request,
            services,
            "cells.html",
            title="Cells",
            crumbs=[Link("Overview", PREFIX), Link("Cells", self.path, True)],
            cells=listed.items,
            next_url=f"{self.path}?{urlencode({'cursor': listed.next_cursor})}" if listed.next_cursor else None,
        )


class TenantPageController(Controller):
    path = f"{PREFIX}/t/{{tenant_id:str}}"

    async def _page(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        tenant_id: str,
        error: str | None = None,
        status_code: int = 200,
    ) -> Response[Any]:
        services.db.expire_all()
        tenant = await services.tenants.get(tenant_id)
        principal: Principal = request.scope["user"]
        allows = services.runtime.authorizer.allows
        domain, role = tenant_domain(tenant_id), request.state.get("tenant_role")
        ops = allows(principal, domain, "provisioning", "read", role)
        runs = (await services.provisioning.list_runs(tenant_id=tenant_id, limit=5)).items if ops else []
        trust = None
        if tenant.deployment_pattern == "A" and allows(principal, domain, "trust_policy", "read", role):
            trust = await services.provisioning.trust_policy(tenant_id)
        crumbs = [Link("Overview", PREFIX)]
        if allows(principal, PLATFORM, "tenant", "read"):
            crumbs.append(Link("Tenants", f"{PREFIX}/ops/tenants"))
        crumbs.append(Link(tenant.name, f"{PREFIX}/t/{tenant_id}", True))
        return await render(
            request,
            services,
            "tenant.html",
            title=tenant.name,
            crumbs=crumbs,
            tenant=tenant,
            tenant_id=tenant_id,
            runs=runs,
            run=runs[0] if runs else None,
            trust=trust,
            may_manage=allows(principal, domain, "tenant", "write", role),
            may_run=allows(principal, domain, "provisioning", "write", role),
            error=error,
            status_code=status_code,
            unfinished=UNFINISHED_RUNS,
        )

    @get("/", operation_id="ConsoleTenant", opt={"permission": ("tenant", "read")})
    async def tenant(
        self, request: Request[Any, Any, Any], tenant_id: FromPath[str], services: NamedDependency[Services]
    ) -> Response[Any]:
        """A tenant: its state, plan and placement; for ops its provisioning runs and lifecycle actions."""
        return await self._page(request, services, tenant_id)

    @get("/runs/{run_id:str}", operation_id="ConsoleRunProgress", opt={"permission": ("provisioning", "read")})
    async def run_progress(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        run_id: FromPath[str],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        """A run's steps (htmx polls this while it runs; once it ends the page reloads with the new state)."""
        run = await services.provisioning.get_run(run_id)
        if run.tenant_id != tenant_id:
            raise NotFound(f"No provisioning run {run_id}.", code="run_not_found")
        finished = run.status not in UNFINISHED_RUNS
        return await render(
            request,
            services,
            "_run_body.html",
            title="Provisioning",
            run=run,
            tenant_id=tenant_id,
            unfinished=UNFINISHED_RUNS,
            headers={"HX-Refresh": "true"} if finished and request.query_params.get("poll") else None,
        )

    async def _lifecycle(
        self, request: Request[Any, Any, Any], services: Services, tenant_id: str, operation: str
    ) -> Response[Any]:
        form = await read_form(request)
        tenant = await services.tenants.get(tenant_id)
        if form.get("confirm", "").strip() != tenant.slug:
            return await self._page(
                request,
                services,
                tenant_id,
                error=f"Type the tenant's slug, {tenant.slug}, to confirm.",
                status_code=422,
            )
        principal: Principal = request.scope["user"]
        reason = form.get("reason", "").strip()[:500]
        try:
            await services.provisioning.start(
                tenant_id,
                operation,
                created_by=principal.id,
                params={"reason": reason} if reason else None,
                wait=False,
            )
        except AppError as exc:
            return await self._page(request, services, tenant_id, error=exc.detail, status_code=exc.status_code)
        return see_other(request, f"{PREFIX}/t/{tenant_id}")

    @post(
        "/suspend",
        operation_id="ConsoleSuspendTenant",
        opt={"permission": ("tenant", "write"), "audit": "tenant.suspended"},
    )
    async def suspend(
        self, request: Request[Any, Any, Any], tenant_id: FromPath[str], services: NamedDependency[Services]
    ) -> Response[Any]:
        """Suspend an active tenant (typed confirmation): its people and keys are refused until reactivated."""
        return await self._lifecycle(request, services, tenant_id, "suspend")

    @post(
        "/provision",
        operation_id="ConsoleProvisionTenant",
        opt={"permission": ("tenant", "write"), "audit": "tenant.provisioned"},
    )
    async def provision(
        self, request: Request[Any, Any, Any], tenant_id: FromPath[str], services: NamedDependency[Services]
    ) -> Response[Any]:
        """Provision a pending (or failed) tenant; Pattern A with the role ARN its client created."""
        form = await read_form(request)
        principal: Principal = request.scope["user"]
        role_arn = form.get("role_arn", "").strip()
        try:
            data = msgspec.convert({"role_arn": role_arn} if role_arn else {}, ProvisionRequest)
            params = {"role_arn": data.role_arn} if data.role_arn else None
            await services.provisioning.start(
                tenant_id, "provision", created_by=principal.id, params=params, wait=False
            )
        except (AppError, msgspec.ValidationError) as exc:
            detail = (
                exc.detail
                if isinstance(exc, AppError)
                else ("The role ARN looks like arn:aws:iam::<12-digit account>:role/<name>.")
            )
            status = exc.status_code if isinstance(exc, AppError) else 400
            return await self._page(request, services, tenant_id, error=detail, status_code=status)
        return see_other(request, f"{PREFIX}/t/{tenant_id}")

    @post(
        "/reactivate",
        operation_id="ConsoleReactivateTenant",
        opt={"permission": ("tenant", "write"), "audit": "tenant.reactivated"},
    )
    async def reactivate(
        self, request: Request[Any, Any, Any], tenant_id: FromPath[str], services: NamedDependency[Services]
    ) -> Response[Any]:
        """Reactivate a suspended tenant (typed confirmation)."""
        return await self._lifecycle(request, services, tenant_id, "resume")

    @post(
        "/delete",
        operation_id="ConsoleDeleteTenant",
        opt={"permission": ("tenant", "write"), "audit": "tenant.deleted"},
    )
    async def delete(
        self, request: Request[Any, Any, Any], tenant_id: FromPath[str], services: NamedDependency[Services]
    ) -> Response[Any]:
        """Delete a suspended (or never provisioned) tenant: its data is archived, then its space removed."""
        return await self._lifecycle(request, services, tenant_id, "deprovision")

    @post(
        "/runs/{run_id:str}/retry",
        operation_id="ConsoleRetryRun",
        opt={"permission": ("provisioning", "write"), "audit": "provisioning.retried"},
    )
    async def retry(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        run_id: FromPath[str],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        """Go on with a failed run from its failed step."""
        run = await services.provisioning.get_run(run_id)
        if run.tenant_id != tenant_id:
            raise NotFound(f"No provisioning run {run_id}.", code="run_not_found")
        try:
            await services.provisioning.retry(run_id, wait=False)
        except AppError as exc:
            return await self._page(request, services, tenant_id, error=exc.detail, status_code=exc.status_code)
        return see_other(request, f"{PREFIX}/t/{tenant_id}")

    @post(
        "/runs/{run_id:str}/rollback",
        operation_id="ConsoleRollBackRun",
        opt={"permission": ("provisioning", "write"), "audit": "provisioning.rollback_started"},
    )
    async def rollback(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        run_id: FromPath[str],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        """Undo what a failed run created, step by step in reverse."""
        run = await services.provisioning.get_run(run_id)
        if run.tenant_id != tenant_id:
            raise NotFound(f"No provisioning run {run_id}.", code="run_not_found")
        principal: Principal = request.scope["user"]
        try:
            await services.provisioning.rollback(run_id, created_by=principal.id, wait=False)
        except AppError as exc:
            return await self._page(request, services, tenant_id, error=exc.detail, status_code=exc.status_code)
        return see_other(request, f"{PREFIX}/t/{tenant_id}")


def console_router() -> Router:
    """The console, behind the same guard (casbin policy, tenant 404s) as the API, plus CSRF on every form."""
    # Imported here: the workspace admin pages build on this module's helpers.
    from control_plane.console.admin import WorkspaceAdminController
    from control_plane.console.finance import FinanceController, WorkspaceBillingController

    return Router(
        path="/",
        route_handlers=[
            root,
            static,
            not_found,
            ShellController,
            AccountPagesController,
            AccountController,
            OpsTenantController,
            OpsCellController,
            TenantPageController,
            WorkspaceAdminController,
            FinanceController,
            WorkspaceBillingController,
        ],
        guards=[authorize],
        before_request=check_csrf,
        exception_handlers={AppError: console_app_error, HTTPException: console_http_error},
        include_in_schema=False,
    )
