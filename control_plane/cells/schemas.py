"""Cells registry API types."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec

Region = Annotated[str, msgspec.Meta(pattern=r"^([a-z]{2}(-[a-z]+)+-[0-9]{1,2}|\*)$", max_length=40)]
CellName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$", max_length=63)]
Endpoint = Annotated[str, msgspec.Meta(pattern=r"^(https?://[^\s]{1,390}|)$", max_length=400)]
CellStatus = Literal["active", "draining", "retired"]
Health = Literal["healthy", "stale", "unknown"]


class CellCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: CellName
    region: Region
    # Where the control plane reaches the cell's internal API.
    endpoint: Endpoint
    pattern: Literal["B"] = "B"
    capacity: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 100


class CellUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    endpoint: Endpoint | None = None
    capacity: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    # `draining`: no new tenants are placed here; `retired`: the cell serves no one.
    status: CellStatus | None = None


class CredentialRotation(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # How long the replaced credential keeps working, so the cell can be given the new one.
    grace_period_seconds: Annotated[int, msgspec.Meta(ge=0, le=7 * 24 * 3600)] = 3600


class Cell(msgspec.Struct, kw_only=True):
    id: str
    name: str
    pattern: Literal["A", "B"]
    region: str
    endpoint: str
    capacity: int
    tenants: int
    status: CellStatus
    health: Health
    builtin: bool
    dedicated_tenant_id: str | None
    credential_prefix: str | None
    last_heartbeat_at: dt.datetime | None
    outputs: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime


class CellCreated(msgspec.Struct, kw_only=True):
    """The cell and its credential (``LIVORA_CELL_SECRET`` of that cell), shown this once."""

    cell: Cell
    credential: str


class CellPage(msgspec.Struct, kw_only=True):
    items: list[Cell]
    next_cursor: str | None
