"""Client admin pages of a workspace: members and invitations, API keys, sources, single sign-on, audit log.

Thin handlers, as in ``routes.py``: each reads a form, calls the service the API calls, renders a
template. Each route carries the API route's own access rule, so casbin decides here as there.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from urllib.parse import urlencode

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

from control_plane.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyRotate
from control_plane.cells.service import BUILTIN_CELL_ID
from control_plane.console.render import PREFIX, Link, render
from control_plane.console.routes import PAGE_SIZE, read_form, validation_text
from control_plane.http import may
from control_plane.identity.principal import Principal
from control_plane.identity.schemas import InviteCreate
from control_plane.memberships.schemas import MemberUpdate
from control_plane.rbac.authorizer import PLATFORM
from control_plane.rbac.roles import API_KEY_SCOPES, TENANT_ROLES
from control_plane.runtime import Services
from control_plane.sources.schemas import SourceCreate, SourceCreated, SourceUpdate, WriteKeyRotate
from control_plane.sso.schemas import SsoConnectionCreate, SsoConnectionTest, SsoConnectionUpdate
from kernel.errors import AppError, NotFound, PermissionDenied

# Members and sources per page (a workspace has tens, not thousands).
LIST_SIZE = 100
OUTCOMES = ("success", "denied", "failure")
SOURCE_KINDS = ("web", "server", "mobile")
# Grace periods offered when rotating a key (the service refuses more than the installation allows).
ORIGIN_HELP = "Each origin is a scheme, a host and an optional port, such as https://shop.example.com."
GRACE_PERIODS = ((0, "at once"), (3600, "in 1 hour"), (86400, "in 24 hours"), (604800, "in 7 days"))


# What a field's pattern allows, in words (a regex means nothing to most people).
PATTERN_WORDS = {
    "issuer": "an http or https address such as https://login.example.com",
    "allowed_domains": "lower-case email domains such as example.com",
    "client_id": "printable characters without spaces",
    "role_claim": "letters, digits and _ : / . -",
    "allowed_origins": "origins such as https://shop.example.com",
}


def failure(exc: AppError | msgspec.ValidationError) -> tuple[str, int]:
    """What to tell the person, and the status the API would answer."""
    if isinstance(exc, AppError):
        return exc.detail, exc.status_code
    detail = validation_text(exc)
    field = detail.partition(":")[0].partition("[")[0]
    if "matching regex" in detail:
        detail = f"{field}: expected {PATTERN_WORDS.get(field, 'a value in the form the hint shows')}."
    return detail, 400


def lines(text: str) -> list[str]:
    """A textarea or field of several values: one per line, or separated by commas or spaces."""
    return [part for part in re.split(r"[\s,]+", text) if part]


def day_start(value: str) -> dt.datetime | None:
    """A date field (YYYY-MM-DD) as the start of that day in UTC; anything else is no value."""
    try:
        return dt.datetime.combine(dt.date.fromisoformat(value.strip()), dt.time(), dt.UTC)
    except ValueError:
        return None


def next_page(path: str, cursor: str | None) -> str | None:
    return f"{path}?{urlencode({'cursor': cursor})}" if cursor else None


async def ingest_url(services: Services, tenant_id: str) -> str:
    """The cell SDKs send this tenant's events to: its registered cell's endpoint, else the built-in cell."""
    try:
        placement = await services.provisioning.placement(tenant_id)
    except NotFound:
        placement = None
    if placement is not None and placement.cell_id and placement.cell_id != BUILTIN_CELL_ID:
        cell = await services.cell_registry.get(placement.cell_id)
        if cell.endpoint:
            return cell.endpoint.rstrip("/")
    return services.runtime.settings.builtin_cell_ingest_url.rstrip("/")


class WorkspaceAdminController(Controller):
    """A tenant owner's or admin's pages (staff see them too, as the API lets them)."""

    path = f"{PREFIX}/t/{{tenant_id:str}}"

    async def _page(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        tenant_id: str,
        template: str,
        title: str,
        *,
        status_code: int = 200,
        **context: Any,
    ) -> Response[Any]:
        tenant = await services.tenants.get(tenant_id)
        principal: Principal = request.scope["user"]
        crumbs = [Link("Overview", PREFIX)]
        if services.runtime.authorizer.allows(principal, PLATFORM, "tenant", "read"):
            crumbs.append(Link("Tenants", f"{PREFIX}/ops/tenants"))
        crumbs.append(Link(tenant.name, f"{PREFIX}/t/{tenant_id}"))
        crumbs.append(Link(title, request.url.path, True))
        context.setdefault("error", None)
        context.setdefault("notice", None)
        return await render(
            request,
            services,
            template,
            title=f"{title} · {tenant.name}",
            heading=title,
            crumbs=crumbs,
            tenant=tenant,
            tenant_id=tenant_id,
            status_code=status_code,
            **context,
        )

    # --- members and invitations -------------------------------------------------------------

    async def _members(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        tenant_id: str,
        *,
        cursor: str | None = None,
        **context: Any,
    ) -> Response[Any]:
        members = await services.members.list(tenant_id, cursor=cursor, limit=LIST_SIZE)
        invites = await services.identity.list_invites(tenant_id, limit=50)
        owners = may(request, "owners", "write")
        return await self._page(
            request,
            services,
            tenant_id,
            "admin/members.html",
            "Members",
            members=members.items,
            next_url=next_page(f"{PREFIX}/t/{tenant_id}/members", members.next_cursor),
            invites=invites.items,
            roles=[r for r in TENANT_ROLES if owners or r != "owner"],
            may_manage_owners=owners,
            may_write=may(request, "members", "write"),
            may_invite=may(request, "invites", "write"),
            **context,
        )

    # The page lists invitations, which only admins may read: a viewer (who may read members) sees no admin page.
    @get("/members", operation_id="ConsoleMembers", opt={"permission": ("invites", "read")})
    async def members(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        services: NamedDependency[Services],
        cursor: FromQuery[str | None] = None,
    ) -> Response[Any]:
        """The workspace's people and their roles, and the invitations sent."""
        return await self._members(request, services, tenant_id, cursor=cursor)

    @post(
        "/members/invite",
        operation_id="ConsoleInvite",
        opt={"permission": ("invites", "write"), "audit": "invite.created"},
    )
    async def invite(
        self, request: Request[Any, Any, Any], tenant_id: FromPath[str], services: NamedDependency[Services]
    ) -> Response[Any]:
        """Invite someone by email with a role; the mail carries the console's accept link."""
        form = await read_form(request)
        principal: Principal = request.scope["user"]
        email, role = form.get("email", "").strip(), form.get("role", "viewer")
        try:
            data = msgspec.convert({"email": email, "role": role}, InviteCreate)
            if data.role == "owner" and not may(request, "owners", "write"):
                raise PermissionDenied("Only an owner can invite an owner.", code="owner_required")
            sent = await services.identity.invite(tenant_id, data.email, data.role, principal.id)
        except (AppError, msgspec.ValidationError) as exc:
            detail, status = failure(exc)
            return await self._members(
                request, services, tenant_id, error=detail, status_code=status, email=email, role=role
            )
        return await self._members(
            request, services, tenant_id, notice=f"Invitation mailed to {sent.email} as {sent.role}."
        )

    @post(
        "/members/{user_id:str}/role",
        operation_id="ConsoleChangeMemberRole",
        opt={"permission": ("members", "write"), "audit": "member.role_changed"},
    )
    async def change_role(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        user_id: FromPath[str],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        """Change a member's role; only owners grant or take away owner, and the last owner keeps it."""
        form = await read_form(request)
        try:
            data = msgspec.convert({"role": form.get("role", "")}, MemberUpdate)
            member = await services.members.update_role(
                tenant_id, user_id, data, may_manage_owners=may(request, "owners", "write")
            )
        except (AppError, msgspec.ValidationError) as exc:
            detail, status = failure(exc)
            return await self._members(request, services, tenant_id, error=detail, status_code=status)
        return await self._members(request, services, tenant_id, notice=f"{member.email} is now {member.role}.")

    @post(
        "/members/{user_id:str}/remove",
        operation_id="ConsoleRemoveMember",
        opt={"permission": ("members", "write"), "audit": "member.removed"},
    )
    async def remove_member(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        user_id: FromPath[str],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        """Remove a member from the workspace (the last owner cannot be removed)."""
        try:
            member = await services.members.get(tenant_id, user_id)
            await services.members.remove(tenant_id, user_id, may_manage_owners=may(request, "owners", "write"))
        except AppError as exc:
            detail, status = failure(exc)
            return await self._members(request, services, tenant_id, error=detail, status_code=status)
        return await self._members(request, services, tenant_id, notice=f"{member.email} was removed.")

    @post(
        "/invites/{invite_id:str}/revoke",
        operation_id="ConsoleRevokeInvite",
        opt={"permission": ("invites", "write"), "audit": "invite.revoked"},
    )
    async def revoke_invite(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        invite_id: FromPath[str],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        """Withdraw a pending invitation: its link stops working."""
        try:
            invite = await services.identity.revoke_invite(tenant_id, invite_id)
        except AppError as exc:
            detail, status = failure(exc)
            return await self._members(request, services, tenant_id, error=detail, status_code=status)
        return await self._members(
            request, services, tenant_id, notice=f"The invitation of {invite.email} was withdrawn."
        )

    # --- API keys ----------------------------------------------------------------------------

    async def _keys(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        tenant_id: str,
        *,
        created: ApiKeyCreated | None = None,
        cursor: str | None = None,
        **context: Any,
    ) -> Response[Any]:
        listed = await services.api_keys.list(tenant_id, cursor=cursor, limit=PAGE_SIZE)
        # Built from the list's own address: this page also answers the key forms' POSTs.
        next_url = next_page(f"{PREFIX}/t/{tenant_id}/api-keys", listed.next_cursor)
        context.setdefault("form", {})
        return await self._page(
            request,
            services,
            tenant_id,
            "admin/api_keys.html",
            "API keys",
            keys=listed.items,
            next_url=next_url,
            created=created,
            scopes=API_KEY_SCOPES,
            graces=GRACE_PERIODS,
            may_write=may(request, "api_keys", "write"),
            **context,
        )

    @get("/api-keys", operation_id="ConsoleApiKeys", opt={"permission": ("api_keys", "read")})
    async def api_keys(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        services: NamedDependency[Services],
        cursor: FromQuery[str | None] = None,
    ) -> Response[Any]:
        """The workspace's API keys: scopes, expiry, last use; create, rotate, revoke."""
        return await self._keys(request, services, tenant_id, cursor=cursor)

    @post(
        "/api-keys",
        operation_id="ConsoleCreateApiKey",
        opt={"permission": ("api_keys", "write"), "audit": "api_key.created"},
    )
    async def create_api_key(
        self, request: Request[Any, Any, Any], tenant_id: FromPath[str], services: NamedDependency[Services]
    ) -> Response[Any]:
        """Create a key; its secret is on the page this once, with a copy button."""
        form = await request.form()
        chosen = [value for value in form.getall("scopes", []) if isinstance(value, str)]
        fields = {key: value for key, value in form.items() if isinstance(value, str) and key != "_csrf"}
        principal: Principal = request.scope["user"]
        expires = fields.get("expires_on", "").strip()
        try:
            data: dict[str, Any] = {"name": fields.get("name", "").strip(), "scopes": chosen}
            if expires:
                when = day_start(expires)
                if when is None:
                    raise msgspec.ValidationError("Expected a date such as 2027-01-31 - at `$.expires_on`")
                data["expires_at"] = when
            created = await services.api_keys.create(tenant_id, msgspec.convert(data, ApiKeyCreate), principal.id)
        except (AppError, msgspec.ValidationError) as exc:
            detail, status = failure(exc)
            if "scopes" in detail and not chosen:
                detail = "Choose at least one scope."
            return await self._keys(
                request,
                services,
                tenant_id,
                error=detail,
                status_code=status,
                form={"name": fields.get("name", ""), "scopes": chosen, "expires_on": expires},
            )
        return await self._keys(request, services, tenant_id, created=created)

    @post(
        "/api-keys/{key_id:str}/rotate",
        operation_id="ConsoleRotateApiKey",
        opt={"permission": ("api_keys", "write"), "audit": "api_key.rotated"},
    )
    async def rotate_api_key(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        key_id: FromPath[str],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        """Issue a new secret (shown once); the old one works on for the chosen grace period."""
        form = await read_form(request)
        try:
            grace = int(form.get("grace_period_seconds", "0") or 0)
            rotated = await services.api_keys.rotate(
                tenant_id, key_id, msgspec.convert({"grace_period_seconds": grace}, ApiKeyRotate)
            )
        except ValueError:
            return await self._keys(request, services, tenant_id, error="Choose a grace period.", status_code=400)
        except (AppError, msgspec.ValidationError) as exc:
            detail, status = failure(exc)
            return await self._keys(request, services, tenant_id, error=detail, status_code=status)
        return await self._keys(request, services, tenant_id, created=rotated)

    @post(
        "/api-keys/{key_id:str}/revoke",
        operation_id="ConsoleRevokeApiKey",
        opt={"permission": ("api_keys", "write"), "audit": "api_key.revoked"},
    )
    async def revoke_api_key(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        key_id: FromPath[str],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        """Revoke a key at once, with any secret still in its grace period."""
        try:
            key = await services.api_keys.revoke(tenant_id, key_id)
        except AppError as exc:
            detail, status = failure(exc)
            return await self._keys(request, services, tenant_id, error=detail, status_code=status)
        return await self._keys(request, services, tenant_id, notice=f"The key {key.name} ({key.prefix}) was revoked.")

    # --- sources and write keys --------------------------------------------------------------

    async def _sources(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        tenant_id: str,
        *,
        cursor: str | None = None,
        **context: Any,
    ) -> Response[Any]:
        listed = await services.sources.list(tenant_id, cursor=cursor, limit=LIST_SIZE)
        context.setdefault("form", {})
        return await self._page(
            request,
            services,
            tenant_id,
            "admin/sources.html",
            "Sources",
            sources=listed.items,
            next_url=next_page(f"{PREFIX}/t/{tenant_id}/sources", listed.next_cursor),
            kinds=SOURCE_KINDS,
            **context,
        )

    # Managing sources (write keys, origins) is an admin's; viewers read sources through the API only.
    @get("/sources", operation_id="ConsoleSources", opt={"permission": ("sources", "write")})
    async def sources(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        services: NamedDependency[Services],
        cursor: FromQuery[str | None] = None,
    ) -> Response[Any]:
        """The workspace's sources (web, server, mobile) and their write keys."""
        return await self._sources(request, services, tenant_id, cursor=cursor)

    @post(
        "/sources",
        operation_id="ConsoleCreateSource",
        opt={"permission": ("sources", "write"), "audit": "source.created"},
    )
    async def create_source(
        self, request: Request[Any, Any, Any], tenant_id: FromPath[str], services: NamedDependency[Services]
    ) -> Response[Any]:
        """Create a source; its page then shows the write key once, in the install snippets."""
        form = await read_form(request)
        principal: Principal = request.scope["user"]
        kind = form.get("kind", "")
        origins = lines(form.get("allowed_origins", ""))
        try:
            data = msgspec.convert(
                {
                    "name": form.get("name", "").strip(),
                    "kind": kind,
                    "allowed_origins": origins if kind == "web" else [],
                },
                SourceCreate,
            )
            created = await services.sources.create(tenant_id, data, principal.id)
        except (AppError, msgspec.ValidationError) as exc:
            detail, status = failure(exc)
            if "allowed_origins" in detail:
                detail = ORIGIN_HELP
            return await self._sources(request, services, tenant_id, error=detail, status_code=status, form=form)
        return await self._source(request, services, tenant_id, created.source.id, created=created)

    async def _source(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        tenant_id: str,
        source_id: str,
        *,
        created: SourceCreated | None = None,
        **context: Any,
    ) -> Response[Any]:
        source = created.source if created else await services.sources.get(tenant_id, source_id)
        return await self._page(
            request,
            services,
            tenant_id,
            "admin/source.html",
            source.name,
            source=source,
            write_key=created.write_key if created else None,
            ingest_url=await ingest_url(services, tenant_id),
            graces=GRACE_PERIODS,
            **context,
        )

    @get("/sources/{source_id:str}", operation_id="ConsoleSource", opt={"permission": ("sources", "write")})
    async def source(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        source_id: FromPath[str],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        """A source: install snippets naming the cell, allowed origins, rotate or revoke its write key."""
        return await self._source(request, services, tenant_id, source_id)

    @post(
        "/sources/{source_id:str}/origins",
        operation_id="ConsoleUpdateSourceOrigins",
        opt={"permission": ("sources", "write"), "audit": "source.updated"},
    )
    async def update_origins(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        source_id: FromPath[str],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        """Set the pages (origins) allowed to send with a web source's key."""
        form = await read_form(request)
        try:
            data = msgspec.convert({"allowed_origins": lines(form.get("allowed_origins", ""))}, SourceUpdate)
            await services.sources.update(tenant_id, source_id, data)
        except (AppError, msgspec.ValidationError) as exc:
            detail, status = failure(exc)
            if "allowed_origins" in detail:
                detail = ORIGIN_HELP
            return await self._source(request, services, tenant_id, source_id, error=detail, status_code=status)
        return await self._source(request, services, tenant_id, source_id, notice="Allowed origins saved.")

    @post(
        "/sources/{source_id:str}/rotate",
        operation_id="ConsoleRotateWriteKey",
        opt={"permission": ("sources", "write"), "audit": "source.key_rotated"},
    )
    async def rotate_write_key(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        source_id: FromPath[str],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        """A new write key (shown once); the old one works on for the chosen grace period."""
        form = await read_form(request)
        try:
            grace = int(form.get("grace_period_seconds", "0") or 0)
            rotated = await services.sources.rotate(
                tenant_id, source_id, msgspec.convert({"grace_period_seconds": grace}, WriteKeyRotate)
            )
        except ValueError:
            return await self._source(
                request, services, tenant_id, source_id, error="Choose a grace period.", status_code=400
            )
        except (AppError, msgspec.ValidationError) as exc:
            detail, status = failure(exc)
            return await self._source(request, services, tenant_id, source_id, error=detail, status_code=status)
        return await self._source(request, services, tenant_id, source_id, created=rotated)

    @post(
        "/sources/{source_id:str}/revoke",
        operation_id="ConsoleRevokeSource",
        opt={"permission": ("sources", "write"), "audit": "source.revoked"},
    )
    async def revoke_source(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        source_id: FromPath[str],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        """Revoke a source: its write keys are refused from now on."""
        source = await services.sources.revoke(tenant_id, source_id)
        return await self._source(
            request, services, tenant_id, source_id, notice=f"{source.name} was revoked; its write keys are refused."
        )

    # --- single sign-on ----------------------------------------------------------------------

    async def _sso(
        self,
        request: Request[Any, Any, Any],
        services: Services,
        tenant_id: str,
        *,
        tested: tuple[str, SsoConnectionTest] | None = None,
        **context: Any,
    ) -> Response[Any]:
        listed = await services.sso.list(tenant_id, limit=50)
        owners = may(request, "owners", "write")
        context.setdefault("form", {})
        return await self._page(
            request,
            services,
            tenant_id,
            "admin/sso.html",
            "Single sign-on",
            connections=listed.items,
            tested=tested,
            roles=[r for r in TENANT_ROLES if owners or r != "owner"],
            redirect_uri=services.sso.redirect_uri,
            may_write=may(request, "sso", "write"),
            **context,
        )

    @get("/sso", operation_id="ConsoleSso", opt={"permission": ("sso", "read")})
    async def sso(
        self, request: Request[Any, Any, Any], tenant_id: FromPath[str], services: NamedDependency[Services]
    ) -> Response[Any]:
        """The workspace's OpenID Connect connections: set one up, test it, enable or remove it."""
        return await self._sso(request, services, tenant_id)

    @post(
        "/sso", operation_id="ConsoleCreateSso", opt={"permission": ("sso", "write"), "audit": "sso_connection.created"}
    )
    async def create_sso(
        self, request: Request[Any, Any, Any], tenant_id: FromPath[str], services: NamedDependency[Services]
    ) -> Response[Any]:
        """Connect an identity provider; then test it and register the redirect URI there."""
        form = await read_form(request)
        principal: Principal = request.scope["user"]
        fields: dict[str, Any] = {
            "name": form.get("name", "").strip() or "Single sign-on",
            "issuer": form.get("issuer", "").strip(),
            "client_id": form.get("client_id", "").strip(),
            "client_secret": form.get("client_secret", ""),
            "allowed_domains": [d.lower() for d in lines(form.get("allowed_domains", ""))],
            "default_role": form.get("default_role", "viewer"),
            "enforce_sso": form.get("enforce_sso") == "on",
        }
        if form.get("role_claim", "").strip():
            fields["role_claim"] = form["role_claim"].strip()
        try:
            data = msgspec.convert(fields, SsoConnectionCreate)
            created = await services.sso.create(
                tenant_id, data, principal.id, may_grant_owner=may(request, "owners", "write")
            )
        except (AppError, msgspec.ValidationError) as exc:
            detail, status = failure(exc)
            kept = {k: v for k, v in form.items() if k != "client_secret"}
            return await self._sso(request, services, tenant_id, error=detail, status_code=status, form=kept)
        return await self._sso(
            request, services, tenant_id, notice=f"{created.name} was connected. Test it before people use it."
        )

    @post(
        "/sso/{connection_id:str}/test",
        operation_id="ConsoleTestSso",
        opt={"permission": ("sso", "write"), "audit": "sso_connection.tested"},
    )
    async def test_sso(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        connection_id: FromPath[str],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        """Fetch the provider's discovery document and keys now, and say what was found."""
        result = await services.sso.test(tenant_id, connection_id)
        return await self._sso(request, services, tenant_id, tested=(connection_id, result))

    @post(
        "/sso/{connection_id:str}/update",
        operation_id="ConsoleUpdateSso",
        opt={"permission": ("sso", "write"), "audit": "sso_connection.updated"},
    )
    async def update_sso(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        connection_id: FromPath[str],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        """Change a connection; an empty client secret keeps the stored one, an empty role claim removes it."""
        form = await read_form(request)
        fields: dict[str, Any] = {
            "name": form.get("name", "").strip() or None,
            "issuer": form.get("issuer", "").strip() or None,
            "client_id": form.get("client_id", "").strip() or None,
            "client_secret": form.get("client_secret") or None,
            "allowed_domains": [d.lower() for d in lines(form.get("allowed_domains", ""))] or None,
            "role_claim": form.get("role_claim", "").strip(),
            "default_role": form.get("default_role") or None,
            "enforce_sso": form.get("enforce_sso") == "on",
        }
        try:
            data = msgspec.convert({k: v for k, v in fields.items() if v is not None}, SsoConnectionUpdate)
            changed = await services.sso.update(
                tenant_id, connection_id, data, may_grant_owner=may(request, "owners", "write")
            )
        except (AppError, msgspec.ValidationError) as exc:
            detail, status = failure(exc)
            return await self._sso(request, services, tenant_id, error=detail, status_code=status)
        return await self._sso(request, services, tenant_id, notice=f"{changed.name} was saved.")

    @post(
        "/sso/{connection_id:str}/enabled",
        operation_id="ConsoleEnableSso",
        opt={"permission": ("sso", "write"), "audit": "sso_connection.updated"},
    )
    async def enable_sso(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        connection_id: FromPath[str],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        """Turn a connection on or off; turning it off ends the sessions it opened."""
        form = await read_form(request)
        enabled = form.get("enabled") == "true"
        try:
            changed = await services.sso.update(
                tenant_id,
                connection_id,
                SsoConnectionUpdate(enabled=enabled),
                may_grant_owner=may(request, "owners", "write"),
            )
        except AppError as exc:
            detail, status = failure(exc)
            return await self._sso(request, services, tenant_id, error=detail, status_code=status)
        state = "on" if changed.enabled else "off; the sessions it opened ended"
        return await self._sso(request, services, tenant_id, notice=f"{changed.name} is {state}.")

    @post(
        "/sso/{connection_id:str}/delete",
        operation_id="ConsoleDeleteSso",
        opt={"permission": ("sso", "write"), "audit": "sso_connection.deleted"},
    )
    async def delete_sso(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        connection_id: FromPath[str],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        """Remove a connection and end its sessions; the accounts it created stay."""
        await services.sso.delete(tenant_id, connection_id)
        return await self._sso(request, services, tenant_id, notice="The connection was removed.")

    # --- audit log ---------------------------------------------------------------------------

    @get("/audit", operation_id="ConsoleAudit", opt={"permission": ("audit", "read")})
    async def audit(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[str],
        services: NamedDependency[Services],
        action: FromQuery[str] = "",
        outcome: FromQuery[str] = "",
        actor_id: FromQuery[str] = "",
        target_id: FromQuery[str] = "",
        since: FromQuery[str] = "",
        until: FromQuery[str] = "",
        cursor: FromQuery[str | None] = None,
    ) -> Response[Any]:
        """The workspace's audit trail, newest first, filtered by action, outcome, actor, target and dates."""
        filters = {
            "action": action.strip()[:100],
            "outcome": outcome if outcome in OUTCOMES else "",
            "actor_id": actor_id.strip()[:100],
            "target_id": target_id.strip()[:100],
            "since": since if day_start(since) else "",
            "until": until if day_start(until) else "",
        }
        until_day = day_start(filters["until"])
        listed = await services.audit.list(
            tenant_id=tenant_id,
            action=filters["action"] or None,
            outcome=filters["outcome"] or None,
            actor_id=filters["actor_id"] or None,
            target_id=filters["target_id"] or None,
            since=day_start(filters["since"]),
            # The until date is included: entries before the next day's start.
            until=until_day + dt.timedelta(days=1) if until_day else None,
            cursor=cursor,
            limit=PAGE_SIZE,
        )
        given = {k: v for k, v in filters.items() if v}
        next_url = (
            f"{request.url.path}?{urlencode({**given, 'cursor': listed.next_cursor})}" if listed.next_cursor else None
        )
        return await self._page(
            request,
            services,
            tenant_id,
            "admin/audit.html",
            "Audit log",
            entries=listed.items,
            filters=filters,
            filtered=bool(given),
            outcomes=OUTCOMES,
            next_url=next_url,
        )
