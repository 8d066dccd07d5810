"""Conformance suite for the stream port, run against every driver: log, redis and kinesis (moto)."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aioboto3
import pytest
import redis.asyncio as aioredis

from data_plane.stream import StreamSettings, create_stream, stream_drivers
from data_plane.stream.kinesis import KinesisStream
from data_plane.stream.log import LogStream
from data_plane.stream.port import Entry, Record, Stream, partition_for, split_id
from data_plane.stream.redis_streams import RedisStream
from kernel.errors import ConfigError, Unavailable
from tests.support.moto import FAKE_AWS, REGION, MotoServer
from tests.support.redis_server import redis_server_binary, start_redis

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
# Long enough that a loaded machine does not reclaim an entry early, short enough to wait for.
IDLE_MS = 200


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """One moto server per test session (per xdist worker), stopped at the end."""
    server = MotoServer()
    try:
        server.start()
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"moto server did not start: {exc}", pytrace=False)
    yield server.url
    server.stop()


@functools.cache
def _aws_session() -> aioboto3.Session:
    """One session for the whole run: it caches the parsed Kinesis service model (~0.3 s per load)."""
    return aioboto3.Session(
        aws_access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=FAKE_AWS["AWS_SESSION_TOKEN"],
        region_name=REGION,
    )


@dataclass
class Backend:
    """A driver's backing store; ``open`` makes another instance (another client) on the same one."""

    name: str
    open: Callable[..., Stream]
    opened: list[Stream] = field(default_factory=list)

    def new(self, **kwargs: object) -> Stream:
        stream = self.open(**kwargs)
        self.opened.append(stream)
        return stream


