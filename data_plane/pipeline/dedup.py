"""Dedup by (tenant, message id) within a window, over a small store port with embedded and Redis drivers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol

from data_plane.events import Event
from kernel.errors import ConfigError
from kernel.registry import DriverRegistry

DEFAULT_WINDOW = dt.timedelta(days=7)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


class Sighting(NamedTuple):
    """One event seen by the pipeline.

    ``at`` is the event's ``received_at`` (stamped by the cell, so a redelivery carries the same
    value and a client cannot choose it). ``delivery`` is the stream entry id when the caller has
    one: a sighting with the same delivery as the recorded first sighting is that same event
    delivered again after a crash, not a duplicate, so at-least-once redelivery never loses it.
    """

    tenant_id: str
    message_id: str
    at: dt.datetime
    delivery: str | None = None


class StoredSighting(NamedTuple):
    """A sighting in store units: integer microseconds since the epoch, exact on every driver."""

    tenant_id: str
    message_id: str
    at_us: int
    delivery: str | None


class DedupStore(Protocol):
    """Remembers the first sighting of each (tenant, message id); the only state dedup needs.

    Both drivers decide with the same rule (see ``is_first_sighting``) and apply each sighting
    atomically, in the order given, so duplicates inside one batch are caught too.
    """

    async def record(self, sightings: Sequence[StoredSighting], window_us: int) -> list[bool]:
        """Record each sighting; ``True`` where it is a first sighting (keep the event)."""
        ...

    async def release(self, tenant_id: str, message_id: str, delivery: str) -> None:
        """Forget the message's first sighting if it was recorded by ``delivery`` (which then did not
        reach the lake, e.g. it was dead-lettered): a replay of it must not count as a duplicate."""
        ...

    async def purge(self, cutoff_us: int) -> int:
        """Forget first sightings at or before ``cutoff_us`` (expired); returns how many, when known."""
        ...

    async def forget_tenant(self, tenant_id: str) -> None:
        """Drop every record of one tenant (tenant deletion)."""
        ...

    async def close(self) -> None: ...


def is_first_sighting(
    recorded: tuple[int, str | None] | None, at_us: int, delivery: str | None, window_us: int
) -> tuple[bool, tuple[int, str | None] | None]:
    """The dedup rule shared by the drivers: (keep?, record to store or ``None`` to leave it).

    A message is a duplicate while its recorded first sighting is less than ``window`` before
    ``at``. NOTE: a sighting stamped *earlier* than the record is a duplicate too: the window is
    about how long ago we first saw it, and replays of old stream data must not resurrect it.
    """
    if recorded is None or at_us - recorded[0] >= window_us:
        return True, (at_us, delivery)
    if delivery is not None and delivery == recorded[1]:
        return True, None
    return False, None


def to_us(moment: dt.datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("dedup times must be timezone-aware")
    return (moment - _EPOCH) // _MICROSECOND


class Deduplicator:
    """Drops repeated (tenant, message id) pairs seen within ``window`` (default 7 days)."""

    def __init__(self, store: DedupStore, window: dt.timedelta = DEFAULT_WINDOW) -> None:
        if window <= dt.timedelta(0):
            raise ValueError("the dedup window must be positive")
        self.store = store
        self.window = window
        self._window_us = window // _MICROSECOND

    async def seen_before(
        self, tenant_id: str, message_id: str, at: dt.datetime, *, delivery: str | None = None
    ) -> bool:
        """``True`` when this is a duplicate; otherwise records the first sighting (atomically)."""
        [new] = await self.filter_new([Sighting(tenant_id, message_id, at, delivery)])
        return not new

    async def filter_new(self, sightings: Iterable[Sighting | tuple[str, str, dt.datetime]]) -> list[bool]:
        """One flag per sighting, in order: ``True`` to keep (first sighting), ``False`` to drop."""
        # An empty delivery id means none (the Redis script cannot tell the two apart).
        stored = [StoredSighting(s[0], s[1], to_us(s[2]), (s[3] if len(s) > 3 else None) or None) for s in sightings]
        if not stored:
            return []
        return await self.store.record(stored, self._window_us)

    async def new_events(self, events: Sequence[Event], deliveries: Sequence[str] | None = None) -> list[Event]:
        """The events of a batch that are not duplicates, keyed on ``received_at``."""
        if deliveries is not None and len(deliveries) != len(events):
            raise ValueError("one delivery id per event, or none")
        keys = [
            Sighting(e.tenant_id, e.message_id, e.received_at, deliveries[i] if deliveries else None)
            for i, e in enumerate(events)
        ]
        flags = await self.filter_new(keys)
        return [event for event, keep in zip(events, flags, strict=True) if keep]

    async def release(self, tenant_id: str, message_id: str, delivery: str) -> None:
        """Undo a first sighting by ``delivery`` (see ``DedupStore.release``)."""
        await self.store.release(tenant_id, message_id, delivery)

    async def purge(self, now: dt.datetime) -> int:
        """Drop records that expired by ``now``.

        CAUTION: a purged message seen again with a time before ``now`` would count as new; call
        it with a ``now`` well behind the oldest event still in flight (e.g. wall clock - 1 h).
        """
        return await self.store.purge(to_us(now - self.window))

    async def close(self) -> None:
        await self.store.close()


dedup_drivers: DriverRegistry[DedupStore] = DriverRegistry[DedupStore]("dedup", "LIVORA_DEDUP_DRIVER")


@dedup_drivers.register("sqlite")
def _sqlite_driver(*, sqlite_path: str = "var/pipeline/dedup.db", **_: object) -> DedupStore:
    # Imported here: the driver modules import this one for the shared rule.
    from data_plane.pipeline.dedup_sqlite import SqliteDedupStore

    return SqliteDedupStore(sqlite_path)


@dedup_drivers.register("redis")
def _redis_driver(*, redis_url: str | None = None, prefix: str = "livora:", **_: object) -> DedupStore:
    from data_plane.pipeline.dedup_redis import RedisDedupStore

    if not redis_url:
        raise ConfigError("LIVORA_REDIS_URL", "a Redis URL is required when LIVORA_DEDUP_DRIVER=redis")
    return RedisDedupStore(redis_url, prefix)
