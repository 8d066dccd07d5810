"""Cell token types."""

from __future__ import annotations

import datetime as dt

import msgspec


class CellToken(msgspec.Struct, kw_only=True):
    # Send it to the tenant's cell as `Authorization: Bearer <token>` (e.g. POST /v1/analytics/funnels).
    token: str
    tenant_id: str
    role: str
    expires_at: dt.datetime
