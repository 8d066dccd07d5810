"""Membership API types."""

from __future__ import annotations

import datetime as dt

import msgspec

from control_plane.rbac.roles import TenantRole


class Member(msgspec.Struct, kw_only=True):
    user_id: str
    tenant_id: str
    email: str
    name: str
    role: TenantRole
    created_at: dt.datetime
    updated_at: dt.datetime


class MemberPage(msgspec.Struct, kw_only=True):
    items: list[Member]
    next_cursor: str | None


class MemberUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    role: TenantRole
