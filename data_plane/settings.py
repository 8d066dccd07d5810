"""Data-plane cell settings; every field is read from ``LIVORA_<FIELD>``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from kernel.settings import load_settings


class CellSettings(msgspec.Struct, kw_only=True, frozen=True):
    """Defaults give the built-in cell of `livora run` under ``./var/cell``."""

    # Folder for the cell's embedded state (stream log, config cache, lake).
    data_dir: str = "./var"
    # Interface and port the cell's ingestion API listens on.
    cell_host: str = "127.0.0.1"
    cell_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8001
    # Control plane to pull config from (a remote cell); empty in the all-in-one mode.
    control_plane_url: str = ""
    # The credential this cell presents to the control plane (and asks of callers of its operations API).
    cell_secret: str = ""
    # This cell's name in the usage it reports to the control plane.
    cell_id: str = "local"
    # How often the cell sends usage (events accepted, tracked users) to the control plane.
    usage_push_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    # How often the cell pulls its config (revocations take effect within about this long).
    config_poll_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    # Largest event and request the ingestion API accepts (Segment's limits).
    max_event_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 32 * 1024
    max_request_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 500 * 1024
    # The status of an accepted request: 202, or 200 for SDKs that take nothing else as success
    # (RudderStack's Python SDK retries and finally drops on any other status).
    ingest_success_status: Literal[200, 202] = 202
    # Never more events in one batch than this, whatever the plan says.
    max_batch_events_ceiling: Annotated[int, msgspec.Meta(ge=1)] = 2_500
    # Where the per-tenant token buckets live, shared by every ingest process of the cell: sqlite (a
    # file beside the cell's state, for the processes of one machine), redis (every machine), or
    # memory (one process only).
    rate_limit_driver: str = "sqlite"

    # The lake: local (a folder) or s3 (a bucket, optionally an S3-compatible endpoint).
    lake_driver: str = "local"
    lake_dir: str = ""
    lake_bucket: str = ""
    lake_prefix: str = ""
    lake_endpoint_url: str = ""
    lake_region: str = ""
    # A lake file is written when this many events wait, or the oldest has waited this long.
    lake_flush_rows: Annotated[int, msgspec.Meta(ge=1)] = 20_000
    lake_flush_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0

    # The warehouse: a DuckDB database per tenant kept in step with the lake, under this folder (empty:
    # DATA_DIR/cell/warehouse), using at most this many threads (0: one per core) and this much memory
    # (DuckDB's notation, e.g. "2GB"; empty: DuckDB's default of 80% of RAM).
    warehouse_dir: str = ""
    warehouse_threads: Annotated[int, msgspec.Meta(ge=0, le=256)] = 0
    warehouse_memory_limit: str = ""
    # Analytics results are cached per tenant and query: memory (one process) or redis (shared), for at
    # most this long (new data for the tenant replaces them sooner).
    analytics_cache_driver: str = "memory"
    analytics_cache_seconds: Annotated[float, msgspec.Meta(gt=0, le=300)] = 300.0
    # Redis for the redis drivers, e.g. redis://127.0.0.1:6379/0 (the same variable as the control plane's).
    redis_url: str = ""

    @property
    def lake_path(self) -> Path:
        return Path(self.lake_dir) if self.lake_dir else Path(self.data_dir) / "lake"

    @property
    def cell_dir(self) -> Path:
        return Path(self.data_dir) / "cell"

    @property
    def warehouse_path(self) -> Path:
        return Path(self.warehouse_dir) if self.warehouse_dir else self.cell_dir / "warehouse"

    @property
    def usage_path(self) -> Path:
        """The usage ledger shared by the cell's ingest server and its workers."""
        return self.cell_dir / "usage.db"

    @property
    def rate_limit_path(self) -> Path:
        return self.cell_dir / "ratelimit.db"

    @property
    def config_cache_path(self) -> Path:
        return self.cell_dir / "config.json"

    @classmethod
    def from_env(cls, **overrides: object) -> CellSettings:
        return load_settings(cls, **overrides)
