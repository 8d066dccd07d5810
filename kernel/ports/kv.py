"""Key-value and counter port for login throttling, rate limits and caches."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from kernel.errors import ConfigError, Unavailable
from kernel.registry import DriverRegistry


class KeyValueStore(Protocol):
    """String values and integer counters with optional expiry, all keyed by plain strings.

    Callers put the tenant in the key (``tenants/{tenant_id}/...``); the store adds no scoping.
    """

    async def get(self, key: str) -> str | None:
        """The value, or ``None`` when the key is missing or expired."""
        ...

    async def set(self, key: str, value: str, *, ttl: float | None = None) -> None:
        """Store ``value``; ``ttl`` seconds until expiry, ``None`` for no expiry (clears an old one)."""
        ...

    async def incr(self, key: str, *, ttl: float) -> int:
        """Atomically add one and return the new count, creating the key at 1.

        ``ttl`` is applied only when the key has no expiry yet (normally: when it is created),
        so repeated calls do not slide a fixed rate-limit window. Raises ``ValueError`` when
        the key holds something other than an integer.
        """
        ...

    async def ttl(self, key: str) -> float | None:
        """Seconds until the key expires; ``None`` when it is missing or never expires."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the key; a missing key is not an error."""
        ...

    async def ping(self) -> None:
        """Raise ``kernel.errors.Unavailable`` when the backend cannot serve requests."""
        ...

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


# Redis's own rule for a counter: canonical decimal, so "05", " 5" or "1_000" are not integers.
_INTEGER = re.compile(r"-?[1-9][0-9]*|0")


def _check_ttl(ttl: float | None) -> None:
    # NOTE: Redis rejects a zero or negative expiry, so both drivers do, to stay interchangeable.
    if ttl is not None and not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")


