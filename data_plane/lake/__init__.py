"""The lake: accepted events as Parquet under ``tenants/{tenant}/events/date=YYYY-MM-DD/hour=HH/``."""

from data_plane.lake.compactor import Compaction, Compactor, drop_tenant
from data_plane.lake.layout import Partition, check_tenant_id, events_prefix, tenant_prefix
from data_plane.lake.reader import count, count_by_hour, deduplicate, read_partition
from data_plane.lake.schema import EVENT_SCHEMA, from_table, to_table
from data_plane.lake.store import (
    LocalObjectStore,
    MemoryObjectStore,
    ObjectInfo,
    ObjectStore,
    S3ObjectStore,
    object_store_drivers,
)
from data_plane.lake.writer import LakeWriter

__all__ = [
    "EVENT_SCHEMA",
    "Compaction",
    "Compactor",
    "LakeWriter",
    "LocalObjectStore",
    "MemoryObjectStore",
    "ObjectInfo",
    "ObjectStore",
    "Partition",
    "S3ObjectStore",
    "check_tenant_id",
    "count",
    "count_by_hour",
    "deduplicate",
    "drop_tenant",
    "events_prefix",
    "from_table",
    "object_store_drivers",
    "read_partition",
    "tenant_prefix",
    "to_table",
]
