"""Token buckets per tenant: a steady rate with room for bursts, shared by every ingest process of a cell."""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kernel.errors import Unavailable
from kernel.registry import DriverRegistry

# How long a take waits for another process's write lock: far longer than any take holds it.
_BUSY_TIMEOUT_S = 1.0


class RateLimiter(Protocol):
    """``take`` is all-or-nothing for a batch; every process of a cell must see the same buckets."""

    async def take(self, key: str, count: int, *, rate: float, burst: float) -> float:
        """Take ``count`` tokens; 0.0 when granted, else the seconds until they will be there.

        A batch bigger than the burst can never fit, so it is let through on a full bucket.
        Raises ``Unavailable`` when the shared store is down.
        """
        ...

    async def close(self) -> None: ...


def _refill(tokens: float, updated: float, now: float, count: int, rate: float, burst: float) -> tuple[float, float]:
    """``(tokens left, wait)`` after trying to take ``count`` (the one rule every driver applies)."""
    # A clock that stepped back only pauses the refill; it never drains the bucket.
    tokens = min(burst, tokens + max(0.0, now - updated) * rate)
    if count > burst:
        count = int(burst)
    if tokens >= count:
        return tokens - count, 0.0
    return tokens, math.ceil((count - tokens) / rate * 1000) / 1000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class MemoryBuckets:
    """Buckets in this process only: right for one ingest process (and tests with a fake clock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    async def take(self, key: str, count: int, *, rate: float, burst: float) -> float:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=burst, updated=now)
        bucket.tokens, wait = _refill(bucket.tokens, bucket.updated, now, count, rate, burst)
        bucket.updated = now
        return wait

    async def close(self) -> None:
        self._buckets.clear()


# The rule of ``_refill`` in SQL (``count`` is at most the burst already); a new bucket starts full.
# Every SET expression reads the row as it was, so the refill is computed from the old values.
_SQLITE_TAKE = (
    "INSERT INTO buckets (key, tokens, updated, granted) VALUES (:key, :burst - :count, :now, 1)"
    " ON CONFLICT (key) DO UPDATE SET"
    " tokens = CASE WHEN {r} >= :count THEN {r} - :count ELSE {r} END,"
    " granted = {r} >= :count,"
    # A process whose clock reading is older than the last take's must not move the bucket back
    # in time: that would refill the same interval twice.
    " updated = max(updated, :now)"
    " RETURNING tokens, granted"
).format(r="min(:burst, tokens + max(0.0, :now - updated) * :rate)")


class SqliteBuckets:
    """Buckets in a SQLite file that every ingest process of one machine opens.

    NOTE: ``synchronous=OFF``: a bucket is not worth an fsync. A crash may forget the last takes,
    which only lets a tenant burst once more. A take is one statement on a local file (about ten
    microseconds), so it runs on the event loop rather than paying for a thread hop.
    """

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=OFF")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS buckets (key TEXT PRIMARY KEY, tokens REAL NOT NULL,"
                    " updated REAL NOT NULL, granted INTEGER NOT NULL DEFAULT 1) WITHOUT ROWID"
                )
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    async def take(self, key: str, count: int, *, rate: float, burst: float) -> float:
        # One statement, so one implicit transaction: SQLite takes the write lock for the few
        # microseconds it runs, and the event loop gives up the GIL once rather than per step.
        count = min(count, int(burst))
        try:
            row = (
                self._connection()
                .execute(_SQLITE_TAKE, {"key": key, "count": count, "rate": rate, "burst": burst, "now": self._clock()})
                .fetchone()
            )
        except (sqlite3.Error, OSError) as exc:
            raise Unavailable(f"rate limits ({self.path}) failed: {exc}", code="rate_limit_unavailable") from exc
        tokens, granted = row
        return 0.0 if granted else math.ceil((count - tokens) / rate * 1000) / 1000

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# KEYS[1]: the bucket; ARGV: count, rate, burst. The server's clock, so every process agrees.
# Answers the wait as a string (a Lua number would come back truncated to an integer).
_TAKE = """
local count, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 't', 'u')
local tokens = tonumber(state[1]) or burst
local updated = tonumber(state[2]) or now
local elapsed = now - updated
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate)
if count > burst then count = math.floor(burst) end
local wait = 0
if tokens >= count then tokens = tokens - count else wait = (count - tokens) / rate end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'u', string.format('%.17g', now))
-- A full bucket needs no state: let idle tenants' keys expire.
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return string.format('%.17g', wait)
"""


class RedisBuckets:
    """Buckets in Redis, one Lua script per take: shared by every process of every machine of a cell."""

    def __init__(self, url: str, *, prefix: str = "livora:ratelimit:") -> None:
        import redis.asyncio as aioredis

        self._client = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._script = self._client.register_script(_TAKE)
        self._prefix = prefix

    async def take(self, key: str, count: int, *, rate: float, burst: float) -> float:
        import redis.exceptions as redis_errors

        try:
            wait = float(await self._script(keys=[f"{self._prefix}{key}"], args=[count, rate, burst]))
        except (redis_errors.RedisError, OSError) as exc:
            raise Unavailable(f"rate limits (Redis) failed: {exc}", code="rate_limit_unavailable") from exc
        return 0.0 if wait <= 0 else math.ceil(wait * 1000) / 1000

    async def close(self) -> None:
        await self._client.aclose()


rate_limit_drivers: DriverRegistry[RateLimiter] = DriverRegistry[RateLimiter]("rate limit", "LIVORA_RATE_LIMIT_DRIVER")


@rate_limit_drivers.register("memory")
def _memory(path: Path, redis_url: str) -> RateLimiter:
    return MemoryBuckets()


@rate_limit_drivers.register("sqlite")
def _sqlite(path: Path, redis_url: str) -> RateLimiter:
    return SqliteBuckets(path)


@rate_limit_drivers.register("redis")
def _redis(path: Path, redis_url: str) -> RateLimiter:
    from kernel.errors import ConfigError

    if not redis_url:
        raise ConfigError("LIVORA_REDIS_URL", "a Redis URL is required when LIVORA_RATE_LIMIT_DRIVER=redis")
    return RedisBuckets(redis_url)
