"""Redis dedup store: one key per (tenant, message id), decided and written by one Lua script."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import quote, urlsplit

import msgspec
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from data_plane.pipeline.dedup import StoredSighting
from kernel.errors import Unavailable

# The same rule as ``dedup.is_first_sighting``, run inside Redis so read-decide-write is atomic
# (a plain SET NX cannot tell a redelivery from a duplicate, nor honour the event's own time).
# One call decides a whole batch, key by key in order, so a repeat inside the batch sees the first.
# Value: "<first_seen_us>" or "<first_seen_us>|<delivery>". ARGV: window_us, then one JSON array
# of [at_us, ttl_ms, delivery] per key, all strings ("" for no delivery): one argument instead of
# three per key halves what the client encodes, and strings keep the microseconds exact.
_RECORD = """
local window = tonumber(ARGV[1])
local items = cjson.decode(ARGV[2])
local flags = {}
for i, key in ipairs(KEYS) do
  local at_arg, ttl, delivery = items[i][1], items[i][2], items[i][3]
  local at = tonumber(at_arg)
  local keep = -1
  local value = redis.call('GET', key)
  if value then
    local bar = string.find(value, '|', 1, true)
    local first = tonumber(bar and string.sub(value, 1, bar - 1) or value)
    if at - first < window then
      keep = 0
      if delivery ~= '' and bar and string.sub(value, bar + 1) == delivery then keep = 1 end
    end
  end
  if keep == -1 then
    local stored = at_arg
    if delivery ~= '' then stored = stored .. '|' .. delivery end
    redis.call('SET', key, stored, 'PX', ttl)
    keep = 1
  end
  flags[i] = keep
end
return flags
"""
# Keys per script call: one call blocks Redis while it runs, so a huge batch is cut in pieces.
_PER_CALL = 1000

_encode = msgspec.json.Encoder().encode

# Deletes the key only when its recorded delivery is ARGV[1].
_RELEASE = """
local value = redis.call('GET', KEYS[1])
if value then
  local bar = string.find(value, '|', 1, true)
  if bar and string.sub(value, bar + 1) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
end
return 0
"""


def tenant_prefix(tenant_id: str) -> str:
    # Percent-encoding the tenant keeps the key map injective (a tenant id with a slash cannot
    # reach into another tenant's keys) and strips glob characters out of SCAN patterns.
    return f"tenants/{quote(tenant_id, safe='')}/dedup/"


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def dedup_key(tenant_id: str, message_id: str) -> str:
    return tenant_prefix(tenant_id) + message_id


class RedisDedupStore:
    """First sightings as Redis keys ``{prefix}tenants/{tenant}/dedup/{message_id}``.

    Expiry is Redis's own (``PX``), so ``purge`` has nothing to do. The TTL is the window plus
    however far the event's time is ahead of this machine's clock, so a key never disappears
    before the window measured in event time has passed.
    """

    def __init__(self, url: str, prefix: str = "livora:", *, socket_timeout: float = 2.0, retries: int = 2) -> None:
        self.prefix = prefix
        parts = urlsplit(url)
        self._where = f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else "redis"
        # CAUTION: redis-py's default retry policy would stall a worker for seconds on an outage.
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(ExponentialWithJitterBackoff(cap=0.2, base=0.01), retries),
        )
        self._script = self._redis.register_script(_RECORD)
        self._release = self._redis.register_script(_RELEASE)

    @contextmanager
    def _translated(self, operation: str) -> Iterator[None]:
        try:
            yield
        except redis_errors.RedisError as exc:
            raise Unavailable(
                f"dedup store (Redis at {self._where}) failed {operation}: {exc}", code="dedup_unavailable"
            ) from exc

    async def record(self, sightings: Sequence[StoredSighting], window_us: int) -> list[bool]:
        now_us = time.time_ns() // 1000
        flags: list[bool] = []
        # NOTE: one script call (one round trip) per batch. Multi-key, so a single Redis (with
        # replicas), not Redis Cluster, as for the stream: keys of a batch span tenants and slots.
        for start in range(0, len(sightings), _PER_CALL):
            chunk = sightings[start : start + _PER_CALL]
            items = [
                (str(s.at_us), str((window_us + max(0, s.at_us - now_us)) // 1000 + 1), s.delivery or "") for s in chunk
            ]
            prefixes = {t: self.prefix + tenant_prefix(t) for t in {s.tenant_id for s in chunk}}
            keys = [prefixes[s.tenant_id] + s.message_id for s in chunk]
            with self._translated("record"):
                results = await self._script(keys=keys, args=[window_us, _encode(items)])
            flags += [bool(flag) for flag in results]
        return flags

    async def release(self, tenant_id: str, message_id: str, delivery: str) -> None:
        with self._translated("release"):
            await self._release(keys=[self.prefix + dedup_key(tenant_id, message_id)], args=[delivery])

    async def purge(self, cutoff_us: int) -> int:
        del cutoff_us  # Redis expires keys itself.
        return 0

    async def forget_tenant(self, tenant_id: str) -> None:
        with self._translated("forget_tenant"):
            batch: list[bytes] = []
            async for key in self._redis.scan_iter(
                match=_glob_escape(self.prefix + tenant_prefix(tenant_id)) + "*", count=1000
            ):
                batch.append(key)
                if len(batch) >= 1000:
                    await self._redis.delete(*batch)
                    batch.clear()
            if batch:
                await self._redis.delete(*batch)

    async def close(self) -> None:
        with self._translated("close"):
            await self._redis.aclose()
