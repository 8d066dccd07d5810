"""Pipeline settings (``LIVORA_<FIELD>``) and the factories that turn them into ready steps."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Annotated

import msgspec

from data_plane.pipeline.dedup import Deduplicator, dedup_drivers
from data_plane.pipeline.enrich import Enricher
from data_plane.pipeline.geo import open_geo_locator
from data_plane.pipeline.sessions import Sessionizer
from kernel.settings import load_settings

Seconds = Annotated[int, msgspec.Meta(ge=1)]


class PipelineSettings(msgspec.Struct, kw_only=True, frozen=True):
    """Defaults give a working embedded pipeline under ``./var``."""

    # Dedup store: sqlite (embedded, one file) or redis (shared by every worker of the cell).
    dedup_driver: str = "sqlite"
    # File of the sqlite dedup store.
    dedup_sqlite_path: str = "var/pipeline/dedup.db"
    # How long a message id suppresses repeats, measured on received_at.
    dedup_window_seconds: Seconds = 7 * 24 * 3600
    # Redis for the redis drivers, e.g. redis://127.0.0.1:6379/0, and the prefix of every key written.
    redis_url: str = ""
    kv_prefix: str = "livora:"
    # A MaxMind .mmdb (GeoLite2/GeoIP2 Country or City; needs the maxminddb package); empty uses geoip2fast.
    geoip_mmdb_path: str = ""
    # A session ends after this much silence, and never lasts longer than the maximum.
    session_idle_seconds: Seconds = 30 * 60
    session_max_seconds: Seconds = 24 * 3600
    # Entries a worker took and left unacked this long (it died) are taken over by another worker.
    # A live worker settles what it holds within half of this (it flushes the lake sooner if need be).
    reclaim_idle_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    # This worker's share of the stream's partitions, "i/n" (partition p where p % n == i), so that
    # n workers split the stream and each user stays with one worker; empty: every partition.
    worker_shard: Annotated[str, msgspec.Meta(pattern=r"^(\d+/\d+)?$")] = ""
    # About this many events per stream read (entries are read by count, each holds several events).
    worker_batch_events: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 4_000


def load_pipeline_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> PipelineSettings:
    return load_settings(PipelineSettings, environ, **overrides)


def build_deduplicator(settings: PipelineSettings) -> Deduplicator:
    store = dedup_drivers.create(
        settings.dedup_driver,
        sqlite_path=settings.dedup_sqlite_path,
        redis_url=settings.redis_url,
        prefix=settings.kv_prefix,
    )
    return Deduplicator(store, dt.timedelta(seconds=settings.dedup_window_seconds))


def build_enricher(settings: PipelineSettings) -> Enricher:
    """Raises ``ConfigError`` naming ``LIVORA_GEOIP_MMDB_PATH`` when that database cannot be used."""
    return Enricher(open_geo_locator(settings.geoip_mmdb_path or None))


def build_sessionizer(settings: PipelineSettings) -> Sessionizer:
    return Sessionizer(
        idle=dt.timedelta(seconds=settings.session_idle_seconds),
        max_length=dt.timedelta(seconds=settings.session_max_seconds),
    )
