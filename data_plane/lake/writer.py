"""Micro-batches accepted events into one Parquet file per tenant-hour partition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from data_plane.events import Event
from data_plane.lake.layout import Partition, as_utc, part_name
from data_plane.lake.schema import encode_parquet, sort_rows, to_table
from data_plane.lake.store import ObjectStore


@dataclass
class _Batch:
    """Events of one partition to be written as one file, and the deliveries they came from."""

    partition: Partition
    since: float  # clock() when the first event was buffered
    events: dict[str, Event] = field(default_factory=dict)  # message_id -> event
    deliveries: dict[str, str] = field(default_factory=dict)  # stream_id -> message_id

    @property
    def key(self) -> str:
        return self.partition.key(part_name(self.deliveries.items()))


def _encode(events: Sequence[Event]) -> bytes:
    return encode_parquet(sort_rows(to_table(events)))


class LakeWriter:
    """Buffers events per (tenant, UTC date, UTC hour) of their corrected ``timestamp``; ``flush``
    writes each buffer as one zstd Parquet file and answers the stream ids now durable.

    - ``add(event, stream_id)`` never does I/O. The caller flushes when ``due()``: once
      ``max_rows`` events are buffered, or the oldest buffered one has waited ``max_age_s``
      (``seconds_until_due`` says how long to sleep). Stop adding while flushes fail: buffers grow.
    - A file's name is a digest of its batch's ``(stream_id, message_id)`` pairs, so writing the
      same batch again (a retry after a failed or cancelled flush, or the same deliveries batched
      the same way after a crash) overwrites the same object instead of adding a copy.
    - A batch whose write failed is kept as it is and retried first, under the same name; new
      events go into new batches. Stream ids of batches written before a failure are returned by
      the next successful ``flush``: ack only what ``flush`` returns.
    - Within a batch, a repeated message id is stored once (the earliest ``received_at``);
      across batches the ``Compactor`` removes repeats.
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        max_rows: int = 10_000,
        max_age_s: float = 5.0,
        concurrency: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_rows < 1 or max_age_s <= 0 or concurrency < 1:
            raise ValueError("max_rows and concurrency must be at least 1, max_age_s positive")
        self._store = store
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._clock = clock
        self._open: dict[Partition, _Batch] = {}
        self._slots_open: dict[tuple[str, int, int, int, int], _Batch] = {}
        self._retry: list[_Batch] = []
        self._durable: list[str] = []
        self._flushing = asyncio.Lock()
        self._slots = asyncio.Semaphore(concurrency)

    def add(self, event: Event, stream_id: str) -> None:
        """Buffer one delivery. ``ValueError`` when the event's tenant id cannot name a lake path."""
        utc = as_utc(event.timestamp)
        # Looked up by a plain tuple: building (and checking) a Partition per event costs more.
        slot = (event.tenant_id, utc.year, utc.month, utc.day, utc.hour)
        batch = self._slots_open.get(slot)
        if batch is None:
            partition = Partition(event.tenant_id, utc.date(), utc.hour)
            batch = self._open.get(partition)
            if batch is None:
                batch = self._open[partition] = _Batch(partition, self._clock())
            self._slots_open[slot] = batch
        if stream_id in batch.deliveries:
            return
        kept = batch.events.get(event.message_id)
        if kept is None or as_utc(event.received_at) < as_utc(kept.received_at):
            batch.events[event.message_id] = event
        batch.deliveries[stream_id] = event.message_id

    @property
    def buffered(self) -> int:
        """Events waiting to be written, including those of failed batches."""
        return sum(len(batch.events) for batch in (*self._retry, *self._open.values()))

    def seconds_until_due(self) -> float | None:
        """Seconds until ``due()`` turns true by age alone (0 when it is due); ``None`` when idle."""
        if self._retry or self._durable or self.buffered >= self.max_rows:
            return 0.0
        if not self._open:
            return None
        oldest = min(batch.since for batch in self._open.values())
        return max(0.0, oldest + self.max_age_s - self._clock())

    def due(self) -> bool:
        """True when a flush should run now."""
        return self.seconds_until_due() == 0.0

    async def flush(self) -> list[str]:
        """Write every buffered batch; return the stream ids now durable in the lake.

        Raises the first write error (``kernel.errors.Unavailable`` from the store) after trying
        every batch; failed batches stay buffered and the stream ids already written wait for the
        next successful call.
        """
        async with self._flushing:
            batches = [*self._retry, *self._open.values()]
            self._retry, self._open, self._slots_open = [], {}, {}
            try:
                results = await asyncio.gather(*(self._write(batch) for batch in batches), return_exceptions=True)
            except BaseException:
                # Cancelled mid-way: some files may exist, none is acked. Rewriting a batch under its
                # name is harmless, so every batch goes back for the next flush.
                self._retry.extend(batches)
                raise
            errors: list[BaseException] = []
            for batch, result in zip(batches, results, strict=True):
                if isinstance(result, BaseException):
                    self._retry.append(batch)
                    errors.append(result)
                else:
                    self._durable.extend(batch.deliveries)
            if errors:
                raise errors[0]
            durable, self._durable = self._durable, []
            return durable

    async def _write(self, batch: _Batch) -> None:
        async with self._slots:
            data = await asyncio.to_thread(_encode, list(batch.events.values()))
            await self._store.put(batch.key, data)
