"""The warehouse port: read-only SQL over one tenant's events, brought up to date with the lake."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import pyarrow as pa

from kernel.registry import DriverRegistry

SLOT_US = 900_000_000  # the ``counts`` rollup's grain: 15 minutes, a divisor of every time zone's offsets today

# The tables a query may read. Every driver exposes them with these columns and meanings.
TABLES = {
    "events": (
        "one row per distinct message id of the tenant (the copy received first): message_id, "
        "ts (event time, microseconds since the epoch, UTC), received_at (same unit), uid (the user as a "
        "dense integer; user id if known, else anonymous id), name (track event name; `$page` and `$screen` "
        "for page and screen calls), product_id (properties.product_id when a string), properties (JSON text), "
        "settled (true for rows stored in (uid, ts, message_id) order: a scan returns them in that order, so "
        "per-user work needs no sort; rows added since the last re-layout are not settled), first_ts (the "
        "user's first event time), prev_ts (the user's previous event time in (ts, message_id) order, NULL for "
        "the first), prev_same_ts (the same among the user's events of this name), revenue (properties.revenue "
        "when a JSON number, else NULL)"
    ),
    "users": "one row per user: uid, user_key ('u:' user id or 'a:' anonymous id), first_ts, last_ts",
    "counts": (
        "the events per 15-minute slot (slot = floor(ts / 900,000,000)) and name: slot, name, events; kept as "
        "data lands, so counts over a range cost its slots, not its events"
    ),
    "product_lines": (
        "one row per entry of properties.products[] of each event: message_id, uid, ts, name, line (index in "
        "the array), product_id (a string), price and quantity (numbers, NULL when not numbers)"
    ),
}


class Warehouse(Protocol):
    """Query code names the tenant explicitly on every call; a driver never lets one tenant's query
    read another tenant's rows (each tenant has its own tables, built from its own lake prefix)."""

    async def refresh(self, tenant_id: str) -> str:
        """Bring the tenant's tables up to what the lake holds now; return the data's generation.

        The generation changes whenever the tenant's lake files change (new, compacted or removed
        files), so it keys caches: a result stored under one generation is never served for another.
        """
        ...

    async def version(
        self, tenant_id: str, low_us: int | None = None, high_us: int | None = None, *, fresh: bool = True
    ) -> str:
        """A digest of the tenant's lake files in the hour partitions that instants in ``[low_us, high_us)``
        fall in (no bound when None), to key cached results on what a query reads.

        ``fresh`` lists those partitions of the lake now (and nothing else); otherwise it tells what the
        last ``refresh`` took in. Nothing is read into the warehouse either way.
        """
        ...

    async def fetch(self, tenant_id: str, sql: str, parameters: Sequence[Any] = ()) -> pa.Table:
        """Run a read-only query over the tenant's tables (``TABLES``).

        Call ``refresh`` first for results that reflect the lake as of now.
        """
        ...

    async def drop(self, tenant_id: str) -> None:
        """Forget everything held for the tenant (its lake prefix is untouched)."""
        ...

    async def close(self) -> None: ...


warehouse_drivers: DriverRegistry[Warehouse] = DriverRegistry[Warehouse]("warehouse", "LIVORA_WAREHOUSE_DRIVER")
