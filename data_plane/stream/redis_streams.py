"""Redis Streams driver: one stream per partition, consumer groups, XAUTOCLAIM, a dead-letter stream."""

from __future__ import annotations

import datetime as dt
import re
import struct
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from data_plane.stream.port import (
    DEFAULT_PARTITIONS,
    DeadLetter,
    Entry,
    Record,
    check_partition_count,
    check_read,
    chosen_partitions,
    partition_for,
    split_id,
)
from kernel.errors import ConfigError, Unavailable

_STREAM_ID = re.compile(r"[0-9]+-[0-9]+")

# NOTE: batches cross the wire as one framed binary string each way, not as one argument or reply
# element per field: redis-py packs and parses arguments in pure Python, and a batch of 100
# records as 300 arguments costs ~15x more client CPU than one 30 kB string.
#
# Request frame, per record: struct ">HHI" (partition, key length, payload length), key, payload.
# Reply frame, per entry: struct ">HIHHI" (1-based index into KEYS, deliveries, id length, key
# length, payload length), id, key, payload.
_RECORD_HEAD = struct.Struct(">HHI")
_ENTRY_HEAD = struct.Struct(">HIHHI")

_FRAME = """
local function frame(i, deliveries, id, fields)
  local key, value = '', ''
  for j = 1, #fields, 2 do
    if fields[j] == 'k' then key = fields[j + 1] elseif fields[j] == 'v' then value = fields[j + 1] end
  end
  return struct.pack('>HIHHI', i, deliveries, #id, #key, #value) .. id .. key .. value
end
"""

# KEYS: every partition stream in partition order; ARGV[1]: the request frame. Answers the new
# ids, space-separated, in input order. No MAXLEN: trimming is _TRIM's job, which respects groups.
_APPEND = """
local blob = ARGV[1]
local pos, size = 1, #blob
local ids = {}
while pos <= size do
  local p, klen, vlen
  p, klen, vlen, pos = struct.unpack('>HHI', blob, pos)
  local key = string.sub(blob, pos, pos + klen - 1)
  pos = pos + klen
  local value = string.sub(blob, pos, pos + vlen - 1)
  pos = pos + vlen
  ids[#ids + 1] = redis.call('XADD', KEYS[p + 1], '*', 'k', key, 'v', value)
end
return table.concat(ids, ' ')
"""

# KEYS: every partition stream. Creates group ARGV[1] at the start of each stream that lacks it.
# NOTE: on every partition at once, not lazily per partition read: trim() only protects entries
# of groups it can see, so a group missing from one partition would lose that partition's backlog.
_ENSURE_GROUP = """
for _, key in ipairs(KEYS) do
  local res = redis.pcall('XGROUP', 'CREATE', key, ARGV[1], '0', 'MKSTREAM')
  if type(res) == 'table' and res.err and string.sub(res.err, 1, 9) ~= 'BUSYGROUP' then
    return redis.error_reply(res.err)
  end
end
return 1
"""

# The other scripts take the partition streams they work on as KEYS, in the order the caller wants
# them served.
#
# Up to ARGV[3] new entries for consumer ARGV[2] of group ARGV[1], creating the group (at the
# start of the stream) where it is missing. When there is nothing, answers the newest id of each
# stream instead, so the caller can block on XREAD for anything after it without a lost wake-up.
_READ = (
    _FRAME
    + """
local group, consumer = ARGV[1], ARGV[2]
local remaining = tonumber(ARGV[3])
local out = {}
for i, key in ipairs(KEYS) do
  if remaining <= 0 then break end
  local res = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', remaining, 'STREAMS', key, '>')
  if type(res) == 'table' and res.err then
    if string.sub(res.err, 1, 7) ~= 'NOGROUP' then return redis.error_reply(res.err) end
    redis.call('XGROUP', 'CREATE', key, group, '0', 'MKSTREAM')
    res = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', remaining, 'STREAMS', key, '>')
  end
  if res then
    for _, message in ipairs(res[1][2]) do
      out[#out + 1] = frame(i, 1, message[1], message[2])
    end
    remaining = remaining - #res[1][2]
  end
end
if #out > 0 then return {1, table.concat(out)} end
local newest = {}
for i, key in ipairs(KEYS) do
  local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  newest[i] = top[1] and top[1][1] or '0-0'
end
return {0, newest}
"""
)

