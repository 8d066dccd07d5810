"""Conformance suite for the key-value port, run against every registered driver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from kernel.errors import ConfigError, Unavailable
from kernel.ports.kv import KeyValueStore, MemoryKeyValueStore, RedisKeyValueStore, kv_drivers

pytestmark = pytest.mark.anyio

# Generous against a loaded CI machine, yet each wait stays far under a second.
SHORT_TTL = 0.3


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def kv_config(request: pytest.FixtureRequest) -> tuple[str, str | None, str]:
    """(driver, redis_url, prefix); the redis param skips locally, fails in CI, when Redis is down."""
    if request.param == "redis":
        return "redis", request.getfixturevalue("redis_url"), request.getfixturevalue("unique_prefix")
    return "memory", None, "livora:"


@pytest.fixture
async def kv(kv_config: tuple[str, str | None, str]) -> AsyncIterator[KeyValueStore]:
    name, url, prefix = kv_config
    store = kv_drivers.create(name, redis_url=url, prefix=prefix)
    yield store
    await store.close()
    if url:
        await _drop_prefix(url, prefix)


async def _drop_prefix(url: str, prefix: str) -> None:
    raw = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in raw.scan_iter(match=f"{prefix}*")]
        if keys:
            await raw.delete(*keys)
    finally:
        await raw.aclose()


async def _wait_until_gone(store: KeyValueStore, key: str, limit: float = 1.5) -> float:
    """Poll until ``key`` is gone; returns the seconds waited, failing after ``limit``."""
    started = time.monotonic()
    while await store.get(key) is not None:
        assert time.monotonic() - started < limit, f"{key!r} outlived its ttl by far"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_missing_key_reads_as_none(kv: KeyValueStore) -> None:
    assert await kv.get("absent") is None
    assert await kv.ttl("absent") is None


async def test_set_get_and_overwrite(kv: KeyValueStore) -> None:
    await kv.set("greeting", "hello")
    assert await kv.get("greeting") == "hello"
    await kv.set("greeting", "bye")
    assert await kv.get("greeting") == "bye"


async def test_values_and_keys_keep_unicode(kv: KeyValueStore) -> None:
    await kv.set("tenants/ünï/clé", "Grüße — 你好 ✓")
    assert await kv.get("tenants/ünï/clé") == "Grüße — 你好 ✓"


async def test_set_without_ttl_never_expires(kv: KeyValueStore) -> None:
    await kv.set("forever", "1")
    assert await kv.ttl("forever") is None
    assert await kv.get("forever") == "1"


async def test_set_with_ttl_expires(kv: KeyValueStore) -> None:
    await kv.set("session", "abc", ttl=SHORT_TTL)
    left = await kv.ttl("session")
    assert left is not None and 0 < left <= SHORT_TTL
    assert await kv.get("session") == "abc"
    waited = await _wait_until_gone(kv, "session")
    assert waited >= SHORT_TTL / 2
    assert await kv.ttl("session") is None


async def test_set_without_ttl_clears_an_earlier_ttl(kv: KeyValueStore) -> None:
    await kv.set("cache", "old", ttl=SHORT_TTL)
    await kv.set("cache", "new")
    assert await kv.ttl("cache") is None
    await asyncio.sleep(SHORT_TTL + 0.1)
    assert await kv.get("cache") == "new"


@pytest.mark.parametrize("ttl", [0, -1.0])
async def test_non_positive_ttl_is_refused(kv: KeyValueStore, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await kv.set("k", "v", ttl=ttl)
    with pytest.raises(ValueError, match="ttl"):
        await kv.incr("k", ttl=ttl)
    assert await kv.get("k") is None


async def test_incr_creates_at_one_and_counts(kv: KeyValueStore) -> None:
    assert await kv.incr("logins/1.2.3.4", ttl=60) == 1
    assert await kv.incr("logins/1.2.3.4", ttl=60) == 2
    assert await kv.incr("logins/1.2.3.4", ttl=60) == 3
    assert await kv.get("logins/1.2.3.4") == "3"
    left = await kv.ttl("logins/1.2.3.4")
    assert left is not None and 59 < left <= 60


async def test_incr_does_not_slide_the_window(kv: KeyValueStore) -> None:
    assert await kv.incr("window", ttl=SHORT_TTL) == 1
    await asyncio.sleep(0.15)
    # A later, longer ttl must not push the deadline out: a fixed window ends on time.
    assert await kv.incr("window", ttl=60) == 2
    left = await kv.ttl("window")
    assert left is not None and left <= SHORT_TTL - 0.1
    await _wait_until_gone(kv, "window")
    # The next window starts from scratch, with the ttl of its first hit.
    assert await kv.incr("window", ttl=60) == 1
    left = await kv.ttl("window")
    assert left is not None and left > 59


async def test_incr_gives_an_expiry_to_a_counter_that_had_none(kv: KeyValueStore) -> None:
    await kv.set("legacy", "5")
    assert await kv.incr("legacy", ttl=60) == 6
    left = await kv.ttl("legacy")
    assert left is not None and 59 < left <= 60


@pytest.mark.parametrize("value", ["abc", "1.5", "05", " 5", ""])
async def test_incr_refuses_a_non_integer(kv: KeyValueStore, value: str) -> None:
    await kv.set("text", value)
    with pytest.raises(ValueError, match="integer"):
        await kv.incr("text", ttl=60)
    assert await kv.get("text") == value


async def test_concurrent_incr_loses_no_update(kv: KeyValueStore) -> None:
    results = await asyncio.gather(*(kv.incr("burst", ttl=60) for _ in range(200)))
    assert sorted(results) == list(range(1, 201))
    assert await kv.get("burst") == "200"


async def test_delete(kv: KeyValueStore) -> None:
    await kv.set("doomed", "x", ttl=60)
    await kv.incr("counter", ttl=60)
    await kv.delete("doomed")
    await kv.delete("counter")
    await kv.delete("never-existed")
    assert await kv.get("doomed") is None
    assert await kv.ttl("doomed") is None
    assert await kv.incr("counter", ttl=60) == 1


async def test_ping_answers_when_up(kv: KeyValueStore) -> None:
    await kv.ping()
    await kv.set("after-ping", "ok")
    assert await kv.get("after-ping") == "ok"


@pytest.mark.redis
async def test_redis_prefix_isolates_stores(redis_url: str, unique_prefix: str) -> None:
    first = RedisKeyValueStore(redis_url, f"{unique_prefix}a:")
    second = RedisKeyValueStore(redis_url, f"{unique_prefix}b:")
    raw = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await first.set("shared", "from-a")
        assert await second.get("shared") is None
        await second.set("shared", "from-b")
        assert await second.incr("hits", ttl=60) == 1
        assert await first.get("shared") == "from-a"
        assert await first.incr("hits", ttl=60) == 1
        assert await raw.get(f"{unique_prefix}a:shared") == "from-a"
        assert await raw.get(f"{unique_prefix}b:shared") == "from-b"
        assert await raw.get("shared") is None
    finally:
        await first.close()
        await second.close()
        await raw.aclose()
        await _drop_prefix(redis_url, unique_prefix)


@pytest.mark.parametrize("operation", ["get", "set", "incr", "ttl", "delete", "ping"])
async def test_redis_outage_raises_unavailable(closed_port: int, operation: str) -> None:
    store = RedisKeyValueStore(f"redis://127.0.0.1:{closed_port}/0", "livora:")
    calls = {
        "get": lambda: store.get("k"),
        "set": lambda: store.set("k", "v", ttl=1),
        "incr": lambda: store.incr("k", ttl=1),
        "ttl": lambda: store.ttl("k"),
        "delete": lambda: store.delete("k"),
        "ping": store.ping,
    }
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        await calls[operation]()
    assert time.monotonic() - started < 2, "an outage must answer promptly, not after long retries"
    assert caught.value.status_code == 503
    assert caught.value.code == "key_value_unavailable"
    assert f"127.0.0.1:{closed_port}" in caught.value.detail
    assert "unreachable" in caught.value.detail
    await store.close()


async def test_redis_url_credentials_stay_out_of_error_details(closed_port: int) -> None:
    store = RedisKeyValueStore(f"redis://livora:s3cret-pw@127.0.0.1:{closed_port}/0")
    with pytest.raises(Unavailable) as caught:
        await store.ping()
    assert "s3cret-pw" not in caught.value.detail
    await store.close()


async def test_memory_sweeps_expired_entries() -> None:
    now = [1000.0]
    store = MemoryKeyValueStore(clock=lambda: now[0], sweep_every=100)
    # Each round, 100 new clients hit once and never come back; nobody reads their keys again,
    # so only writes can reclaim them. Without sweeping the store would hold 2,000 entries.
    for round_ in range(20):
        for i in range(100):
            await store.incr(f"ip/{round_}/{i}", ttl=10)
        assert len(store) <= 300
        now[0] += 11
    assert await store.get("ip/0/0") is None
    assert await store.incr("ip/19/99", ttl=10) == 1


def test_unknown_driver_names_the_setting_and_the_choices() -> None:
    with pytest.raises(ConfigError) as caught:
        kv_drivers.create("memcached", redis_url=None, prefix="livora:")
    assert caught.value.variable == "LIVORA_KV_DRIVER"
    assert "'memcached'" in str(caught.value)
    assert "memory, redis" in str(caught.value)
    assert kv_drivers.names == ["memory", "redis"]


@pytest.mark.parametrize("url", [None, ""])
def test_redis_driver_requires_a_url(url: str | None) -> None:
    with pytest.raises(ConfigError) as caught:
        kv_drivers.create("redis", redis_url=url, prefix="livora:")
    assert caught.value.variable == "LIVORA_REDIS_URL"
    assert "LIVORA_KV_DRIVER=redis" in caught.value.message
