"""Sign-in, sessions, the caller's own account, users and invitations."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from control_plane.http import SESSION_COOKIE, may
from control_plane.identity import schemas
from control_plane.identity.principal import Principal
from control_plane.rbac.roles import PlatformRole
from control_plane.runtime import Services
from control_plane.tenants.routes import Limit
from kernel.errors import PermissionDenied
from kernel.http import current_request
from kernel.pagination import DEFAULT_LIMIT


class AuthController(Controller):
    path = "/api/v1/auth"
    tags = ["Authentication"]

    @post("/login", operation_id="Login", status_code=200, opt={"public": True, "audit": "session.created"})
    async def login(
        self, data: JSONBody[schemas.LoginRequest], services: NamedDependency[Services], request: Request[Any, Any, Any]
    ) -> Response[schemas.SessionToken]:
        """Sign in with email and password.

        Returns a bearer token for API clients and sets the same token as an HttpOnly session
        cookie for browsers. Any failure gives the same answer (401 `invalid_login`); repeated
        failures lock the email for a growing time (429 `login_locked` with `Retry-After`).
        """
        context = current_request()
        if context is not None:
            context.audit_details = {"email": data.email.strip().lower()}
        session = await services.identity.login(
            data,
            source_ip=request.client.host if request.client else None,
            user_agent=request.headers.get("user-agent"),
        )
        settings = services.runtime.settings
        cookie = Cookie(
            key=SESSION_COOKIE,
            value=session.token,
            httponly=True,
            secure=settings.cookie_secure,
            samesite="lax",
            path="/",
            max_age=settings.session_ttl_seconds,
        )
        return Response(session, cookies=[cookie])

    @post(
        "/logout",
        operation_id="Logout",
        status_code=204,
        response_cookies=[Cookie(key=SESSION_COOKIE, value="", max_age=0, path="/", httponly=True)],
        opt={"authenticated": True, "audit": "session.deleted"},
    )
    async def logout(self, services: NamedDependency[Services], principal: NamedDependency[Principal]) -> None:
        """End the current session and clear the cookie."""
        if principal.kind != "user":
            raise PermissionDenied("API keys have no session to end; revoke the key instead.", code="not_a_session")
        await services.identity.logout(principal)

    @get("/me", operation_id="GetMe", opt={"authenticated": True})
    async def me(self, services: NamedDependency[Services], principal: NamedDependency[Principal]) -> schemas.Me:
        """Who you are: your account, platform role and the tenants you belong to (or, for an API key, its scopes)."""
        return await services.identity.me(principal)

    @post(
        "/password",
        operation_id="ChangePassword",
        status_code=204,
        opt={"authenticated": True, "audit": "user.password_changed"},
    )
    async def change_password(
        self,
        data: JSONBody[schemas.PasswordChange],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> None:
        """Change your password. Your other sessions end; this one stays signed in."""
        if principal.kind != "user":
            raise PermissionDenied("API keys have no password.", code="not_a_session")
        await services.identity.change_password(principal, data)

    @get("/sessions", operation_id="ListMySessions", opt={"authenticated": True})
    async def list_sessions(
        self, services: NamedDependency[Services], principal: NamedDependency[Principal]
    ) -> list[schemas.SessionInfo]:
        """Your signed-in sessions that have not expired, newest first; `current` is the one of this request."""
        if principal.kind != "user":
            raise PermissionDenied("API keys have no sessions.", code="not_a_session")
        return await services.identity.list_sessions(principal)

    @delete(
        "/sessions/{session_id:str}",
        operation_id="RevokeMySession",
        status_code=204,
        opt={"authenticated": True, "audit": "session.revoked"},
    )
    async def revoke_session(
        self, session_id: FromPath[str], services: NamedDependency[Services], principal: NamedDependency[Principal]
    ) -> None:
        """Sign out one of your sessions (for example on a lost laptop). Another person's session answers 404."""
        if principal.kind != "user":
            raise PermissionDenied("API keys have no sessions.", code="not_a_session")
        await services.identity.revoke_session(principal, session_id)

    @post(
        "/password/forgot",
        operation_id="ForgotPassword",
        status_code=202,
        opt={"public": True, "audit": "password_reset.requested"},
    )
    async def forgot_password(
        self,
        data: JSONBody[schemas.PasswordForgotten],
        services: NamedDependency[Services],
        request: Request[Any, Any, Any],
    ) -> None:
        """Mail a password-reset link (single use, valid 30 minutes) if an account has this email.

        Always answers 202, whether or not the account exists.
        """
        await services.identity.request_password_reset(
            data.email, source_ip=request.client.host if request.client else None
        )

    @post(
        "/password/reset",
        operation_id="ResetPassword",
        status_code=204,
        opt={"public": True, "audit": "password_reset.completed", "problems": (404, 410)},
    )
    async def reset_password(self, data: JSONBody[schemas.PasswordReset], services: NamedDependency[Services]) -> None:
        """Choose a new password with the code of a reset mail. Every session of the account ends.

        Unknown codes answer 404, used ones 409, expired ones 410.
        """
        await services.identity.reset_password(data.token, data.new_password)


