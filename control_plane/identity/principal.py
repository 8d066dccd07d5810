"""The authenticated caller of a request: a signed-in user or a tenant's API key."""

from __future__ import annotations

from typing import Literal

import msgspec


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    kind: Literal["user", "api_key"]
    id: str
    # Email for users, visible key prefix for API keys.
    label: str
    platform_role: str | None = None
    # API keys belong to exactly one tenant and carry scopes.
    tenant_id: str | None = None
    scopes: tuple[str, ...] = ()
    session_id: str | None = None

    @property
    def log_label(self) -> str:
        return f"{self.kind}:{self.id}"
