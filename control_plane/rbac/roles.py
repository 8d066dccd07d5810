"""Role names and API-key scopes."""

from __future__ import annotations

from typing import Literal

PlatformRole = Literal["ops_admin", "ops_viewer", "finance"]
TenantRole = Literal["owner", "admin", "analyst", "marketer", "sales", "viewer"]

PLATFORM_ROLES: tuple[str, ...] = ("ops_admin", "ops_viewer", "finance")
TENANT_ROLES: tuple[str, ...] = ("owner", "admin", "analyst", "marketer", "sales", "viewer")

# What an API key may be granted: `object:action`. Managing people and keys stays with
# people, so a leaked key cannot mint keys or invite accomplices.
ApiKeyScope = Literal[
    "tenant:read", "members:read", "invites:read", "api_keys:read", "sources:read", "audit:read", "analytics:read"
]
API_KEY_SCOPES: tuple[str, ...] = ApiKeyScope.__args__  # type: ignore[attr-defined]
