"""Audit API types."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import msgspec

Outcome = Literal["success", "denied", "failure"]


class AuditEntry(msgspec.Struct, kw_only=True):
    id: str
    occurred_at: dt.datetime
    tenant_id: str | None
    actor_type: Literal["user", "api_key", "system", "anonymous"]
    actor_id: str | None
    actor_label: str | None
    action: str
    target_type: str | None
    target_id: str | None
    outcome: Outcome
    status_code: int | None
    source_ip: str | None
    request_id: str | None
    details: dict[str, Any]


class AuditPage(msgspec.Struct, kw_only=True):
    items: list[AuditEntry]
    next_cursor: str | None
