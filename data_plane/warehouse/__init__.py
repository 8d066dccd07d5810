"""The warehouse: one tenant's deduplicated events, queried with SQL (DuckDB over the lake)."""

from data_plane.warehouse.duckdb_driver import DuckDBWarehouse
from data_plane.warehouse.port import Warehouse, warehouse_drivers

__all__ = ["DuckDBWarehouse", "Warehouse", "warehouse_drivers"]
