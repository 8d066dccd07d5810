"""API key types. The secret appears once, in ``ApiKeyCreated``."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec

from control_plane.rbac.roles import ApiKeyScope


class ApiKeyCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    scopes: Annotated[list[ApiKeyScope], msgspec.Meta(min_length=1, max_length=20)]
    # Optional expiry: a future time with its UTC offset, e.g. 2027-01-01T00:00:00Z.
    expires_at: Annotated[dt.datetime, msgspec.Meta(tz=True)] | None = None


class ApiKeyRotate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # How long the old secret keeps working after rotation; 0 (the default) ends it at once.
    grace_period_seconds: Annotated[int, msgspec.Meta(ge=0)] = 0


class ApiKey(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    name: str
    # The visible start of the secret, to tell keys apart.
    prefix: str
    scopes: list[str]
    status: Literal["active", "revoked", "expired"]
    created_at: dt.datetime
    expires_at: dt.datetime | None
    rotated_at: dt.datetime | None
    previous_valid_until: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


class ApiKeyCreated(msgspec.Struct, kw_only=True):
    api_key: ApiKey
    # Shown only now; Livora stores a hash. Send it as `Authorization: Bearer <secret>`.
    secret: str


class ApiKeyPage(msgspec.Struct, kw_only=True):
    items: list[ApiKey]
    next_cursor: str | None
