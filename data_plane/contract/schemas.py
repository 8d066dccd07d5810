"""Wire types of the cell contract (version 1). Both planes import these; nothing else is shared."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Literal

import msgspec

CONTRACT_VERSION = 1
CONFIG_PATH = "/internal/v1/cell/config"


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """What one tenant may send: per request and per second (token bucket)."""

    max_batch_events: int = 100
    events_per_second: int = 1_000
    burst_events: int = 5_000
    # Events the plan includes per billing period (calendar month, UTC); None: no quota.
    events_per_month: int | None = None
    # Over the quota: `overage` keeps accepting (and bills it), `throttle` refuses with 429.
    over_quota: Literal["overage", "throttle"] = "overage"


class SourceConfig(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    kind: Literal["web", "server", "mobile"]
    # SHA-256 of every write key accepted now: the current one, and one in its rotation grace.
    write_key_hashes: list[str]
    allowed_origins: list[str] = []
    # When the key in grace stops (the cell drops its hash then, even before the next pull).
    previous_valid_until: dt.datetime | None = None
    previous_write_key_hash: str | None = None


class TrackingPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Which of the tenant's events mean what to analytics; defaults follow Segment's e-commerce spec.

    View and add-to-cart events carry ``properties.product_id``; purchase events carry the revenue
    property and ``properties.products[]`` (``product_id``, ``price``, ``quantity``).
    """

    view_event: str = "Product Viewed"
    add_to_cart_event: str = "Product Added"
    purchase_event: str = "Order Completed"
    revenue_property: str = "revenue"


class ApiKeyGrant(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant API key the cell accepts for its read APIs (only keys with such a scope are sent)."""

    id: str
    # SHA-256 of the current secret, and of the previous one while its rotation grace lasts.
    secret_hashes: list[str]
    scopes: list[str]
    expires_at: dt.datetime | None = None
    previous_secret_hash: str | None = None
    previous_valid_until: dt.datetime | None = None


class TenantConfig(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    status: Literal["pending", "provisioning", "active", "suspended", "deleting", "deleted"]
    plan: str
    limits: Limits
    sources: list[SourceConfig]
    # Set while a throttling plan is over its quota: the cell refuses events (429) until then.
    quota_exceeded_until: dt.datetime | None = None
    # IANA time zone analytics use for days, weeks and months unless a query names another.
    time_zone: str = "UTC"
    tracking_plan: TrackingPlan = msgspec.field(default_factory=TrackingPlan)
    api_keys: list[ApiKeyGrant] = []


class CellConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a cell needs to serve its tenants without asking the control plane again."""

    contract: int = CONTRACT_VERSION
    # Changes whenever the content changes (a digest of it): the cell's ETag.
    version: str
    generated_at: dt.datetime
    tenants: list[TenantConfig]
    # Public keys (Ed25519, raw, URL-safe base64) that sign cell tokens for people (see contract/tokens.py).
    token_keys: list[str] = []


_encoder = msgspec.json.Encoder(order="deterministic")


def config_digest(tenants: list[TenantConfig], token_keys: list[str] | None = None) -> str:
    """A content digest: equal configs give equal versions, whatever the generation time."""
    content: object = tenants if not token_keys else [tenants, token_keys]
    return hashlib.sha256(_encoder.encode(content)).hexdigest()[:32]


def encode_config(config: CellConfig) -> bytes:
    return _encoder.encode(config)


def decode_config(payload: bytes) -> CellConfig:
    config = msgspec.json.decode(payload, type=CellConfig)
    if config.contract != CONTRACT_VERSION:
        raise ValueError(f"cell config contract {config.contract} is not the supported {CONTRACT_VERSION}")
    return config


USAGE_PATH = "/internal/v1/cell/usage"


class UsageRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One measurement a cell reports for one tenant; the control plane counts each ``id`` once.

    Metrics the cell sends: ``events`` (events accepted in the hour starting at ``timestamp``,
    in ``value``) and ``tracked_users`` (hashed user keys seen in that hour, in ``keys``; a
    billing period counts distinct keys across all its hours). Later features add
    ``messages.<channel>`` and ``storage_bytes``. A report for an hour that is still going on
    carries only what is new since the cell's previous report (a delta with its own id).
    """

    id: str
    tenant_id: str
    metric: str
    timestamp: dt.datetime
    value: int = 0
    keys: list[str] = []


class UsageReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a cell pushes to ``USAGE_PATH`` (authenticated like the config pull)."""

    contract: int = CONTRACT_VERSION
    cell_id: str
    records: list[UsageRecord]


class UsageReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """The control plane's answer: records newly stored, and records it already had (by id)."""

    stored: int
    duplicates: int


# --- tenant spaces: the control plane's provisioning asks a cell to create, export or remove one ---

SPACES_PATH = "/internal/v1/cell/spaces"


class SpaceSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What a tenant's space in a cell is made of (from its template)."""

    tenant_id: str
    stream_partitions: int = 1
    lake_retention_days: int = 395
    stores: list[str] = []


class Space(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's space in a cell: where each of its parts lives. ``created`` is False when it already existed."""

    tenant_id: str
    profiles: str
    lake_prefix: str
    stream_partitions: int
    created: bool = False


class SpaceExportRequest(msgspec.Struct, frozen=True, kw_only=True):
    # A name for this export inside the cell's archive area (letters, digits, - and _).
    label: str


class SpaceExport(msgspec.Struct, frozen=True, kw_only=True):
    """Where a tenant's data was archived, and what went in: lake objects and profiles."""

    tenant_id: str
    location: str
    lake_objects: int
    profiles: int
    bytes: int


class SpaceRemoval(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    lake_objects: int
    removed: bool
