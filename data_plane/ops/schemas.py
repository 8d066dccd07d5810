"""Wire types of the cell's operations API."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec


class ReconciledHour(msgspec.Struct, kw_only=True):
    """One tenant-hour (UTC hour of ``receivedAt``). ``difference`` = accepted - (in_lake +
    dead_lettered + duplicates): above 0 while events are still in flight, 0 once they landed.
    ``billed``: events charged for, each message id once (written + dead-lettered); an SDK's
    retries count in ``accepted`` and ``duplicates`` but not here."""

    tenant_id: str
    hour: dt.datetime
    accepted: int
    in_lake: int
    dead_lettered: int
    duplicates: int
    billed: int
    difference: int


class Reconciliation(msgspec.Struct, kw_only=True):
    balanced: bool
    hours: list[ReconciledHour]


class DeadLetterView(msgspec.Struct, kw_only=True):
    """One dead letter: the failed events of one stream entry (often one event), replayed together.
    ``message_id`` is the first event's, ``message_ids`` every event's (empty when undecodable)."""

    id: str
    tenant_id: str
    message_id: str | None
    message_ids: list[str]
    received_at: dt.datetime
    reason: str
    deliveries: int
    dead_lettered_at: dt.datetime
    entry_id: str
    # The events as they were accepted: a list of events (one object for entries of older cells),
    # or a string when the payload no longer decodes.
    payload: Any


class ReplayRequest(msgspec.Struct, kw_only=True):
    ids: Annotated[list[str], msgspec.Meta(min_length=1, max_length=1000)]


class Replayed(msgspec.Struct, kw_only=True):
    replayed: int
    unknown: list[str]
