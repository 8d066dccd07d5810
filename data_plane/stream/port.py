"""The stream port: a partitioned, durable log of accepted events read by consumer groups."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

DEFAULT_PARTITIONS = 8
MAX_PARTITIONS = 1024
# Kinesis's limits (a partition key of 1 to 256 characters, a record of 1 MiB with its key), kept
# by every driver so that they stay interchangeable.
MAX_KEY_CHARS = 256
MAX_PAYLOAD_BYTES = 1_000_000


@dataclass(frozen=True, slots=True)
class Record:
    """One thing to append. ``partition_key`` carries the tenant: ``f"{tenant_id}/{user_or_anonymous_id}"``."""

    partition_key: str
    payload: bytes

    def __post_init__(self) -> None:
        if not 1 <= len(self.partition_key) <= MAX_KEY_CHARS:
            raise ValueError(f"a partition key has 1 to {MAX_KEY_CHARS} characters, got {len(self.partition_key)}")
        if len(self.payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"a payload has at most {MAX_PAYLOAD_BYTES} bytes, got {len(self.payload)}")


@dataclass(frozen=True, slots=True)
class Entry:
    """A record as a consumer group sees it.

    ``id`` is ``"{partition}:{position}"``, unique in the stream; ``deliveries`` counts how often
    the group has handed this entry out, this time included (1 on the first read).
    """

    id: str
    partition: int
    partition_key: str
    payload: bytes
    deliveries: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry a group gave up on, kept with the reason until it is replayed."""

    id: str
    group: str
    entry_id: str
    partition: int
    partition_key: str
    payload: bytes
    reason: str
    deliveries: int
    dead_lettered_at: dt.datetime


class Stream(Protocol):
    """A fixed number of ordered partitions; a record's partition is a stable hash of its key.

    Consumer groups read at least once: an entry stays pending in its group until it is acked or
    dead-lettered, and ``reclaim`` hands pending entries of a silent consumer to another one.
    Every backend failure surfaces as ``kernel.errors.Unavailable`` (HTTP 503, retryable).
    """

    partitions: int

    async def append(self, records: Sequence[Record]) -> list[str]:
        """Append the batch with one durable write; return the entry ids in input order.

        The records are durable when this returns. Raises ``Unavailable`` when the stream cannot
        accept them; the batch may then be partly appended, so producers retry and consumers
        deduplicate (by ``message_id``).
        """
        ...

    async def read(
        self,
        group: str,
        consumer: str,
        *,
        count: int,
        block_ms: int = 0,
        partitions: Collection[int] | None = None,
    ) -> list[Entry]:
        """Up to ``count`` entries the group has not handed out yet, now pending for ``consumer``.

        A group that reads for the first time starts at the oldest retained entry. Within one
        partition, entries come in append order. Waits up to ``block_ms`` when there is nothing
        to read. ``partitions`` restricts the read to those partitions (a consumer that owns them).
        """
        ...

    async def ack(self, group: str, ids: Sequence[str]) -> int:
        """Mark entries processed by the group; returns how many were pending. Idempotent."""
        ...

    async def reclaim(
        self,
        group: str,
        consumer: str,
        *,
        min_idle_ms: int,
        count: int,
        partitions: Collection[int] | None = None,
    ) -> list[Entry]:
        """Take over up to ``count`` of the group's entries that have been pending for at least
        ``min_idle_ms`` (whoever holds them); each comes back with ``deliveries`` incremented."""
        ...

    async def dead_letter(self, group: str, entry: Entry, reason: str, *, payload: bytes | None = None) -> str | None:
        """Move a pending entry out of the group into the dead-letter store, with ``reason``.

        ``payload``: what to keep instead of the entry's payload (the few events of a multi-event
        entry that failed, once the others are durable); a replay appends exactly that.

        Returns the dead letter's id, or ``None`` when the entry was not pending in the group
        (already acked or dead-lettered), so a retried call does not store it twice.
        """
        ...

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead letters of every group, oldest first."""
        ...

    async def replay(self, dead_letter_ids: Sequence[str]) -> int:
        """Append the dead letters again (same partition key) and drop them from the store.

        Returns how many were replayed; unknown ids are skipped. Every group sees a replayed
        entry again, as a new entry.
        """
        ...

    async def pending(self, group: str) -> int:
        """How many entries the group has handed out and not yet acked or dead-lettered."""
        ...

    async def trim(self) -> int:
        """Delete entries every existing group has acked or dead-lettered; returns how many.

        Never deletes an entry that is pending or not yet read in some group. A group created
        later starts at the oldest entry still retained.
        """
        ...

    async def ping(self) -> None:
        """Check the backend at start-up: ``Unavailable`` when it is down, ``ConfigError`` when it
        is set up wrongly (another partition count, Redis without the required persistence)."""
        ...

    async def close(self) -> None:
        """Release the backend; later calls raise ``Unavailable``."""
        ...


def partition_for(partition_key: str, partitions: int) -> int:
    """The partition of a key: BLAKE2b of its UTF-8 bytes, modulo the partition count.

    NOTE: not Python's ``hash()``, which is salted per process; every producer in every process
    must agree, or one user's events would land in two partitions.
    """
    digest = hashlib.blake2b(partition_key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def check_partition_count(partitions: int) -> int:
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(f"partitions must be between 1 and {MAX_PARTITIONS}, got {partitions}")
    return partitions


def split_id(entry_id: str, partitions: int) -> tuple[int, str]:
    """``"3:1700000000000-0"`` → ``(3, "1700000000000-0")``; ``ValueError`` for a malformed id."""
    head, sep, position = entry_id.partition(":")
    if not sep or not head.isdigit() or not position or int(head) >= partitions:
        raise ValueError(f"{entry_id!r} is not an entry id of a stream with {partitions} partitions")
    return int(head), position


def check_read(group: str, consumer: str, count: int) -> None:
    if not group or not consumer:
        raise ValueError("group and consumer must be non-empty")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")


def chosen_partitions(partitions: int, chosen: Collection[int] | None, rotation: int) -> list[int]:
    """The partitions a read looks at, starting at a rotating offset so none is always served last."""
    if chosen is None:
        selected = list(range(partitions))
    else:
        selected = sorted(set(chosen))
        for partition in selected:
            if not 0 <= partition < partitions:
                raise ValueError(f"partition {partition} is out of range 0..{partitions - 1}")
    if not selected:
        return selected
    start = rotation % len(selected)
    return selected[start:] + selected[:start]