# XAUTOCLAIM up to ARGV[4] entries idle for ARGV[3] ms to consumer ARGV[2]; XAUTOCLAIM does not
# answer the delivery counter it has just incremented, so XPENDING reads it for each entry.
_RECLAIM = (
    _FRAME
    + """
local group, consumer, min_idle = ARGV[1], ARGV[2], ARGV[3]
local remaining = tonumber(ARGV[4])
local out = {}
for i, key in ipairs(KEYS) do
  if remaining <= 0 then break end
  local cursor = '0-0'
  repeat
    local res = redis.pcall('XAUTOCLAIM', key, group, consumer, min_idle, cursor, 'COUNT', remaining)
    if type(res) == 'table' and res.err then
      if string.sub(res.err, 1, 7) == 'NOGROUP' then break end
      return redis.error_reply(res.err)
    end
    cursor = res[1]
    for _, message in ipairs(res[2]) do
      if message[2] then
        local info = redis.call('XPENDING', key, group, message[1], message[1], 1)
        out[#out + 1] = frame(i, info[1][4], message[1], message[2])
        remaining = remaining - 1
      end
    end
  until cursor == '0-0' or remaining <= 0
end
return table.concat(out)
"""
)

# KEYS[1] partition stream, KEYS[2] dead-letter stream. Acks entry ARGV[2] in group ARGV[1] and
# stores it with its reason in one step; answers the dead letter's id, or nil when the entry was
# not pending (so a retry does not store it twice). ARGV[8] = '1': keep the payload ARGV[7] the
# caller gave (some events of the entry only) rather than the stored one.
_DEAD_LETTER = """
local info = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if type(info) ~= 'table' or info.err or #info == 0 then return false end
local key, payload = ARGV[6], ARGV[7]
local found = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if found[1] then
  local fields = found[1][2]
  for j = 1, #fields, 2 do
    if fields[j] == 'k' then key = fields[j + 1]
    elseif fields[j] == 'v' and ARGV[8] ~= '1' then payload = fields[j + 1] end
  end
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XADD', KEYS[2], '*', 'group', ARGV[1], 'entry', ARGV[3], 'partition', ARGV[4],
  'k', key, 'v', payload, 'reason', ARGV[5], 'deliveries', info[1][4])
"""

# KEYS[1] dead-letter stream, KEYS[2..] partition streams in partition order; ARGV dead letter ids.
# Appending a dead letter again and deleting it happen together.
_REPLAY = """
local replayed = 0
for _, id in ipairs(ARGV) do
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if found[1] then
    local f = {}
    local fields = found[1][2]
    for j = 1, #fields, 2 do f[fields[j]] = fields[j + 1] end
    redis.call('XADD', KEYS[tonumber(f['partition']) + 2], '*', 'k', f['k'], 'v', f['v'])
    redis.call('XDEL', KEYS[1], id)
    replayed = replayed + 1
  end
end
return replayed
"""

_PENDING = """
local total = 0
for _, key in ipairs(KEYS) do
  local res = redis.pcall('XPENDING', key, ARGV[1])
  if type(res) == 'table' and not res.err then total = total + res[1] end
end
return total
"""

