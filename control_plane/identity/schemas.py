"""Users, sign-in and invitation API types."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec

from control_plane.rbac.roles import PlatformRole, TenantRole
from control_plane.tenants.schemas import Email, TenantStatus

Password = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
DisplayName = Annotated[str, msgspec.Meta(max_length=200, pattern=r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$")]


class User(msgspec.Struct, kw_only=True):
    id: str
    email: str
    name: str
    platform_role: PlatformRole | None
    is_active: bool
    created_at: dt.datetime
    last_login_at: dt.datetime | None


class UserPage(msgspec.Struct, kw_only=True):
    items: list[User]
    next_cursor: str | None


class UserUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: DisplayName | None = None
    # "none" removes the platform role.
    platform_role: PlatformRole | Literal["none"] | None = None
    # false disables sign-in and ends every session of the user.
    is_active: bool | None = None


class LoginRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=320)]
    password: Password


class SessionToken(msgspec.Struct, kw_only=True):
    """The bearer token for API clients; browsers also get it as an HttpOnly cookie."""

    token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: dt.datetime
    user: User


class TenantAccess(msgspec.Struct, kw_only=True):
    tenant_id: str
    tenant_name: str
    tenant_slug: str
    tenant_status: TenantStatus
    role: TenantRole


class Me(msgspec.Struct, kw_only=True):
    principal_type: Literal["user", "api_key"]
    # The signed-in person; null when the caller is an API key.
    user: User | None
    memberships: list[TenantAccess]
    # Set when the caller is an API key: its id, tenant and scopes.
    api_key_id: str | None = None
    tenant_id: str | None = None
    scopes: list[str] = []


class PasswordChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    current_password: Password
    new_password: Password


class InviteCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    email: Email
    role: TenantRole = "viewer"


class PlatformInviteCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    email: Email
    role: PlatformRole


class Invite(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str | None
    email: str
    role: str
    status: Literal["pending", "accepted", "revoked", "expired"]
    created_at: dt.datetime
    expires_at: dt.datetime
    accepted_at: dt.datetime | None


class InvitePage(msgspec.Struct, kw_only=True):
    items: list[Invite]
    next_cursor: str | None


class InviteAccept(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    # Required when the invitation creates the account; ignored for an existing account.
    password: Password | None = None
    name: DisplayName | None = None


class InviteAccepted(msgspec.Struct, kw_only=True):
    user: User
    tenant_id: str | None
    role: str


class SessionInfo(msgspec.Struct, kw_only=True):
    """One of your sign-in sessions (its token is never shown again)."""

    id: str
    created_at: dt.datetime
    expires_at: dt.datetime
    source_ip: str | None
    user_agent: str | None
    # The session this request was made with.
    current: bool


class PasswordForgotten(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=320)]


class PasswordReset(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # The code from the reset mail's link.
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    new_password: Password


class InvitePreview(msgspec.Struct, kw_only=True):
    """What an invitation code opens, shown on its accept page before anything is changed."""

    email: str
    role: str
    # The workspace's name; null for a platform-role invitation.
    tenant_name: str | None
    expires_at: dt.datetime
    # True when accepting creates the account (it then chooses its password).
    needs_password: bool