@pytest.fixture(params=["log", pytest.param("redis", marks=pytest.mark.redis), "kinesis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """One fresh store per test; the redis param skips locally, fails in CI, when Redis is down."""
    name = request.param
    cleanup = None
    if name == "log":
        path = tmp_path / "stream" / "log.db"

        def open_log(partitions: int = PARTITIONS) -> Stream:
            return LogStream(path, partitions=partitions, poll_interval=0.02)

        opener: Callable[..., Stream] = open_log
    elif name == "redis":
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("unique_prefix")

        def open_redis(partitions: int = PARTITIONS) -> Stream:
            return RedisStream(url, prefix=prefix, partitions=partitions)

        async def drop() -> None:
            raw = aioredis.Redis.from_url(url)
            keys = [key async for key in raw.scan_iter(match=f"{prefix}*")]
            if keys:
                await raw.delete(*keys)
            await raw.aclose()

        opener, cleanup = open_redis, drop
    else:
        url = request.getfixturevalue("moto_url")
        stream_name = f"events-{uuid.uuid4().hex[:12]}"

        def open_kinesis(partitions: int = PARTITIONS) -> Stream:
            return KinesisStream(
                stream_name,
                state_path=tmp_path / "kinesis-state.db",
                partitions=partitions,
                endpoint_url=url,
                region_name=REGION,
                session=_aws_session(),
                create=True,
                poll_interval=0.02,
            )

        opener = open_kinesis
    made = Backend(name, opener)
    yield made
    for stream in made.opened:
        await stream.close()
    if cleanup is not None:
        await cleanup()


@pytest.fixture
def stream(backend: Backend) -> Stream:
    return backend.new()


def records(count: int, users: int = 5, tag: str = "") -> list[Record]:
    """Events of ``users`` users of two tenants; the payload says whose and which in order."""
    return [Record(f"tenant-{i % 2}/user-{i % users}", f"{tag}{i % users}:{i // users}".encode()) for i in range(count)]


async def drain(stream: Stream, group: str, consumer: str = "c", *, count: int = 100, **kw: object) -> list[Entry]:
    """Read until the group has nothing new for this consumer."""
    seen: list[Entry] = []
    while batch := await stream.read(group, consumer, count=count, **kw):  # type: ignore[arg-type]
        seen.extend(batch)
    return seen


def in_append_order(entries: Sequence[Entry], ids: Sequence[str]) -> bool:
    """Whether, within every partition, ``entries`` come in the order their ids were appended."""
    rank = {entry_id: i for i, entry_id in enumerate(ids)}
    last: dict[int, int] = {}
    for entry in entries:
        if rank[entry.id] <= last.get(entry.partition, -1):
            return False
        last[entry.partition] = rank[entry.id]
    return True


# --- append ----------------------------------------------------------------------------------


async def test_append_returns_ids_in_input_order(stream: Stream) -> None:
    batch = records(20)
    ids = await stream.append(batch)
    assert len(ids) == len(set(ids)) == 20
    for record, entry_id in zip(batch, ids, strict=True):
        assert split_id(entry_id, PARTITIONS)[0] == partition_for(record.partition_key, PARTITIONS)
    by_id = {e.id: e for e in await drain(stream, "g")}
    assert [by_id[i].payload for i in ids] == [r.payload for r in batch]
    assert [by_id[i].partition_key for i in ids] == [r.partition_key for r in batch]
    assert all(e.deliveries == 1 for e in by_id.values())


async def test_empty_append_is_a_no_op(stream: Stream) -> None:
    assert await stream.append([]) == []
    assert await stream.read("g", "c", count=10) == []


async def test_concurrent_appends_each_get_their_own_ids_in_order(stream: Stream) -> None:
    batches = [records(10, tag=f"b{n}-") for n in range(8)]
    results = await asyncio.gather(*(stream.append(b) for b in batches))
    all_ids = [i for ids in results for i in ids]
    assert len(set(all_ids)) == 80
    by_id = {e.id: e for e in await drain(stream, "g")}
    for batch, ids in zip(batches, results, strict=True):
        assert [by_id[i].payload for i in ids] == [r.payload for r in batch]


async def test_appended_entries_survive_a_new_instance(backend: Backend) -> None:
    first = backend.new()
    ids = await first.append(records(12))
    await first.close()
    second = backend.new()
    seen = await drain(second, "g")
    assert sorted(e.id for e in seen) == sorted(ids)


@pytest.mark.parametrize("key", ["", "t/" + "x" * 255])
def test_a_partition_key_has_1_to_256_characters(key: str) -> None:
    with pytest.raises(ValueError, match="partition key"):
        Record(key, b"{}")


# --- order -----------------------------------------------------------------------------------


async def test_one_consumer_gets_each_partition_in_append_order(stream: Stream) -> None:
    ids: list[str] = []
    for n in range(3):
        ids += await stream.append(records(14, users=6, tag=f"{n}-"))
    seen = await drain(stream, "g", count=7)
    assert sorted(e.id for e in seen) == sorted(ids)
    assert in_append_order(seen, ids)
    # Hence each user's events too: one user is one key, so one partition.
    per_user: dict[str, list[str]] = defaultdict(list)
    for entry in seen:
        per_user[entry.partition_key].append(entry.id)
    for key, user_ids in per_user.items():
        assert user_ids == [i for i in ids if i in set(user_ids)], key


async def test_consumers_that_own_partitions_keep_every_users_order(stream: Stream) -> None:
    """Static assignment: consumer 0 of 2 reads partitions 0 and 2, consumer 1 the others."""
    ids = await stream.append(records(40, users=9))
    first = await drain(stream, "g", "c0", count=3, partitions={0, 2})
    second = await drain(stream, "g", "c1", count=3, partitions={1, 3})
    assert {e.partition for e in first} <= {0, 2}
    assert {e.partition for e in second} <= {1, 3}
    assert sorted(e.id for e in first + second) == sorted(ids)
    assert in_append_order(first, ids) and in_append_order(second, ids)
    assert not {e.partition_key for e in first} & {e.partition_key for e in second}


async def test_read_refuses_a_partition_out_of_range(stream: Stream) -> None:
    with pytest.raises(ValueError, match="out of range"):
        await stream.read("g", "c", count=1, partitions={PARTITIONS})


# --- groups and consumers ------------------------------------------------------------------


async def test_every_group_sees_every_entry(stream: Stream) -> None:
    ids = await stream.append(records(15))
    assert sorted(e.id for e in await drain(stream, "lake")) == sorted(ids)
    assert sorted(e.id for e in await drain(stream, "profiles")) == sorted(ids)
    assert await stream.read("lake", "c", count=10) == []


async def test_consumers_of_one_group_split_entries_without_duplicates(stream: Stream) -> None:
    ids = await stream.append(records(30))
    got: dict[str, list[Entry]] = {"a": [], "b": []}
    while True:
        a = await stream.read("g", "a", count=4)
        b = await stream.read("g", "b", count=4)
        got["a"] += a
        got["b"] += b
        if not a and not b:
            break
    assert got["a"] and got["b"]
    assert not {e.id for e in got["a"]} & {e.id for e in got["b"]}
    assert sorted(e.id for e in got["a"] + got["b"]) == sorted(ids)
    # Each consumer still sees every partition's entries in append order (a subsequence).
    assert in_append_order(got["a"], ids) and in_append_order(got["b"], ids)


async def test_count_bounds_a_read(stream: Stream) -> None:
    await stream.append(records(10))
    assert len(await stream.read("g", "c", count=3)) == 3
    assert len(await stream.read("g", "c", count=1)) == 1
    assert len(await stream.read("g", "c", count=100)) == 6


async def test_a_new_group_starts_at_the_oldest_entry(stream: Stream) -> None:
    ids = await stream.append(records(5))
    await drain(stream, "early")
    ids += await stream.append(records(5, tag="later-"))
    assert sorted(e.id for e in await drain(stream, "late")) == sorted(ids)


async def test_read_waits_for_an_append(backend: Backend) -> None:
    reader, writer = backend.new(), backend.new()
    await reader.read("g", "c", count=1)  # the group exists, empty
    started = time.monotonic()
    waiting = asyncio.create_task(reader.read("g", "c", count=10, block_ms=5000))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    ids = await writer.append(records(2))
    got = await asyncio.wait_for(waiting, 4)
    assert {e.id for e in got} <= set(ids) and got
    assert time.monotonic() - started < 3


async def test_read_with_nothing_new_returns_empty_after_block(stream: Stream) -> None:
    started = time.monotonic()
    assert await stream.read("g", "c", count=10, block_ms=250) == []
    assert 0.2 <= time.monotonic() - started < 2
    started = time.monotonic()
    assert await stream.read("g", "c", count=10, block_ms=0) == []
    assert time.monotonic() - started < 1


# --- ack, pending, reclaim -----------------------------------------------------------------


async def test_ack_removes_from_pending(stream: Stream) -> None:
    await stream.append(records(8))
    got = await stream.read("g", "c", count=5)
    assert await stream.pending("g") == 5
    assert await stream.ack("g", [e.id for e in got[:2]]) == 2
    assert await stream.pending("g") == 3
    assert await stream.ack("g", [e.id for e in got[:2]]) == 0, "ack is idempotent"
    assert await stream.ack("other-group", [got[2].id]) == 0
    assert await stream.ack("g", []) == 0
    assert await stream.pending("g") == 3
    assert await stream.pending("never-read") == 0


async def test_malformed_ids_are_refused(stream: Stream) -> None:
    for bad in ["nonsense", f"{PARTITIONS}:1", "-1:1", "0:"]:
        with pytest.raises(ValueError):
            await stream.ack("g", [bad])


async def test_unacked_entries_are_reclaimed_by_another_consumer(stream: Stream) -> None:
    ids = await stream.append(records(6))
    held = await stream.read("g", "dead-worker", count=4)
    assert await stream.reclaim("g", "rescuer", min_idle_ms=60_000, count=10) == [], "not idle long enough"
    await asyncio.sleep(IDLE_MS / 1000 + 0.05)
    taken = await stream.reclaim("g", "rescuer", min_idle_ms=IDLE_MS, count=10)
    assert sorted(e.id for e in taken) == sorted(e.id for e in held)
    assert {e.id: e.payload for e in taken} == {e.id: e.payload for e in held}
    assert all(e.deliveries == 2 for e in taken)
    assert in_append_order(taken, ids)
    assert await stream.pending("g") == 4
    # Reclaiming resets the idle clock: nobody can take them straight back.
    assert await stream.reclaim("g", "dead-worker", min_idle_ms=IDLE_MS, count=10) == []
    # The two never read are still new for the group; the reclaimed ones are not.
    assert len(await stream.read("g", "rescuer", count=10)) == 2
    assert await stream.ack("g", [e.id for e in taken]) == 4


async def test_reclaim_counts_every_delivery_and_honours_count(stream: Stream) -> None:
    await stream.append(records(3))
    await stream.read("g", "a", count=3)
    await asyncio.sleep(0.06)
    first = await stream.reclaim("g", "b", min_idle_ms=50, count=2)
    assert len(first) == 2 and all(e.deliveries == 2 for e in first)
    await asyncio.sleep(0.06)
    again = await stream.reclaim("g", "c", min_idle_ms=50, count=10)
    assert Counter(e.deliveries for e in again) == Counter({3: 2, 2: 1})


async def test_reclaim_of_an_unknown_group_is_empty(stream: Stream) -> None:
    assert await stream.reclaim("nobody", "c", min_idle_ms=0, count=10) == []


# --- dead letters --------------------------------------------------------------------------


async def test_dead_letter_keeps_the_reason_and_replay_delivers_it_again(stream: Stream) -> None:
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    await stream.append([Record("tenant-1/poison", b'{"bad": true}'), Record("tenant-1/fine", b"{}")])
    got = {e.partition_key: e for e in await drain(stream, "g")}
    poison = got["tenant-1/poison"]
    dead_id = await stream.dead_letter("g", poison, "schema: missing message_id")
    assert dead_id is not None
    assert await stream.dead_letter("g", poison, "again") is None, "a retried dead-letter is not stored twice"
    assert await stream.pending("g") == 1
    (letter,) = await stream.dead_letters()
    assert letter.id == dead_id
    assert (letter.group, letter.entry_id, letter.reason) == ("g", poison.id, "schema: missing message_id")
    assert (letter.partition, letter.partition_key, letter.payload) == (
        poison.partition,
        "tenant-1/poison",
        poison.payload,
    )
    assert letter.deliveries == 1
    assert before <= letter.dead_lettered_at <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)

    assert await stream.replay([dead_id, "12345", "not-an-id"]) == 1
    assert await stream.dead_letters() == []
    assert await stream.replay([dead_id]) == 0
    (again,) = await stream.read("g", "c", count=10)
    assert (again.partition_key, again.payload, again.partition) == (
        "tenant-1/poison",
        poison.payload,
        poison.partition,
    )
    assert again.id != poison.id and again.deliveries == 1


async def test_dead_letters_are_listed_oldest_first_with_a_limit(stream: Stream) -> None:
    await stream.append(records(4))
    got = await drain(stream, "g")
    for n, entry in enumerate(got):
        await stream.dead_letter("g", entry, f"reason {n}")
    assert [d.reason for d in await stream.dead_letters()] == [f"reason {n}" for n in range(4)]
    assert [d.reason for d in await stream.dead_letters(limit=2)] == ["reason 0", "reason 1"]
    assert await stream.pending("g") == 0


async def test_dead_letter_of_an_entry_not_pending_is_refused(stream: Stream) -> None:
    await stream.append(records(1))
    (entry,) = await stream.read("g", "c", count=1)
    await stream.ack("g", [entry.id])
    assert await stream.dead_letter("g", entry, "too late") is None
    assert await stream.dead_letter("other", entry, "never read there") is None
    assert await stream.dead_letters() == []


# --- retention -----------------------------------------------------------------------------


async def test_trim_keeps_what_any_group_still_needs(backend: Backend, stream: Stream) -> None:
    ids = await stream.append(records(8))
    assert await stream.trim() == 0, "no group has read anything"
    done = await drain(stream, "a")
    await stream.ack("a", [e.id for e in done])
    partly = await stream.read("b", "c", count=4)
    await stream.ack("b", [e.id for e in partly[1:]])
    removed = await stream.trim()
    # b still needs its pending entry and the four it has not read.
    (held,) = await stream.reclaim("b", "c2", min_idle_ms=0, count=10)
    assert (held.id, held.payload) == (partly[0].id, partly[0].payload)
    rest = await drain(stream, "b")
    assert sorted(e.id for e in partly + rest) == sorted(ids)
    await stream.ack("b", [held.id] + [e.id for e in rest])
    removed += await stream.trim()
    if backend.name == "kinesis":
        assert removed == 0, "Kinesis expires records by its retention period, not by acks"
    else:
        assert removed == 8
        assert await drain(stream, "new-group") == []


# --- failures ------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _unreachable(name: str, tmp_path: Path) -> Stream:
    if name == "log":
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("a file where the log's folder should be")
        return LogStream(blocker / "log.db", partitions=PARTITIONS)
    if name == "redis":
        return RedisStream(f"redis://127.0.0.1:{_closed_port()}/0", partitions=PARTITIONS)
    return KinesisStream(
        "events",
        state_path=tmp_path / "state.db",
        partitions=PARTITIONS,
        endpoint_url=f"http://127.0.0.1:{_closed_port()}",
        region_name=REGION,
        session=_aws_session(),
    )


@pytest.mark.parametrize("name", ["log", "redis", "kinesis"])
@pytest.mark.parametrize("operation", ["append", "read"])
async def test_backend_down_raises_unavailable(name: str, operation: str, tmp_path: Path) -> None:
    stream = _unreachable(name, tmp_path)
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        if operation == "append":
            await stream.append(records(3))
        else:
            await stream.read("g", "c", count=10, block_ms=100)
    assert time.monotonic() - started < 5, "an outage must answer promptly, not after long retries"
    assert caught.value.status_code == 503
    assert caught.value.code == "stream_unavailable"
    await stream.close()


async def test_a_closed_stream_raises_unavailable(stream: Stream) -> None:
    await stream.append(records(1))
    await stream.close()
    for call in (
        lambda: stream.append(records(1)),
        lambda: stream.read("g", "c", count=1),
        lambda: stream.pending("g"),
    ):
        with pytest.raises(Unavailable):
            await call()


async def test_another_partition_count_is_refused(backend: Backend) -> None:
    await backend.new().append(records(2))
    with pytest.raises(ConfigError) as caught:
        await backend.new(partitions=PARTITIONS * 2).ping()
    assert caught.value.variable == "LIVORA_STREAM_PARTITIONS"


# --- partitioning --------------------------------------------------------------------------

_PRINT_PARTITIONS = (
    "from data_plane.stream.port import partition_for as p; print([p(f't{i}/u{i * 7}', 8) for i in range(200)])"
)


def test_partition_choice_is_stable_across_processes_and_spreads_keys() -> None:
    here = [partition_for(f"t{i}/u{i * 7}", 8) for i in range(200)]
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", _PRINT_PARTITIONS],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == str(here), "partition choice must not depend on the process"
    spread = Counter(partition_for(f"tenant-{i % 7}/user-{i}", 8) for i in range(16_000))
    assert set(spread) == set(range(8))
    assert all(1_700 <= n <= 2_300 for n in spread.values()), spread


# --- the registry --------------------------------------------------------------------------


def test_unknown_driver_names_the_setting_and_the_choices() -> None:
    with pytest.raises(ConfigError) as caught:
        create_stream(StreamSettings(stream_driver="kafka"))
    assert caught.value.variable == "LIVORA_STREAM_DRIVER"
    assert "kinesis, log, redis" in str(caught.value)
    assert stream_drivers.names == ["kinesis", "log", "redis"]


def test_redis_driver_requires_a_url() -> None:
    with pytest.raises(ConfigError) as caught:
        create_stream(StreamSettings(stream_driver="redis"))
    assert caught.value.variable == "LIVORA_REDIS_URL"


async def test_settings_build_the_embedded_log(tmp_path: Path) -> None:
    stream = create_stream(StreamSettings(stream_log_path=str(tmp_path / "log.db"), stream_partitions=2))
    assert isinstance(stream, LogStream) and stream.partitions == 2
    ids = await stream.append(records(3))
    assert len(await stream.read("g", "c", count=10)) == len(ids)
    await stream.close()


# --- the log driver: kill -9 ---------------------------------------------------------------

_WRITER = """
import asyncio, sys
from data_plane.stream.log import LogStream
from data_plane.stream.port import Record

async def main():
    stream = LogStream(sys.argv[1], partitions=4)
    batch = 0
    while True:
        ids = await stream.append([Record(f"t/u{(batch + j) % 13}", f"{batch}:{j}".encode()) for j in range(50)])
        sys.stdout.write(f"{batch} {' '.join(ids)}\\n")
        sys.stdout.flush()
        batch += 1

asyncio.run(main())
"""


def test_log_keeps_every_acknowledged_append_through_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert writer.stdout is not None
    lines: list[bytes] = []
    try:
        while len(lines) < 40:
            line = writer.stdout.readline()
            assert line, f"writer died: {writer.stderr.read().decode() if writer.stderr else ''}"
            lines.append(line)
    finally:
        # Mid-append: the writer never pauses between batches.
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    lines += writer.stdout.read().splitlines(keepends=True)
    writer.stdout.close()
    if writer.stderr:
        writer.stderr.close()
    acked: dict[str, bytes] = {}
    for line in lines:
        if not line.endswith(b"\n"):
            continue  # cut off by the kill: not known to be acknowledged
        batch, *ids = line.decode().split()
        acked.update({entry_id: f"{batch}:{j}".encode() for j, entry_id in enumerate(ids)})

    async def read_back() -> dict[str, bytes]:
        stream = LogStream(path, partitions=4)
        try:
            return {e.id: e.payload for e in await drain(stream, "audit", count=1000)}
        finally:
            await stream.close()

    found = asyncio.run(read_back())
    assert len(acked) >= 40 * 50
    missing = set(acked) - set(found)
    assert not missing, f"{len(missing)} acknowledged entries lost"
    assert all(found[i] == payload for i, payload in acked.items())


async def test_log_appends_do_not_block_the_event_loop(tmp_path: Path) -> None:
    stream = LogStream(tmp_path / "log.db", partitions=PARTITIONS)
    gaps: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.002)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    for _ in range(20):
        await stream.append(records(500))
    stop.set()
    await beat
    await stream.close()
    assert len(gaps) > 20, "the loop ran while the appends were committed"
    assert max(gaps) < 0.25


# --- the redis driver: persistence ---------------------------------------------------------


def test_redis_with_aof_always_keeps_acknowledged_appends_through_kill_9(tmp_path: Path) -> None:
    binary = redis_server_binary()
    port = _closed_port()
    url = f"redis://127.0.0.1:{port}/0"

    async def append() -> list[str]:
        stream = RedisStream(url, partitions=PARTITIONS, require_aof=True)
        await stream.ping()
        ids = await stream.append(records(25))
        await stream.close()
        return ids

    async def read_back() -> list[str]:
        stream = RedisStream(url, partitions=PARTITIONS, require_aof=True)
        seen = await drain(stream, "g")
        await stream.close()
        return [e.id for e in seen]

    server = start_redis(binary, port, tmp_path)
    try:
        ids = asyncio.run(append())
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    server = start_redis(binary, port, tmp_path)
    try:
        assert sorted(asyncio.run(read_back())) == sorted(ids)
    finally:
        server.kill()
        server.wait()


@pytest.mark.redis
async def test_redis_required_aof_refuses_a_server_without_it(redis_url: str, unique_prefix: str) -> None:
    # The shared test server keeps nothing on disk (appendonly no).
    stream = RedisStream(redis_url, prefix=unique_prefix, partitions=PARTITIONS, require_aof=True)
    with pytest.raises(ConfigError) as caught:
        await stream.append(records(1))
    assert caught.value.variable == "LIVORA_STREAM_REDIS_REQUIRE_AOF"
    await stream.close()
    raw = aioredis.Redis.from_url(redis_url)
    await raw.delete(f"{unique_prefix}meta")
    await raw.aclose()


@pytest.mark.redis
async def test_redis_never_caps_the_streams(redis_url: str, unique_prefix: str) -> None:
    """XADD carries no MAXLEN: a backlog no group has acked stays whole."""
    stream = RedisStream(redis_url, prefix=unique_prefix, partitions=1)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        for _ in range(30):
            await stream.append(records(100))
        assert await raw.xlen(f"{unique_prefix}0") == 3_000
        await stream.read("g", "c", count=10)
        assert await stream.trim() == 0, "only what every group acked may go"
        assert await raw.xlen(f"{unique_prefix}0") == 3_000
    finally:
        await stream.close()
        keys = [key async for key in raw.scan_iter(match=f"{unique_prefix}*")]
        await raw.delete(*keys)
        await raw.aclose()
