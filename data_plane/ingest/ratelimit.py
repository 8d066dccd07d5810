"""Token buckets per tenant: a steady rate with room for bursts."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """In-process buckets (one cell process). ``take`` is all-or-nothing for a batch.

    NOTE: several ingestion processes each hold their own buckets, so a tenant's effective limit is
    per process; a Redis-backed bucket is the step when cells run many ingestion processes.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, count: int, *, rate: float, burst: float) -> float:
        """Take ``count`` tokens; 0.0 when granted, else the seconds until they will be there."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=burst, updated=now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if count > burst:
            # A batch bigger than the burst can never fit: let it through only on a full bucket.
            count = int(burst)
        if bucket.tokens >= count:
            bucket.tokens -= count
            return 0.0
        return math.ceil((count - bucket.tokens) / rate * 1000) / 1000