class MemoryKeyValueStore:
    """In-process store: a dict of ``key -> (value, deadline)`` on a monotonic clock.

    NOTE: no method awaits while it touches the dict, so each call is atomic with respect to
    other coroutines on the loop; that is what makes ``incr`` safe without a lock. It is not
    thread-safe, and state is per process (fine for the embedded, single-process setup).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, sweep_every: int = 1024) -> None:
        self._clock = clock
        self._sweep_every = sweep_every
        self._data: dict[str, tuple[str, float | None]] = {}
        self._writes_until_sweep = sweep_every

    def __len__(self) -> int:
        """Entries held, including expired ones not swept yet (for diagnostics and tests)."""
        return len(self._data)

    def _live(self, key: str, now: float) -> tuple[str, float | None] | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[1] is not None and entry[1] <= now:
            del self._data[key]
            return None
        return entry

    def _after_write(self, now: float) -> None:
        # Expired keys nobody reads again would otherwise stay forever (one per client IP for
        # throttling). Sweeping after as many writes as the store held at the last sweep (at
        # least sweep_every) bounds memory by about twice the live keys plus sweep_every, at
        # amortised O(1) cost per write.
        self._writes_until_sweep -= 1
        if self._writes_until_sweep > 0:
            return
        expired = [k for k, (_, deadline) in self._data.items() if deadline is not None and deadline <= now]
        for key in expired:
            del self._data[key]
        self._writes_until_sweep = max(self._sweep_every, len(self._data))

    async def get(self, key: str) -> str | None:
        entry = self._live(key, self._clock())
        return None if entry is None else entry[0]

    async def set(self, key: str, value: str, *, ttl: float | None = None) -> None:
        _check_ttl(ttl)
        now = self._clock()
        self._data[key] = (value, None if ttl is None else now + ttl)
        self._after_write(now)

    async def incr(self, key: str, *, ttl: float) -> int:
        _check_ttl(ttl)
        now = self._clock()
        entry = self._live(key, now)
        if entry is None:
            count, deadline = 1, now + ttl
        else:
            if not _INTEGER.fullmatch(entry[0]):
                raise ValueError(f"key {key!r} does not hold an integer")
            count = int(entry[0]) + 1
            deadline = entry[1] if entry[1] is not None else now + ttl
        self._data[key] = (str(count), deadline)
        self._after_write(now)
        return count

    async def ttl(self, key: str) -> float | None:
        now = self._clock()
        entry = self._live(key, now)
        if entry is None or entry[1] is None:
            return None
        return entry[1] - now

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._data.clear()


def _describe(url: str) -> str:
    """Where the server is, without the credentials a URL may carry."""
    parts = urlsplit(url)
    if parts.hostname:
        return f"{parts.hostname}:{parts.port or 6379}"
    return parts.path or "redis"


class RedisKeyValueStore:
    """Redis-backed store; every key is stored as ``prefix + key``.

    Connection and timeout failures become ``Unavailable``: no ``redis`` exception crosses
    the port.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "livora:",
        *,
        socket_timeout: float = 2.0,
        retries: int = 2,
        max_connections: int = 50,
    ) -> None:
        self.prefix = prefix
        self._where = _describe(url)
        # NOTE: the blocking pool makes a burst of requests queue for a connection; the default
        # pool fails outright with "Too many connections" once it is exhausted.
        # CAUTION: redis-py's default is 10 retries with up to 1 s backoff each; a request
        # would hang for seconds on an outage instead of answering 503 promptly.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=socket_timeout,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(ExponentialWithJitterBackoff(cap=0.2, base=0.01), retries),
        )
        self._redis: aioredis.Redis = aioredis.Redis.from_pool(pool)

    def _key(self, key: str) -> str:
        return self.prefix + key

    @contextmanager
    def _translated(self, operation: str) -> Iterator[None]:
        try:
            yield
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            raise Unavailable(
                f"key-value store (Redis at {self._where}) is unreachable during {operation}: {exc}",
                code="key_value_unavailable",
            ) from exc
        except redis_errors.RedisError as exc:
            # Out-of-memory, read-only replica, cluster moves: the server is up but cannot serve.
            raise Unavailable(
                f"key-value store (Redis at {self._where}) failed {operation}: {exc}",
                code="key_value_unavailable",
            ) from exc

    async def get(self, key: str) -> str | None:
        with self._translated("GET"):
            # decode_responses=True makes redis-py answer str; its stubs also allow bytes mode.
            return cast(str | None, await self._redis.get(self._key(key)))

    async def set(self, key: str, value: str, *, ttl: float | None = None) -> None:
        _check_ttl(ttl)
        with self._translated("SET"):
            if ttl is None:
                await self._redis.set(self._key(key), value)
            else:
                await self._redis.set(self._key(key), value, px=max(1, round(ttl * 1000)))

    async def incr(self, key: str, *, ttl: float) -> int:
        _check_ttl(ttl)
        name = self._key(key)
        with self._translated("INCR"):
            try:
                # NOTE: MULTI/EXEC makes the pair atomic, so no counter is left without an
                # expiry if the client dies in between; PEXPIRE NX (Redis >= 7.0) keeps the
                # first deadline, which is what stops the window from sliding.
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.incr(name)
                    pipe.pexpire(name, max(1, round(ttl * 1000)), nx=True)
                    count, _ = await pipe.execute()
            except redis_errors.ResponseError as exc:
                if "not an integer" in str(exc):
                    raise ValueError(f"key {key!r} does not hold an integer") from None
                raise
            return int(count)

    async def ttl(self, key: str) -> float | None:
        with self._translated("PTTL"):
            millis: int = await self._redis.pttl(self._key(key))
        # PTTL answers -2 for a missing key and -1 for a key without expiry.
        return None if millis < 0 else millis / 1000

    async def delete(self, key: str) -> None:
        with self._translated("DEL"):
            await self._redis.delete(self._key(key))

    async def ping(self) -> None:
        with self._translated("PING"):
            await self._redis.ping()

    async def close(self) -> None:
        with self._translated("close"):
            await self._redis.aclose()


kv_drivers: DriverRegistry[KeyValueStore] = DriverRegistry[KeyValueStore]("key-value", "LIVORA_KV_DRIVER")


@kv_drivers.register("memory")
def _memory_driver(*, redis_url: str | None = None, prefix: str = "livora:") -> KeyValueStore:
    # The embedded store is one process's memory, so a URL or shared-namespace prefix means nothing.
    del redis_url, prefix
    return MemoryKeyValueStore()


@kv_drivers.register("redis")
def _redis_driver(*, redis_url: str | None = None, prefix: str = "livora:") -> KeyValueStore:
    if not redis_url:
        raise ConfigError("LIVORA_REDIS_URL", "a Redis URL is required when LIVORA_KV_DRIVER=redis")
    return RedisKeyValueStore(redis_url, prefix)
