"""Tenant API types."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec

from control_plane.db.models import TENANT_STATUSES
from control_plane.provisioning.schemas import RoleArn

Plan = Literal["free", "growth", "enterprise"]
Pattern = Literal["A", "B"]
Template = Literal["base", "ecommerce", "saas", "real_estate"]
TenantStatus = Literal["pending", "provisioning", "active", "suspended", "deleting", "deleted", "failed"]
assert set(TenantStatus.__args__) == set(TENANT_STATUSES)  # type: ignore[attr-defined]

# Printable text: no control characters (names go into mail subjects and logs).
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$")]
Slug = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$", description="DNS-label style")]
Region = Annotated[str, msgspec.Meta(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$", max_length=40, examples=["eu-west-1"])]
# One plain address (no display name, no list): local part of RFC 5322 atoms, a DNS host name.
Email = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$",
        max_length=254,
        examples=["ana@example.com"],
    ),
]


class TenantCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    # Derived from the name when omitted.
    slug: Slug | None = None
    plan: Plan = "free"
    deployment_pattern: Pattern = "B"
    region: Region = "us-east-1"
    template: Template = "base"
    # Invited as the tenant's first owner.
    owner_email: Email | None = None
    # Start provisioning at once (`pending → provisioning → active`); false leaves it `pending`,
    # e.g. for a Pattern A tenant whose client still has to create the role (see GetTrustPolicy).
    provision: bool = True
    # Pattern A: the client's role Livora assumes (its trust policy: GetTrustPolicy).
    role_arn: RoleArn | None = None


class TenantUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name | None = None
    plan: Plan | None = None
    template: Template | None = None


class TenantStatusChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class Tenant(msgspec.Struct, kw_only=True):
    id: str
    name: str
    slug: str
    plan: Plan
    deployment_pattern: Pattern
    region: str
    template: Template
    status: TenantStatus
    status_reason: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    status_changed_at: dt.datetime


class TenantPage(msgspec.Struct, kw_only=True):
    items: list[Tenant]
    next_cursor: str | None
