"""Source API types. The write key appears in full once, in ``SourceCreated``."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec

from control_plane.tenants.schemas import Name

SourceKind = Literal["web", "server", "mobile"]
# A browser origin: scheme, host and optional port, nothing else (as the Origin header sends it).
Origin = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$", max_length=300, examples=["https://shop.example.com"]
    ),
]
Origins = Annotated[list[Origin], msgspec.Meta(max_length=50)]


class SourceCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    kind: SourceKind
    # Web sources only: pages allowed to send with this key. Empty means none may (server-side use only).
    allowed_origins: Origins = []


class SourceUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name | None = None
    allowed_origins: Origins | None = None


class WriteKeyRotate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # How long the old write key keeps working (SDKs already shipped need time); 0 ends it at once.
    grace_period_seconds: Annotated[int, msgspec.Meta(ge=0)] = 0


class Source(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    name: str
    kind: SourceKind
    # The visible start of the write key.
    write_key_prefix: str
    allowed_origins: list[str]
    status: Literal["active", "revoked"]
    created_at: dt.datetime
    updated_at: dt.datetime
    rotated_at: dt.datetime | None
    previous_valid_until: dt.datetime | None
    revoked_at: dt.datetime | None


class SourceCreated(msgspec.Struct, kw_only=True):
    source: Source
    # Put this in the SDK (Segment-compatible: HTTP Basic user name, or `writeKey` in the body).
    write_key: str


class SourcePage(msgspec.Struct, kw_only=True):
    items: list[Source]
    next_cursor: str | None
