"""Render the committed OpenAPI documents from the code."""

from __future__ import annotations

import json

from control_plane.app import create_app
from control_plane.settings import Settings


def render_control_plane() -> str:
    """Deterministic JSON of the control plane's OpenAPI document (no database is opened)."""
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"))
    return json.dumps(app.openapi_schema.to_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
