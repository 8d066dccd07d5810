"""Conformance suite for the lake's object-store port (memory, local, S3 on a moto server), and the
lake end to end on each driver."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import os
import pathlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aioboto3
import pyarrow.parquet as pq
import pytest

from data_plane.events import Event
from data_plane.lake import (
    Compactor,
    LakeWriter,
    LocalObjectStore,
    MemoryObjectStore,
    ObjectInfo,
    ObjectStore,
    Partition,
    S3ObjectStore,
    count,
    count_by_hour,
    drop_tenant,
    from_table,
    object_store_drivers,
)
from data_plane.lake.schema import decode_parquet
from kernel.errors import ConfigError, Conflict, NotFound, Unavailable
from tests.support.moto_lake import CLEARED_AWS_ENV, FAKE_AWS_ENV, MotoServer

pytestmark = pytest.mark.anyio

T0 = dt.datetime(2024, 3, 1, 7, 30, tzinfo=dt.UTC)


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """One moto server per test process (per xdist worker)."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def fake_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials for the default chain, so no test can reach a real AWS account."""
    for name in CLEARED_AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3_bucket(moto: MotoServer, fake_aws_env: None) -> str:
    return moto.create_bucket()


@pytest.fixture(scope="session")
def aws_session() -> aioboto3.Session:
    """Shared by the tests' S3 stores: each new session would parse botocore's S3 model again."""
    return aioboto3.Session()


