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


class SourceConfig(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    kind: Literal["web", "server", "mobile"]
    # SHA-256 of every write key accepted now: the current one, and one in its rotation grace.
    write_key_hashes: list[str]
    allowed_origins: list[str] = []
    # When the key in grace stops (the cell drops its hash then, even before the next pull).
    previous_valid_until: dt.datetime | None = None
    previous_write_key_hash: str | None = None


class TenantConfig(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    status: Literal["pending", "provisioning", "active", "suspended", "deleting", "deleted"]
    plan: str
    limits: Limits
    sources: list[SourceConfig]


class CellConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a cell needs to serve its tenants without asking the control plane again."""

    contract: int = CONTRACT_VERSION
    # Changes whenever the content changes (a digest of it): the cell's ETag.
    version: str
    generated_at: dt.datetime
    tenants: list[TenantConfig]


_encoder = msgspec.json.Encoder(order="deterministic")


def config_digest(tenants: list[TenantConfig]) -> str:
    """A content digest: equal configs give equal versions, whatever the generation time."""
    return hashlib.sha256(_encoder.encode(tenants)).hexdigest()[:32]


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
