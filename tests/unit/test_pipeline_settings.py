"""Pipeline settings from LIVORA_* variables, and the steps built from them."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from pathlib import Path

import pytest

from data_plane.pipeline.dedup_sqlite import SqliteDedupStore
from data_plane.pipeline.geo import GeoIP2FastLocator
from data_plane.pipeline.settings import (
    PipelineSettings,
    build_deduplicator,
    build_enricher,
    build_sessionizer,
    load_pipeline_settings,
)
from kernel.errors import ConfigError


def test_defaults_give_an_embedded_pipeline(tmp_path: Path) -> None:
    settings = load_pipeline_settings({}, dedup_sqlite_path=str(tmp_path / "d.sqlite3"))
    dedup = build_deduplicator(settings)
    assert isinstance(dedup.store, SqliteDedupStore) and dedup.window == dt.timedelta(days=7)
    asyncio.run(dedup.close())
    assert isinstance(build_enricher(settings).geo, GeoIP2FastLocator)
    sessionizer = build_sessionizer(settings)
    assert (sessionizer.idle_us, sessionizer.max_us) == (30 * 60 * 10**6, 24 * 3600 * 10**6)


def test_variables_are_read_and_checked() -> None:
    settings = load_pipeline_settings(
        {"LIVORA_DEDUP_WINDOW_SECONDS": "3600", "LIVORA_SESSION_IDLE_SECONDS": "900", "LIVORA_DEDUP_DRIVER": "redis"}
    )
    assert (settings.dedup_window_seconds, settings.session_idle_seconds) == (3600, 900)
    with pytest.raises(ConfigError) as caught:
        build_deduplicator(settings)
    assert caught.value.variable == "LIVORA_REDIS_URL"
    with pytest.raises(ConfigError) as caught:
        load_pipeline_settings({"LIVORA_DEDUP_WINDOW_SECONDS": "0"})
    assert caught.value.variable == "LIVORA_DEDUP_WINDOW_SECONDS"
    with pytest.raises(ConfigError) as caught:
        build_deduplicator(PipelineSettings(dedup_driver="kafka"))
    assert caught.value.variable == "LIVORA_DEDUP_DRIVER"


def test_a_maxmind_path_without_maxminddb_stops_start_up_naming_the_setting(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "maxminddb", None)
    settings = load_pipeline_settings({"LIVORA_GEOIP_MMDB_PATH": str(tmp_path / "GeoLite2-City.mmdb")})
    with pytest.raises(ConfigError) as caught:
        build_enricher(settings)
    assert caught.value.variable == "LIVORA_GEOIP_MMDB_PATH"
    assert "maxminddb" in str(caught.value)
