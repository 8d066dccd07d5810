"""Where lake objects live: every key is built here, from a checked tenant id."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

# NOTE: stricter than "no slash, no ..": the id becomes a path segment on disk, an S3 key part and a
# hive partition value, so only characters that mean nothing to any of them are allowed.
_TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_PARTITION_KEY = re.compile(
    r"tenants/(?P<tenant>[^/]+)/events/date=(?P<date>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})/(?P<name>[^/]+)"
)

TENANTS_PREFIX = "tenants/"
PART_PREFIX = "part-"
COMPACT_PREFIX = "compact-"
SUFFIX = ".parquet"


def check_tenant_id(tenant_id: str) -> str:
    """Return ``tenant_id`` if it is safe as a path segment; raise ``ValueError`` otherwise.

    Refuses the empty string, ``.``/``..``, separators and anything outside ``[A-Za-z0-9_-]``
    (at most 64 characters, not starting with ``-`` or ``_``).
    """
    if not isinstance(tenant_id, str) or not _TENANT_ID.fullmatch(tenant_id):
        raise ValueError(f"not a usable tenant id for lake paths: {tenant_id!r}")
    return tenant_id


def tenant_prefix(tenant_id: str) -> str:
    """Everything the lake holds for one tenant; deleting the tenant deletes exactly this prefix."""
    return f"{TENANTS_PREFIX}{check_tenant_id(tenant_id)}/"


def events_prefix(tenant_id: str) -> str:
    """The tenant's event table, as the warehouse globs it: ``{prefix}**/*.parquet`` with hive partitions."""
    return f"{tenant_prefix(tenant_id)}events/"


def as_utc(moment: dt.datetime) -> dt.datetime:
    """``moment`` in UTC; a naive datetime is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


@dataclass(frozen=True, order=True)
class Partition:
    """One tenant's events of one UTC hour: ``tenants/{tenant}/events/date=YYYY-MM-DD/hour=HH/``."""

    tenant_id: str
    date: dt.date
    hour: int

    def __post_init__(self) -> None:
        check_tenant_id(self.tenant_id)
        if type(self.date) is not dt.date:
            raise ValueError(f"partition date must be a datetime.date, got {self.date!r}")
        if not 0 <= self.hour <= 23:
            raise ValueError(f"partition hour must be 0..23, got {self.hour!r}")

    @classmethod
    def of(cls, tenant_id: str, moment: dt.datetime) -> Partition:
        """The partition an event with (corrected) ``timestamp`` ``moment`` belongs to."""
        utc = as_utc(moment)
        return cls(tenant_id, utc.date(), utc.hour)

    @classmethod
    def from_key(cls, key: str) -> Partition | None:
        """The partition holding ``key``, or ``None`` when the key is not an event file."""
        match = _PARTITION_KEY.fullmatch(key)
        if match is None or not match["name"].endswith(SUFFIX):
            return None
        try:
            return cls(match["tenant"], dt.date.fromisoformat(match["date"]), int(match["hour"]))
        except ValueError:
            return None

    @property
    def prefix(self) -> str:
        return f"{events_prefix(self.tenant_id)}date={self.date.isoformat()}/hour={self.hour:02d}/"

    @property
    def start(self) -> dt.datetime:
        """First instant of the hour (UTC)."""
        return dt.datetime.combine(self.date, dt.time(self.hour), tzinfo=dt.UTC)

    @property
    def end(self) -> dt.datetime:
        """First instant after the hour (UTC)."""
        return self.start + dt.timedelta(hours=1)

    def key(self, name: str) -> str:
        if "/" in name or not name.endswith(SUFFIX):
            raise ValueError(f"not a lake file name: {name!r}")
        return self.prefix + name


def _digest(lines: Iterable[str]) -> str:
    hasher = hashlib.sha256()
    for line in sorted(lines):
        hasher.update(line.encode())
        hasher.update(b"\n")
    return hasher.hexdigest()[:32]


def part_name(deliveries: Iterable[tuple[str, str]]) -> str:
    """Name of a writer file holding these ``(stream_id, message_id)`` deliveries, order ignored.

    The same batch always gets the same name, so a retried flush overwrites instead of adding a copy.
    Message ids are hashed in too: a stream whose ids restart (a recreated log) cannot then reuse
    the name of an older file with other events and overwrite it.
    """
    digest = _digest(f"{stream_id}\t{message_id}" for stream_id, message_id in deliveries)
    return f"{PART_PREFIX}{digest}{SUFFIX}"


def compact_name(input_keys: Iterable[str]) -> str:
    """Name of the file merging exactly these input files (order ignored).

    Deterministic: concurrent or repeated compactions of the same inputs write the same bytes to
    the same key, so an overwrite never changes what a key holds.
    """
    return f"{COMPACT_PREFIX}{_digest(key.rpartition('/')[2] for key in input_keys)}{SUFFIX}"
