"""Provisioning API types."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec

Operation = Literal["provision", "upgrade", "suspend", "resume", "deprovision", "rollback"]
RunStatus = Literal["queued", "running", "succeeded", "failed", "rolled_back"]
StepStatus = Literal["pending", "running", "retrying", "succeeded", "failed", "skipped"]
RoleArn = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,128}$",
        max_length=200,
        examples=["arn:aws:iam::123456789012:role/LivoraProvisioning"],
    ),
]


class Step(msgspec.Struct, kw_only=True):
    position: int
    name: str
    status: StepStatus
    attempts: int
    error: str | None
    outputs: dict[str, Any]
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    next_attempt_at: dt.datetime | None


class Run(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    operation: Operation
    status: RunStatus
    driver: str
    template: str
    template_version: int
    error: str | None
    rollback_of: str | None
    created_by: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None
    steps: list[Step]


class RunPage(msgspec.Struct, kw_only=True):
    items: list[Run]
    next_cursor: str | None


class ProvisionRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Pattern A: the role in the client's account that Livora assumes (its trust policy: GetTrustPolicy).
    role_arn: RoleArn | None = None


class UpgradeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Another template, or the newer version of the tenant's own (default: its latest version).
    template: Literal["base", "ecommerce", "saas", "real_estate"] | None = None
    version: Annotated[int, msgspec.Meta(ge=1)] | None = None


class TrustPolicy(msgspec.Struct, kw_only=True):
    """What a Pattern A client creates in its AWS account: a role with exactly this trust policy."""

    tenant_id: str
    external_id: str
    livora_principal: str
    role_arn: str | None
    # The IAM trust policy document to paste when creating the role.
    policy: dict[str, Any]
    instructions: str


class Placement(msgspec.Struct, kw_only=True):
    """Where a tenant lives and what it was given: its cell, template version, resources and starter content."""

    tenant_id: str
    cell_id: str | None
    template: str
    template_version: int
    # Where each part of the tenant's space lives (by the step that made it).
    resources: dict[str, Any]
    # Tracking plan, segments, dashboards, CRM pipelines and journeys from the template.
    starter_content: dict[str, Any]
    role_arn: str | None
    # Where deprovisioning archived the tenant's data.
    archive_location: str | None