class UserController(Controller):
    path = "/api/v1/users"
    tags = ["Users"]

    @get("/", operation_id="ListUsers", opt={"permission": ("users", "read")})
    async def list_users(
        self,
        services: NamedDependency[Services],
        email: FromQuery[str | None] = None,
        platform_role: FromQuery[PlatformRole | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> schemas.UserPage:
        """Every user account (Livora staff)."""
        return await services.identity.list_users(email=email, platform_role=platform_role, cursor=cursor, limit=limit)

    @get("/{user_id:str}", operation_id="GetUser", opt={"permission": ("users", "read")})
    async def get_user(self, user_id: FromPath[str], services: NamedDependency[Services]) -> schemas.User:
        """One user account."""
        return await services.identity.get_user(user_id)

    @patch("/{user_id:str}", operation_id="UpdateUser", opt={"permission": ("users", "write"), "audit": "user.updated"})
    async def update_user(
        self,
        user_id: FromPath[str],
        data: JSONBody[schemas.UserUpdate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> schemas.User:
        """Rename, grant or remove a platform role, or disable an account (which ends its sessions)."""
        return await services.identity.update_user(user_id, data, principal)


class InviteController(Controller):
    path = "/api/v1/tenants/{tenant_id:str}/invites"
    tags = ["Invitations"]

    @post("/", operation_id="CreateInvite", opt={"permission": ("invites", "write"), "audit": "invite.created"})
    async def create_invite(
        self,
        tenant_id: FromPath[str],
        data: JSONBody[schemas.InviteCreate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        request: Request[Any, Any, Any],
    ) -> schemas.Invite:
        """Invite someone by email. The code works once and expires; a new invite replaces a pending one."""
        if data.role == "owner" and not may(request, "owners", "write"):
            raise PermissionDenied("Only an owner can invite an owner.", code="owner_required")
        return await services.identity.invite(tenant_id, data.email, data.role, principal.id)

    @get("/", operation_id="ListInvites", opt={"permission": ("invites", "read")})
    async def list_invites(
        self,
        tenant_id: FromPath[str],
        services: NamedDependency[Services],
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> schemas.InvitePage:
        """The tenant's invitations, newest first, with their status."""
        return await services.identity.list_invites(tenant_id, cursor=cursor, limit=limit)

    @delete(
        "/{invite_id:str}",
        operation_id="RevokeInvite",
        status_code=200,
        opt={"permission": ("invites", "write"), "audit": "invite.revoked"},
    )
    async def revoke_invite(
        self, tenant_id: FromPath[str], invite_id: FromPath[str], services: NamedDependency[Services]
    ) -> schemas.Invite:
        """Withdraw a pending invitation."""
        return await services.identity.revoke_invite(tenant_id, invite_id)


class PlatformInviteController(Controller):
    path = "/api/v1/platform/invites"
    tags = ["Invitations"]

    @post("/", operation_id="CreatePlatformInvite", opt={"permission": ("users", "write"), "audit": "invite.created"})
    async def create_invite(
        self,
        data: JSONBody[schemas.PlatformInviteCreate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> schemas.Invite:
        """Invite a Livora staff member to a platform role (`ops_admin`, `ops_viewer`, `finance`)."""
        return await services.identity.invite(None, data.email, data.role, principal.id)

    @get("/", operation_id="ListPlatformInvites", opt={"permission": ("users", "read")})
    async def list_invites(
        self, services: NamedDependency[Services], cursor: FromQuery[str | None] = None, limit: Limit = DEFAULT_LIMIT
    ) -> schemas.InvitePage:
        """Platform-role invitations, newest first."""
        return await services.identity.list_invites(None, cursor=cursor, limit=limit)

    @delete(
        "/{invite_id:str}",
        operation_id="RevokePlatformInvite",
        status_code=200,
        opt={"permission": ("users", "write"), "audit": "invite.revoked"},
    )
    async def revoke_invite(self, invite_id: FromPath[str], services: NamedDependency[Services]) -> schemas.Invite:
        """Withdraw a pending platform invitation."""
        return await services.identity.revoke_invite(None, invite_id)


class InviteAcceptController(Controller):
    path = "/api/v1/invites"
    tags = ["Invitations"]

    @post("/accept", operation_id="AcceptInvite", status_code=200, opt={"public": True, "audit": "invite.accepted"})
    async def accept(
        self, data: JSONBody[schemas.InviteAccept], services: NamedDependency[Services]
    ) -> schemas.InviteAccepted:
        """Accept an invitation with the code from the email. A new account chooses its password here.

        Unknown or withdrawn codes answer 404, used ones 409, expired ones 410.
        """
        return await services.identity.accept_invite(data)
