"""SSO API types: connections (the client secret goes in, never out), their test, domain discovery."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec

from control_plane.rbac.roles import TenantRole
from control_plane.tenants.schemas import Name

Url = Annotated[str, msgspec.Meta(min_length=8, max_length=500, pattern=r"^https?://[^\s#]+$")]
Domain = Annotated[
    str,
    msgspec.Meta(
        max_length=253,
        pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$",
        description="A lower-case email domain such as `client.com`.",
    ),
]
ClientId = Annotated[str, msgspec.Meta(min_length=1, max_length=300, pattern=r"^[\x21-\x7e]+$")]
ClientSecret = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
Scope = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[\x21\x23-\x5b\x5d-\x7e]+$")]
ClaimName = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_:/.-]+$")]
# The same, or "" to remove it.
ClaimNameOrEmpty = Annotated[str, msgspec.Meta(max_length=100, pattern=r"^[A-Za-z0-9_:/.-]*$")]
ClaimValue = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Domains = Annotated[list[Domain], msgspec.Meta(min_length=1, max_length=50)]
Scopes = Annotated[list[Scope], msgspec.Meta(min_length=1, max_length=20)]
RoleMapping = Annotated[dict[ClaimValue, TenantRole], msgspec.Meta(max_length=100)]


class SsoConnectionCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name = "Single sign-on"
    # The provider's issuer identifier; its discovery document is ISSUER/.well-known/openid-configuration.
    issuer: Url
    client_id: ClientId
    # Stored encrypted; never returned.
    client_secret: ClientSecret
    # Email domains this provider signs in (unique across tenants: they route the sign-in page).
    allowed_domains: Domains
    # Must include "openid"; "email" gives the email claim.
    scopes: Scopes = msgspec.field(default_factory=lambda: ["openid", "email", "profile"])
    # ID-token claim holding a role or a list of groups (a dotted path reads nested claims, e.g. realm_access.roles).
    role_claim: ClaimName | None = None
    # Claim value -> tenant role; when several values match, the highest role wins.
    role_mapping: RoleMapping = msgspec.field(default_factory=dict)
    # Role of users whose claim maps to nothing.
    default_role: TenantRole = "viewer"
    # Refuse password sign-in to this tenant's members whose email is in allowed_domains.
    enforce_sso: bool = False
    enabled: bool = True


class SsoConnectionUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name | None = None
    issuer: Url | None = None
    client_id: ClientId | None = None
    # Replaces the stored secret.
    client_secret: ClientSecret | None = None
    allowed_domains: Domains | None = None
    scopes: Scopes | None = None
    # An empty string removes the role claim.
    role_claim: ClaimNameOrEmpty | None = None
    role_mapping: RoleMapping | None = None
    default_role: TenantRole | None = None
    enforce_sso: bool | None = None
    enabled: bool | None = None


class SsoConnection(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    name: str
    issuer: str
    client_id: str
    # Whether a client secret is stored (its value is never returned).
    client_secret_set: bool
    scopes: list[str]
    allowed_domains: list[str]
    role_claim: str | None
    role_mapping: dict[str, str]
    default_role: str
    enforce_sso: bool
    enabled: bool
    # Register this as the redirect (callback) URI at the identity provider.
    redirect_uri: str
    # Where people of this connection start signing in.
    sign_in_url: str
    created_at: dt.datetime
    updated_at: dt.datetime
    last_tested_at: dt.datetime | None
    last_test_ok: bool | None


class SsoConnectionPage(msgspec.Struct, kw_only=True):
    items: list[SsoConnection]
    next_cursor: str | None


class SsoConnectionTest(msgspec.Struct, kw_only=True):
    """The outcome of fetching the provider's discovery document and keys."""

    ok: bool
    checked_at: dt.datetime
    # Set when ok is false: a stable code and what went wrong.
    error_code: str | None = None
    detail: str | None = None
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    jwks_uri: str | None = None
    signing_algorithms: list[str] = []
    key_ids: list[str] = []


class SsoDiscovery(msgspec.Struct, kw_only=True, omit_defaults=True):
    """How an email signs in: with its organisation's identity provider, or with a password."""

    method: Literal["sso", "password"]
    # For "sso": open this URL in the browser to continue.
    start_url: str | None = None
