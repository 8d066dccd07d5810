"""Operations on a cell's durable state: reconciliation, dead letters and their replay."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence

import msgspec

from data_plane.events import decode_entry
from data_plane.lake.store import ObjectStore
from data_plane.ops import schemas
from data_plane.stream.port import DeadLetter, Stream
from data_plane.usage.ledger import UsageLedger, hour_of
from data_plane.usage.reconcile import reconcile

MAX_DEAD_LETTERS = 1000


def _origins(letter: DeadLetter) -> list[tuple[str, dt.datetime, str | None]]:
    """(tenant, received_at, message_id) of each event of a dead letter; one entry stamped with the
    letter's own key and time when the payload does not decode."""
    try:
        events = decode_entry(letter.payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return [(letter.partition_key.split("/", 1)[0], letter.dead_lettered_at, None)]
    return [(event.tenant_id, event.received_at, event.message_id) for event in events]


class Operations:
    def __init__(self, stream: Stream, ledger: UsageLedger, lake: ObjectStore) -> None:
        self.stream = stream
        self.ledger = ledger
        self.lake = lake

    async def reconciliation(
        self, tenant_id: str | None, since: dt.datetime | None, until: dt.datetime | None
    ) -> schemas.Reconciliation:
        rows = await reconcile(self.ledger, self.lake, tenant_id=tenant_id, since=since, until=until)
        return schemas.Reconciliation(
            balanced=all(row.balanced for row in rows),
            hours=[
                schemas.ReconciledHour(
                    tenant_id=row.tenant_id,
                    hour=row.hour,
                    accepted=row.accepted,
                    in_lake=row.in_lake,
                    dead_lettered=row.dead_lettered,
                    duplicates=row.duplicates,
                    billed=row.billed,
                    difference=row.difference,
                )
                for row in rows
            ],
        )

    async def dead_letters(self, tenant_id: str | None, limit: int) -> list[schemas.DeadLetterView]:
        views = []
        for letter in await self.stream.dead_letters(MAX_DEAD_LETTERS):
            origins = _origins(letter)
            tenant, received_at, message_id = origins[0]
            if tenant_id is not None and tenant != tenant_id:
                continue
            decoded = message_id is not None
            views.append(
                schemas.DeadLetterView(
                    id=letter.id,
                    tenant_id=tenant,
                    message_id=message_id,
                    message_ids=[origin[2] for origin in origins if origin[2] is not None],
                    received_at=received_at,
                    reason=letter.reason,
                    deliveries=letter.deliveries,
                    dead_lettered_at=letter.dead_lettered_at,
                    entry_id=letter.entry_id,
                    payload=msgspec.json.decode(letter.payload) if decoded else letter.payload.decode(errors="replace"),
                )
            )
            if len(views) >= limit:
                break
        return views

    async def replay(self, ids: Sequence[str]) -> schemas.Replayed:
        """Append the dead letters again; the ledger stops counting them as dead (their new entries
        are counted when the pipeline handles them)."""
        wanted = set(ids)
        letters = [letter for letter in await self.stream.dead_letters(MAX_DEAD_LETTERS) if letter.id in wanted]
        replayed = await self.stream.replay([letter.id for letter in letters])
        hours: Counter[tuple[str, dt.datetime]] = Counter()
        for letter in letters:
            # A dead letter may hold several events; each comes back (and is counted) on its own.
            for tenant, received_at, _ in _origins(letter):
                hours[(tenant, hour_of(received_at))] += 1
        for (tenant, hour), count in hours.items():
            await self.ledger.replayed(tenant, hour, count)
        return schemas.Replayed(replayed=replayed, unknown=sorted(wanted - {letter.id for letter in letters}))
