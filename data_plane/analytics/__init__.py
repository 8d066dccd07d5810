"""Analytics over the warehouse: funnels, retention, trends and KPIs, products, LTV, the live feed."""

from __future__ import annotations

from dataclasses import dataclass

from data_plane.analytics.auth import AnalyticsAuth
from data_plane.analytics.service import AnalyticsService, TenantView
from data_plane.contract.keeper import ConfigKeeper
from data_plane.lake.store import ObjectStore
from data_plane.settings import CellSettings
from data_plane.warehouse import Warehouse, warehouse_drivers
from kernel.ports.kv import KeyValueStore, kv_drivers

__all__ = ["Analytics", "AnalyticsAuth", "AnalyticsService", "TenantView", "open_analytics"]


@dataclass
class Analytics:
    service: AnalyticsService
    auth: AnalyticsAuth
    warehouse: Warehouse
    cache: KeyValueStore

    async def close(self) -> None:
        await self.warehouse.close()
        await self.cache.close()


def open_analytics(settings: CellSettings, lake: ObjectStore, keeper: ConfigKeeper) -> Analytics:
    """The cell's analytics, as its settings describe them (unknown driver names raise ``ConfigError``)."""
    warehouse = warehouse_drivers.create(
        "duckdb",
        store=lake,
        directory=str(settings.warehouse_path),
        threads=settings.warehouse_threads or None,
        memory_limit=settings.warehouse_memory_limit or None,
    )
    cache = kv_drivers.create(
        settings.analytics_cache_driver, redis_url=settings.redis_url or None, prefix="livora:analytics:"
    )
    service = AnalyticsService(warehouse, cache, cache_seconds=settings.analytics_cache_seconds)
    return Analytics(service, AnalyticsAuth(keeper), warehouse, cache)
