"""Helpers for analytics tests: events, written to a real lake as the lake writer does, and tenant views."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from data_plane.analytics.service import TenantView
from data_plane.contract.schemas import TrackingPlan
from data_plane.events import Event
from data_plane.lake import LakeWriter
from data_plane.lake.store import ObjectStore


def event(
    message_id: str,
    name: str,
    user: str,
    timestamp: dt.datetime,
    *,
    tenant_id: str = "acme",
    properties: dict | None = None,
    received_at: dt.datetime | None = None,
    anonymous: bool = False,
    kind: str = "track",
) -> Event:
    return Event(
        message_id=message_id,
        tenant_id=tenant_id,
        source_id="src_test",
        type=kind,  # type: ignore[arg-type]
        event=name if kind == "track" else None,
        name=name if kind != "track" else None,
        user_id=None if anonymous else user,
        anonymous_id=user if anonymous else None,
        timestamp=timestamp,
        received_at=received_at or timestamp,
        properties=properties or {},
    )


async def write_lake(store: ObjectStore, batches: Sequence[Sequence[Event]]) -> None:
    """Each batch becomes its own files, so a message id in two batches is stored twice, as before compaction."""
    writer = LakeWriter(store, max_rows=1_000_000)
    for number, batch in enumerate(batches):
        for index, item in enumerate(batch):
            writer.add(item, f"{number}-{index}")
        await writer.flush()


def tenant(zone: str = "UTC", plan: TrackingPlan | None = None, tenant_id: str = "acme") -> TenantView:
    return TenantView(tenant_id, zone, plan or TrackingPlan())