@pytest.fixture(params=["memory", "local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[ObjectStore]:
    if request.param == "memory":
        built: ObjectStore = MemoryObjectStore()
    elif request.param == "local":
        built = object_store_drivers.create("local", lake_dir=str(tmp_path / "lake"))
    else:
        moto: MotoServer = request.getfixturevalue("moto")
        bucket = request.getfixturevalue("s3_bucket")
        session = request.getfixturevalue("aws_session")
        built = S3ObjectStore(bucket, prefix="lake", endpoint_url=moto.url, session=session)
    yield built
    await built.close()


# --- the port ----------------------------------------------------------------------------------


async def test_put_get_and_overwrite(store: ObjectStore) -> None:
    await store.put("tenants/t1/a.bin", b"first")
    assert await store.get("tenants/t1/a.bin") == b"first"
    await store.put("tenants/t1/a.bin", b"second, longer")
    assert await store.get("tenants/t1/a.bin") == b"second, longer"
    assert await store.list("tenants/") == [ObjectInfo("tenants/t1/a.bin", 14)]


async def test_bytes_are_kept_exactly(store: ObjectStore) -> None:
    payload = bytes(range(256)) * 64 + b"\x00\r\n"
    await store.put("blob", payload)
    await store.put("empty", b"")
    assert await store.get("blob") == payload
    assert await store.get("empty") == b""
    assert await store.list("") == [ObjectInfo("blob", len(payload)), ObjectInfo("empty", 0)]


async def test_missing_object_is_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFound) as caught:
        await store.get("tenants/t1/nothing.parquet")
    assert caught.value.code == "object_not_found"
    assert caught.value.status_code == 404


async def test_list_is_a_sorted_string_prefix_match(store: ObjectStore) -> None:
    keys = [
        "tenants/t1/events/date=2024-03-01/hour=07/b.parquet",
        "tenants/t1/events/date=2024-03-01/hour=07/a.parquet",
        "tenants/t1/events/date=2024-03-01/hour=08/a.parquet",
        "tenants/t10/events/date=2024-03-01/hour=07/a.parquet",
        "tenants/t2/x",
        "top",
    ]
    for n, key in enumerate(keys):
        await store.put(key, b"x" * n)
    assert [i.key for i in await store.list("")] == sorted(keys)
    assert [i.key for i in await store.list("tenants/t1/")] == sorted(keys[:3])
    assert [i.key for i in await store.list("tenants/t1")] == sorted(keys[:4])
    assert [i.key for i in await store.list("tenants/t1/events/date=2024-03-01/hour=0")] == sorted(keys[:3])
    assert await store.list("tenants/t1/events/date=2024-03-01/hour=07/a") == [ObjectInfo(keys[1], 1)]
    assert await store.list("tenants/t3/") == []
    assert await store.list("nowhere/at/all/") == []


async def test_keys_keep_unicode(store: ObjectStore) -> None:
    await store.put("tenants/t1/événements/ü 1.parquet", b"ok")
    assert await store.get("tenants/t1/événements/ü 1.parquet") == b"ok"
    assert [i.key for i in await store.list("tenants/t1/év")] == ["tenants/t1/événements/ü 1.parquet"]


async def test_delete(store: ObjectStore) -> None:
    for key in ("a/1", "a/2", "b/1"):
        await store.put(key, b"x")
    await store.delete(["a/1", "b/1", "never/was"])
    await store.delete([])
    assert [i.key for i in await store.list("")] == ["a/2"]
    with pytest.raises(NotFound):
        await store.get("a/1")
    await store.put("a/1", b"again")
    assert await store.get("a/1") == b"again"


async def test_delete_many(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # S3 takes at most 1,000 keys per DeleteObjects; a small batch size exercises the chunking quickly.
    monkeypatch.setattr("data_plane.lake.store._DELETE_BATCH", 7)
    keys = [f"many/{n:04d}" for n in range(40)]
    await asyncio.gather(*(store.put(key, b"") for key in keys))
    assert len(await store.list("many/")) == 40
    await store.delete(keys[:37])
    assert [i.key for i in await store.list("many/")] == keys[37:]


@pytest.mark.parametrize(
    "key", ["", "/a", "a/", "a//b", "../a", "a/../b", "a/./b", "a/.hidden", ".tmp", "a\\b", "a\x00b", "x" * 1025]
)
async def test_unsafe_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        await store.put(key, b"x")
    with pytest.raises(ValueError, match="invalid object key"):
        await store.get(key)
    with pytest.raises(ValueError, match="invalid object key"):
        await store.delete([key])
    assert await store.list("") == []


@pytest.mark.parametrize("prefix", ["/", "../", "a/../", "a//", "a/.hidden/"])
async def test_unsafe_prefixes_are_refused(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        await store.list(prefix)


async def test_concurrent_puts_leave_one_whole_object(store: ObjectStore) -> None:
    versions = [bytes([n]) * 200_000 for n in range(8)]
    await asyncio.gather(*(store.put("race/x.parquet", data) for data in versions))
    assert await store.get("race/x.parquet") in versions
    assert await store.list("race/") == [ObjectInfo("race/x.parquet", 200_000)]


# --- local driver specifics ----------------------------------------------------------------------


async def test_local_put_is_atomic_even_when_interrupted(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalObjectStore(tmp_path)
    await store.put("t/a.parquet", b"old")
    real_fdopen = os.fdopen
    half_written: list[int] = []

    class Interrupted(Exception):
        pass

    class DiesHalfway:
        """A file that writes half of what it is given, then fails (a crash mid-write)."""

        def __init__(self, file: Any) -> None:
            self.file = file

        def __enter__(self) -> DiesHalfway:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

        def write(self, data: bytes) -> int:
            self.file.write(data[: len(data) // 2])
            self.file.flush()
            half_written.append(os.fstat(self.file.fileno()).st_size)
            raise Interrupted("power cut mid-write")

    monkeypatch.setattr(os, "fdopen", lambda fd, *args, **kwargs: DiesHalfway(real_fdopen(fd, *args, **kwargs)))
    with pytest.raises(Interrupted):
        await store.put("t/a.parquet", b"new" * 1000)
    with pytest.raises(Interrupted):
        await store.put("t/b.parquet", b"new" * 1000)
    monkeypatch.undo()
    assert half_written == [1500, 1500], "the write really was cut short"
    assert await store.get("t/a.parquet") == b"old"
    assert await store.list("") == [ObjectInfo("t/a.parquet", 3)]
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["a.parquet"], "a temporary file was left"


async def test_local_ignores_and_sweeps_temporary_files_of_a_crashed_put(tmp_path: pathlib.Path) -> None:
    store = LocalObjectStore(tmp_path)
    await store.put("t/a.parquet", b"x")
    stray = tmp_path / "t" / ".b.parquet.k2j3h4.tmp"
    stray.write_bytes(b"half")
    assert await store.list("") == [ObjectInfo("t/a.parquet", 1)]
    assert store.sweep_temporary_files(older_than=3600) == 0
    old = time.time() - 7200
    os.utime(stray, (old, old))
    assert store.sweep_temporary_files(older_than=3600) == 1
    assert not stray.exists()
    assert (tmp_path / "t" / "a.parquet").read_bytes() == b"x"


async def test_local_files_are_plain_files_readable_by_others(tmp_path: pathlib.Path) -> None:
    store = LocalObjectStore(tmp_path)
    await store.put("tenants/t1/events/x.parquet", b"data")
    path = tmp_path / "tenants" / "t1" / "events" / "x.parquet"
    assert path.read_bytes() == b"data"
    assert path.stat().st_mode & 0o044 == 0o044


async def test_local_delete_prunes_empty_directories(tmp_path: pathlib.Path) -> None:
    store = LocalObjectStore(tmp_path / "lake")
    await store.put("tenants/t1/events/date=2024-03-01/hour=07/a.parquet", b"x")
    await store.put("tenants/t2/events/date=2024-03-01/hour=07/a.parquet", b"x")
    await store.delete(["tenants/t1/events/date=2024-03-01/hour=07/a.parquet"])
    assert not (tmp_path / "lake" / "tenants" / "t1").exists()
    assert (tmp_path / "lake" / "tenants" / "t2").is_dir()
    await store.put("tenants/t1/events/date=2024-03-01/hour=07/a.parquet", b"back")
    assert await store.get("tenants/t1/events/date=2024-03-01/hour=07/a.parquet") == b"back"


async def test_local_key_colliding_with_a_directory_is_a_conflict(tmp_path: pathlib.Path) -> None:
    store = LocalObjectStore(tmp_path)
    await store.put("a/b", b"x")
    with pytest.raises(Conflict):
        await store.put("a", b"y")
    with pytest.raises(Conflict):
        await store.put("a/b/c", b"y")
    # As on S3, a "directory" of other keys is no object: missing to get, nothing to delete.
    with pytest.raises(NotFound):
        await store.get("a")
    await store.delete(["a"])
    assert await store.get("a/b") == b"x"


async def test_local_disk_errors_are_unavailable(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalObjectStore(tmp_path)

    def broken_disk(*args: object, **kwargs: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", broken_disk)
    with pytest.raises(Unavailable) as caught:
        await store.put("t/a.parquet", b"x")
    assert caught.value.code == "object_store_unavailable" and caught.value.status_code == 503
    assert "Input/output error" in caught.value.detail and str(tmp_path) in caught.value.detail
    monkeypatch.undo()
    assert await store.list("") == []


# --- S3 driver specifics -------------------------------------------------------------------------


async def test_s3_prefix_isolates_stores_and_keys_land_under_it(
    moto: MotoServer, s3_bucket: str, aws_session: aioboto3.Session
) -> None:
    first = S3ObjectStore(s3_bucket, prefix="cell-1/", endpoint_url=moto.url, session=aws_session)
    second = S3ObjectStore(s3_bucket, prefix="cell-2", endpoint_url=moto.url, session=aws_session)
    try:
        await first.put("tenants/t1/a", b"1")
        await second.put("tenants/t1/a", b"2")
        assert await first.get("tenants/t1/a") == b"1"
        assert await second.list("") == [ObjectInfo("tenants/t1/a", 1)]
        raw = moto.s3_client().list_objects_v2(Bucket=s3_bucket)
        assert sorted(item["Key"] for item in raw["Contents"]) == ["cell-1/tenants/t1/a", "cell-2/tenants/t1/a"]
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize("operation", ["put", "get", "list", "delete"])
async def test_s3_outage_is_unavailable_promptly(
    closed_port: int, fake_aws_env: None, aws_session: aioboto3.Session, operation: str
) -> None:
    store = S3ObjectStore(
        "lake",
        endpoint_url=f"http://127.0.0.1:{closed_port}",
        session=aws_session,
        connect_timeout=0.5,
        read_timeout=1,
        max_attempts=1,
    )
    calls = {
        "put": lambda: store.put("a", b"x"),
        "get": lambda: store.get("a"),
        "list": lambda: store.list(""),
        "delete": lambda: store.delete(["a"]),
    }
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        await calls[operation]()
    assert time.monotonic() - started < 5
    assert caught.value.status_code == 503
    assert caught.value.code == "object_store_unavailable"
    assert f"127.0.0.1:{closed_port}" in caught.value.detail
    assert "testing" not in caught.value.detail
    await store.close()


async def test_s3_missing_bucket_is_unavailable_not_not_found(
    moto: MotoServer, fake_aws_env: None, aws_session: aioboto3.Session
) -> None:
    store = S3ObjectStore("no-such-bucket-here", endpoint_url=moto.url, session=aws_session, max_attempts=1)
    try:
        with pytest.raises(Unavailable, match="NoSuchBucket"):
            await store.put("a", b"x")
        with pytest.raises(Unavailable, match="NoSuchBucket"):
            await store.get("a")
    finally:
        await store.close()


# --- the registry --------------------------------------------------------------------------------


def test_unknown_driver_names_the_setting_and_the_choices() -> None:
    with pytest.raises(ConfigError) as caught:
        object_store_drivers.create("gcs", lake_dir="/tmp/x")
    assert caught.value.variable == "LIVORA_LAKE_DRIVER"
    assert "'gcs'" in str(caught.value) and "local, s3" in str(caught.value)
    assert object_store_drivers.names == ["local", "s3"]


def test_drivers_require_their_settings() -> None:
    with pytest.raises(ConfigError) as caught:
        object_store_drivers.create("local", lake_dir=None)
    assert caught.value.variable == "LIVORA_LAKE_DIR"
    with pytest.raises(ConfigError) as caught:
        object_store_drivers.create("s3", bucket="")
    assert caught.value.variable == "LIVORA_LAKE_BUCKET"


async def test_registry_builds_configured_drivers(tmp_path: pathlib.Path, moto: MotoServer, s3_bucket: str) -> None:
    local = object_store_drivers.create("local", lake_dir=str(tmp_path), bucket="ignored")
    assert isinstance(local, LocalObjectStore) and local.root.parts[-1] == tmp_path.parts[-1]
    s3 = object_store_drivers.create("s3", bucket=s3_bucket, prefix="cell-1", endpoint_url=moto.url, region="")
    assert isinstance(s3, S3ObjectStore) and (s3.bucket, s3.prefix) == (s3_bucket, "cell-1/")
    try:
        await s3.put("tenants/t1/a", b"x")
        assert moto.s3_client().get_object(Bucket=s3_bucket, Key="cell-1/tenants/t1/a")["Body"].read() == b"x"
    finally:
        await s3.close()


# --- the lake on every driver --------------------------------------------------------------------


def event(n: int, *, tenant: str = "ten_a", minutes: int = 0) -> Event:
    timestamp = T0 + dt.timedelta(minutes=minutes)
    return Event(
        message_id=f"m-{n}",
        tenant_id=tenant,
        source_id="src_1",
        type="track",
        event="Signed Up",
        anonymous_id=f"anon-{n}",
        received_at=timestamp + dt.timedelta(seconds=2),
        timestamp=timestamp,
        properties={"n": n},
    )


async def test_lake_end_to_end(store: ObjectStore) -> None:
    """Flushes of redelivered batches, compaction with a crash in the middle, counts and tenant deletion."""
    partition = Partition("ten_a", T0.date(), 7)
    sent = [event(n, tenant="ten_a" if n % 3 else "ten_b", minutes=n) for n in range(24)]
    for start in range(0, 24, 5):
        writer = LakeWriter(store)
        for n in range(max(0, start - 2), min(24, start + 5)):  # overlapping batches: redeliveries
            writer.add(sent[n], f"{n}-0")
        assert len(await writer.flush()) == min(24, start + 5) - max(0, start - 2)
    a_files = [i.key for i in await store.list(partition.prefix)]
    assert len(a_files) == 5
    assert await count(store, "ten_a", T0.date(), 7) == 16
    expected = {e.message_id: e for e in sent if e.tenant_id == "ten_a"}

    class CrashBeforeDelete:
        def __getattr__(self, name: str) -> object:
            return getattr(store, name)

        async def delete(self, keys: object) -> None:
            raise Unavailable("crash", code="object_store_unavailable")

    with pytest.raises(Unavailable):
        await Compactor(CrashBeforeDelete()).compact(partition)  # type: ignore[arg-type]
    assert len(await store.list(partition.prefix)) == 6
    results = await Compactor(store, clock=lambda: T0 + dt.timedelta(hours=2)).compact_closed("ten_a")
    assert [r.partition for r in results] == [partition]
    (merged,) = await store.list(partition.prefix)
    rows = from_table(decode_parquet(await store.get(merged.key)))
    assert {e.message_id: e for e in rows} == expected and len(rows) == 16
    metadata = pq.ParquetFile(io.BytesIO(await store.get(merged.key))).metadata
    assert metadata.row_group(0).column(0).compression == "ZSTD"
    assert await count_by_hour(store, "ten_a") == {T0.replace(minute=0): 16}
    assert await count_by_hour(store, "ten_b") == {T0.replace(minute=0): 8}
    assert await drop_tenant(store, "ten_a") == 1
    assert await store.list("tenants/ten_a/") == []
    assert await count_by_hour(store, "ten_b") == {T0.replace(minute=0): 8}
