"""Render the committed OpenAPI documents from the code."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from litestar import Litestar

from control_plane.app import create_app
from control_plane.settings import Settings
from data_plane.app import create_cell_app
from data_plane.contract.keeper import ConfigKeeper, InProcessConfigFetcher
from data_plane.contract.schemas import CellConfig
from data_plane.settings import CellSettings
from data_plane.stream.log import LogStream


def _render(app: Litestar) -> str:
    schema: dict[str, Any] = app.openapi_schema.to_schema()
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_control_plane() -> str:
    """Deterministic JSON of the control plane's OpenAPI document (no database is opened)."""
    return _render(create_app(Settings(database_url="sqlite+aiosqlite:///:memory:")))


def render_data_plane() -> str:
    """Deterministic JSON of a cell's public API (nothing is started: no config pull, no stream file)."""

    async def no_config() -> CellConfig:
        raise RuntimeError("not used while rendering")

    with tempfile.TemporaryDirectory() as scratch:
        keeper = ConfigKeeper(InProcessConfigFetcher(no_config), Path(scratch) / "config.json")
        return _render(create_cell_app(CellSettings(data_dir=scratch), keeper, LogStream(Path(scratch) / "s.db")))


# File name under openapi/ → how to render it.
DOCUMENTS: dict[str, Callable[[], str]] = {
    "control-plane.json": render_control_plane,
    "data-plane.json": render_data_plane,
}