# Deletes, per partition stream, the entries below the oldest one some group still needs: its
# oldest pending entry, else the entry after the last one it was handed. A stream without groups
# is left alone.
_TRIM = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function lower(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local removed = 0
for _, key in ipairs(KEYS) do
  local groups = redis.pcall('XINFO', 'GROUPS', key)
  if type(groups) == 'table' and not groups.err and #groups > 0 then
    local floor = nil
    for _, flat in ipairs(groups) do
      local g = {}
      for j = 1, #flat, 2 do g[flat[j]] = flat[j + 1] end
      local needed
      if tonumber(g['pending']) > 0 then
        needed = redis.call('XPENDING', key, g['name'], '-', '+', 1)[1][1]
      else
        local ms, seq = parse(g['last-delivered-id'])
        needed = string.format('%d-%d', ms, seq + 1)
      end
      if floor == nil or lower(needed, floor) then floor = needed end
    end
    removed = removed + redis.call('XTRIM', key, 'MINID', floor)
  end
end
return removed
"""


def _describe(url: str) -> str:
    """Where the server is, without the credentials a URL may carry."""
    parts = urlsplit(url)
    if parts.hostname:
        return f"{parts.hostname}:{parts.port or 6379}"
    return parts.path or "redis"


def _frame_records(partitions: list[int], records: Sequence[Record]) -> bytes:
    parts: list[bytes] = []
    for p, record in zip(partitions, records, strict=True):
        key = record.partition_key.encode()
        payload = bytes(record.payload)
        parts += (_RECORD_HEAD.pack(p, len(key), len(payload)), key, payload)
    return b"".join(parts)


def _unframe_entries(blob: bytes, parts: list[int]) -> list[Entry]:
    entries = []
    pos, size, head = 0, len(blob), _ENTRY_HEAD.size
    while pos < size:
        index, deliveries, id_len, key_len, payload_len = _ENTRY_HEAD.unpack_from(blob, pos)
        pos += head
        stream_id = blob[pos : pos + id_len].decode()
        pos += id_len
        key = blob[pos : pos + key_len].decode()
        pos += key_len
        payload = blob[pos : pos + payload_len]
        pos += payload_len
        partition = parts[index - 1]
        entries.append(Entry(f"{partition}:{stream_id}", partition, key, payload, deliveries))
    return entries


class RedisStream:
    """The stream on Redis Streams: partition ``p`` is the stream ``{prefix}{p}``.

    Appends are XADD without MAXLEN (a capped stream would drop entries no group has acked);
    ``trim`` removes only what every group is done with. A group is created on its first read,
    on every partition at once, at id ``0``. Every operation on several entries or keys is one
    Lua script, so it is atomic and one round-trip.

    CAUTION: the scripts touch all partition streams at once, so this driver needs a single Redis
    (with replicas), not Redis Cluster.

    CAUTION: durability is Redis's. Run it with ``appendonly yes``; ``appendfsync always`` makes
    an acknowledged append survive power loss, ``everysec`` survives a Redis crash but may lose
    about the last second on power loss. ``require_aof`` refuses a server without the AOF.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "livora:stream:",
        partitions: int = DEFAULT_PARTITIONS,
        require_aof: bool = False,
        socket_timeout: float = 2.0,
        retries: int = 2,
        max_connections: int = 50,
    ) -> None:
        self.partitions = check_partition_count(partitions)
        self.prefix = prefix
        self._where = _describe(url)
        self._require_aof = require_aof
        # NOTE: a blocked XREAD must answer before the socket timeout; waits are cut in slices.
        self._block_slice_ms = max(1, int(socket_timeout * 1000 / 2))
        # CAUTION: redis-py's default retries (10, with backoff) would turn an outage into a hang
        # of seconds instead of a prompt 503.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=socket_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(ExponentialWithJitterBackoff(cap=0.2, base=0.01), retries),
        )
        self._redis: aioredis.Redis = aioredis.Redis.from_pool(pool)
        self._keys = [f"{prefix}{p}" for p in range(partitions)]
        self._dead = f"{prefix}dead-letters"
        self._meta = f"{prefix}meta"
        self._append = self._redis.register_script(_APPEND)
        self._ensure_group = self._redis.register_script(_ENSURE_GROUP)
        self._groups: set[str] = set()
        self._read = self._redis.register_script(_READ)
        self._reclaim = self._redis.register_script(_RECLAIM)
        self._dead_letter = self._redis.register_script(_DEAD_LETTER)
        self._replay = self._redis.register_script(_REPLAY)
        self._pending = self._redis.register_script(_PENDING)
        self._trim = self._redis.register_script(_TRIM)
        self._rotation = 0
        self._checked = False
        self._closed = False

    @contextmanager
    def _translated(self, operation: str) -> Iterator[None]:
        if self._closed:
            raise Unavailable(f"stream (Redis at {self._where}) is closed", code="stream_unavailable")
        try:
            yield
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            raise Unavailable(
                f"stream (Redis at {self._where}) is unreachable during {operation}: {exc}",
                code="stream_unavailable",
            ) from exc
        except redis_errors.RedisError as exc:
            # Out of memory, a read-only replica, a script error: up, but not serving.
            raise Unavailable(
                f"stream (Redis at {self._where}) failed {operation}: {exc}", code="stream_unavailable"
            ) from exc

    async def _ready(self) -> None:
        if self._checked:
            return
        with self._translated("start-up"):
            await self._redis.hsetnx(self._meta, "partitions", self.partitions)
            stored = int(await self._redis.hget(self._meta, "partitions") or self.partitions)
            aof = (await self._redis.info("persistence")).get("aof_enabled") if self._require_aof else 1
        if stored != self.partitions:
            raise ConfigError(
                "LIVORA_STREAM_PARTITIONS",
                f"the streams under {self.prefix!r} were created with {stored} partitions, not {self.partitions}",
            )
        if not aof:
            raise ConfigError(
                "LIVORA_STREAM_REDIS_REQUIRE_AOF",
                f"Redis at {self._where} runs without the append-only file, so acknowledged appends would be "
                "lost on restart; set appendonly yes (appendfsync everysec or always)",
            )
        self._checked = True

    def _stream_position(self, entry_id: str) -> tuple[int, str]:
        partition, position = split_id(entry_id, self.partitions)
        if not _STREAM_ID.fullmatch(position):
            raise ValueError(f"{entry_id!r} is not an entry id of the Redis driver")
        return partition, position

    async def append(self, records: Sequence[Record]) -> list[str]:
        if not records:
            return []
        await self._ready()
        partitions = [partition_for(r.partition_key, self.partitions) for r in records]
        with self._translated("append"):
            # One script call: one round-trip, and atomic, so no other client's entries interleave.
            reply: bytes = await self._append(keys=self._keys, args=[_frame_records(partitions, records)])
        stream_ids = reply.decode().split(" ")
        return [f"{p}:{sid}" for p, sid in zip(partitions, stream_ids, strict=True)]

    async def read(
        self,
        group: str,
        consumer: str,
        *,
        count: int,
        block_ms: int = 0,
        partitions: Collection[int] | None = None,
    ) -> list[Entry]:
        check_read(group, consumer, count)
        await self._ready()
        if group not in self._groups:
            with self._translated("read"):
                await self._ensure_group(keys=self._keys, args=[group])
            self._groups.add(group)
        deadline = time.monotonic() + block_ms / 1000
        while True:
            parts = chosen_partitions(self.partitions, partitions, self._rotation)
            self._rotation += 1
            keys = [self._keys[p] for p in parts]
            with self._translated("read"):
                found, body = await self._read(keys=keys, args=[group, consumer, count])
            if found:
                return _unframe_entries(body, parts)
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                return []
            with self._translated("read"):
                # Wakes on the first entry newer than what the script saw; the group is untouched.
                await self._redis.xread(
                    dict(zip(keys, body, strict=True)), count=1, block=min(left_ms, self._block_slice_ms)
                )

    async def ack(self, group: str, ids: Sequence[str]) -> int:
        by_partition: dict[int, list[str]] = {}
        for entry_id in ids:
            partition, position = self._stream_position(entry_id)
            by_partition.setdefault(partition, []).append(position)
        if not by_partition:
            return 0
        with self._translated("ack"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for partition, positions in by_partition.items():
                    pipe.xack(self._keys[partition], group, *positions)
                acked: list[int] = await pipe.execute()
        return sum(acked)

    async def reclaim(
        self,
        group: str,
        consumer: str,
        *,
        min_idle_ms: int,
        count: int,
        partitions: Collection[int] | None = None,
    ) -> list[Entry]:
        check_read(group, consumer, count)
        await self._ready()
        parts = chosen_partitions(self.partitions, partitions, self._rotation)
        self._rotation += 1
        with self._translated("reclaim"):
            body = await self._reclaim(
                keys=[self._keys[p] for p in parts], args=[group, consumer, max(0, min_idle_ms), count]
            )
        return _unframe_entries(body, parts)

    async def pending(self, group: str) -> int:
        await self._ready()
        with self._translated("pending"):
            return int(await self._pending(keys=self._keys, args=[group]))

    async def dead_letter(self, group: str, entry: Entry, reason: str, *, payload: bytes | None = None) -> str | None:
        partition, position = self._stream_position(entry.id)
        await self._ready()
        with self._translated("dead_letter"):
            dead_id = await self._dead_letter(
                keys=[self._keys[partition], self._dead],
                args=[
                    group,
                    position,
                    entry.id,
                    partition,
                    reason,
                    entry.partition_key,
                    entry.payload if payload is None else payload,
                    "0" if payload is None else "1",
                ],
            )
        return None if dead_id is None else dead_id.decode()

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        await self._ready()
        with self._translated("dead_letters"):
            rows: list[tuple[bytes, dict[bytes, bytes]]] = await self._redis.xrange(self._dead, count=limit)
        letters = []
        for dead_id, fields in rows:
            millis = int(dead_id.split(b"-")[0])
            letters.append(
                DeadLetter(
                    id=dead_id.decode(),
                    group=fields[b"group"].decode(),
                    entry_id=fields[b"entry"].decode(),
                    partition=int(fields[b"partition"]),
                    partition_key=fields[b"k"].decode(),
                    payload=fields[b"v"],
                    reason=fields[b"reason"].decode(),
                    deliveries=int(fields[b"deliveries"]),
                    dead_lettered_at=dt.datetime.fromtimestamp(millis / 1000, dt.UTC),
                )
            )
        return letters

    async def replay(self, dead_letter_ids: Sequence[str]) -> int:
        ids = [i for i in dead_letter_ids if _STREAM_ID.fullmatch(i)]
        if not ids:
            return 0
        await self._ready()
        with self._translated("replay"):
            return int(await self._replay(keys=[self._dead, *self._keys], args=ids))

    async def trim(self) -> int:
        await self._ready()
        with self._translated("trim"):
            return int(await self._trim(keys=self._keys))

    async def ping(self) -> None:
        self._checked = False
        await self._ready()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._redis.aclose()
        except redis_errors.RedisError:
            pass
