"""The worker over multi-event stream entries: each event once, poison isolated, fast takeover, shards."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import msgspec
import pyarrow.parquet as pq
import pytest

from data_plane.events import Event, decode_entry, encode_entry, encode_event
from data_plane.ops.service import Operations
from data_plane.pipeline.settings import PipelineSettings, load_pipeline_settings
from data_plane.pipeline.worker import GROUP, PipelineWorker, create_worker, delivery_id, shard_partitions
from data_plane.settings import CellSettings
from data_plane.stream.log import LogStream
from data_plane.stream.port import Record, Stream, partition_for
from data_plane.stream.redis_streams import RedisStream
from data_plane.usage.reconcile import reconcile
from kernel.errors import Unavailable

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _event(i: int, tenant: str = "tenA", user: str | None = None, **fields: object) -> Event:
    return Event(
        message_id=f"m-{i}",
        tenant_id=tenant,
        source_id="src",
        type="track",
        event="Tick",
        received_at=NOW,
        timestamp=NOW - dt.timedelta(seconds=i % 50),
        user_id=user or f"u{i % 23}",
        **fields,
    )


def _records(events: list[Event], per_request: int, partitions: int = 8) -> list[Record]:
    """One entry per (request, partition), as ingestion appends them."""
    records = []
    for start in range(0, len(events), per_request):
        by_partition: dict[int, list[Event]] = {}
        for event in events[start : start + per_request]:
            key = f"{event.tenant_id}/{event.partition_key}"
            by_partition.setdefault(partition_for(key, partitions), []).append(event)
        records += [
            Record(f"{group[0].tenant_id}/{group[0].partition_key}", encode_entry(group))
            for group in by_partition.values()
        ]
    return records


class Cell:
    def __init__(self, root: Path, stream: Stream | None = None, pipeline: PipelineSettings | None = None) -> None:
        self.settings = CellSettings(data_dir=str(root), lake_flush_seconds=0.2)
        self.settings.cell_dir.mkdir(parents=True, exist_ok=True)
        self.stream = stream or LogStream(self.settings.cell_dir / "stream.db")
        self.pipeline = pipeline

    def worker(self, **overrides: object) -> PipelineWorker:
        worker = create_worker(self.stream, self.settings, self.pipeline)
        worker.reclaim_idle_ms = 200
        for name, value in overrides.items():
            setattr(worker, name, value)
        return worker

    def lake(self) -> list[dict]:
        rows: list[dict] = []
        for file in sorted(self.settings.lake_path.rglob("*.parquet")):
            rows += pq.read_table(file, columns=["message_id", "user_id", "session_id", "context"]).to_pylist()
        return rows


async def _drain(worker: PipelineWorker, stream: Stream) -> None:
    for _ in range(2000):
        try:
            handled = await worker.step()
        except Unavailable:
            # As PipelineWorker.run does: a store busy beyond its wait (two workers on one tenant's
            # profile file, a loaded machine) is retried; nothing was acked, so nothing is lost.
            await asyncio.sleep(0.1)
            continue
        if not handled and not worker.lake.buffered and await stream.pending(GROUP) == 0:
            break
        if not handled:
            await worker.flush()
    await worker.flush()


@pytest.fixture
def cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cell:
    for name in ("LIVORA_PROFILES_SQLITE_ROOT", "LIVORA_DEDUP_SQLITE_PATH", "LIVORA_WORKER_SHARD"):
        monkeypatch.delenv(name, raising=False)
    return Cell(tmp_path)


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def drivers(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cell:
    """The embedded stack, or the production stream and dedup (Redis Streams, Redis dedup)."""
    for name in ("LIVORA_PROFILES_SQLITE_ROOT", "LIVORA_DEDUP_SQLITE_PATH", "LIVORA_WORKER_SHARD"):
        monkeypatch.delenv(name, raising=False)
    if request.param == "embedded":
        return Cell(tmp_path)
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("unique_prefix")
    pipeline = load_pipeline_settings({}, dedup_driver="redis", redis_url=url, kv_prefix=prefix)
    return Cell(tmp_path, RedisStream(url, prefix=prefix), pipeline)


def test_every_event_of_every_entry_lands_once_and_entries_are_acked(drivers: Cell) -> None:
    cell = drivers
    events = [_event(i) for i in range(3000)]
    # The second half again in other requests (an SDK retrying): duplicates, dropped.
    retried = [msgspec.structs.replace(e, received_at=NOW + dt.timedelta(seconds=1)) for e in events[1500:]]

    async def scenario() -> tuple[dict, list]:
        await cell.stream.append(_records(events, 100))
        await cell.stream.append(_records(retried, 100))
        worker = cell.worker()
        await _drain(worker, cell.stream)
        stats = {"written": worker.stats.written, "duplicates": worker.stats.duplicates}
        assert await cell.stream.pending(GROUP) == 0
        books = await reconcile(worker.ledger, worker.lake_store, tenant_id="tenA")
        await worker.close()
        await cell.stream.close()
        return stats, books

    stats, books = asyncio.run(scenario())
    ids = [row["message_id"] for row in cell.lake()]
    assert len(ids) == len(set(ids)) == 3000
    assert stats == {"written": 3000, "duplicates": 1500}
    assert sum(row.in_lake for row in books) == 3000
    assert sum(row.duplicates for row in books) == 1500
    # Sessions and profiles reached every event, in one copy of its context.
    assert all(row["session_id"] and '"profile_id"' in row["context"] for row in cell.lake())


def test_one_poison_event_is_dead_lettered_alone_and_its_siblings_land(drivers: Cell) -> None:
    cell = drivers
    good = [_event(i, user="same-user") for i in range(5)]
    poison = _event(99, user="bad\u0000user")  # the profile store refuses a NUL in an id
    entry = [*good[:2], poison, *good[2:]]

    async def scenario() -> None:
        worker = cell.worker()
        ledger = worker.ledger
        assert ledger is not None
        await ledger.accepted("tenA", NOW, len(entry), [])
        [entry_id] = await cell.stream.append([Record("tenA/same-user", encode_entry(entry))])
        await _drain(worker, cell.stream)
        assert await cell.stream.pending(GROUP) == 0
        [letter] = await cell.stream.dead_letters()
        assert letter.entry_id == entry_id
        assert letter.reason.startswith("profile_refused")
        assert [e.message_id for e in decode_entry(letter.payload)] == ["m-99"]
        assert worker.stats.dead_lettered == 1 and worker.stats.written == 5
        ops = Operations(cell.stream, ledger, worker.lake_store)
        [view] = await ops.dead_letters("tenA", 10)
        assert view.message_id == "m-99" and view.message_ids == ["m-99"]
        books = await ops.reconciliation("tenA", None, None)
        assert books.balanced and sum(h.dead_lettered for h in books.hours) == 1

        # A replay appends just the poison event; still poison, it is dead again and counted once.
        assert (await ops.replay([letter.id])).replayed == 1
        await _drain(worker, cell.stream)
        [again] = await cell.stream.dead_letters()
        assert [e.message_id for e in decode_entry(again.payload)] == ["m-99"]
        books = await ops.reconciliation("tenA", None, None)
        assert books.balanced and sum(h.dead_lettered for h in books.hours) == 1
        await worker.close()
        await cell.stream.close()

    asyncio.run(scenario())
    assert sorted(row["message_id"] for row in cell.lake()) == [f"m-{i}" for i in range(5)]


def test_an_undecodable_event_is_dead_lettered_alone(cell: Cell) -> None:
    good = [encode_event(_event(i, user="u")) for i in range(3)]
    payload = b"[" + b",".join([good[0], b'{"message_id": "broken"}', *good[1:]]) + b"]"

    async def scenario() -> None:
        await cell.stream.append([Record("tenA/u", payload), Record("tenA/u", b"\xff not json")])
        worker = cell.worker()
        await _drain(worker, cell.stream)
        # The unreadable entry goes at once; the other once its good events are durable.
        letters = sorted(await cell.stream.dead_letters(), key=lambda letter: letter.entry_id)
        assert [letter.reason.split(":")[0] for letter in letters] == ["undecodable", "undecodable"]
        assert msgspec.json.decode(letters[0].payload) == [{"message_id": "broken"}]
        assert letters[1].payload == b"\xff not json"
        await worker.close()
        await cell.stream.close()

    asyncio.run(scenario())
    assert sorted(row["message_id"] for row in cell.lake()) == ["m-0", "m-1", "m-2"]


def test_a_crash_halfway_through_entries_loses_and_duplicates_nothing(cell: Cell) -> None:
    events = [_event(i) for i in range(2000)]

    async def scenario() -> None:
        await cell.stream.append(_records(events, 100))
        # Nothing reaches the lake before the crash.
        doomed = cell.worker(batch_events=300, reclaim_idle_ms=60_000)
        doomed.lake.max_age_s = 60
        for _ in range(3):
            await doomed.step()
        assert doomed.lake.buffered
        await doomed.dedup.close()  # killed: its buffer is gone, its entries stay pending
        await asyncio.sleep(0.25)
        worker = cell.worker()
        await _drain(worker, cell.stream)
        assert await cell.stream.pending(GROUP) == 0
        assert worker.stats.duplicates == 0
        books = await reconcile(worker.ledger, worker.lake_store)
        assert sum(row.in_lake for row in books) == 2000
        await worker.close()
        await cell.stream.close()

    asyncio.run(scenario())
    ids = [row["message_id"] for row in cell.lake()]
    assert len(ids) == len(set(ids)) == 2000


def test_a_dead_consumers_backlog_is_taken_over_at_processing_speed(cell: Cell) -> None:
    events = [_event(i) for i in range(3000)]
    idle_s = 3.0

    async def scenario() -> float:
        await cell.stream.append([Record(f"tenA/{e.user_id}", encode_entry([e])) for e in events])
        # A consumer that read everything and died.
        while await cell.stream.read(GROUP, "dead", count=1000):
            pass
        await asyncio.sleep(idle_s + 0.1)
        worker = cell.worker(batch_size=250, batch_events=250, reclaim_idle_ms=int(idle_s * 1000))
        started = asyncio.get_running_loop().time()
        # Reads of at most 250: one reclaim per idle period would take 12 periods (36 s); a reclaim
        # that came back full asks again on the next step.
        while await cell.stream.pending(GROUP) and asyncio.get_running_loop().time() - started < idle_s:
            await worker.step()
        await worker.flush()
        elapsed = asyncio.get_running_loop().time() - started
        assert await cell.stream.pending(GROUP) == 0
        await worker.close()
        await cell.stream.close()
        return elapsed

    elapsed = asyncio.run(scenario())
    assert elapsed < idle_s
    assert len({row["message_id"] for row in cell.lake()}) == 3000


def test_shards_split_the_partitions_and_keep_each_user_with_one_worker(cell: Cell) -> None:
    assert shard_partitions("", 8) is None
    assert shard_partitions("0/2", 8) == [0, 2, 4, 6]
    assert shard_partitions("1/3", 8) == [1, 4, 7]
    for bad in ("2/2", "x/2", "1", "8/9"):  # 8/9 would own none of 8 partitions
        with pytest.raises(ValueError):
            shard_partitions(bad, 8)
    assert delivery_id("3:17", 4) == "3:17#4"
    events = [_event(i) for i in range(1200)]

    async def scenario() -> dict[str, set[str]]:
        await cell.stream.append(_records(events, 100))
        # Nobody dies here: no takeover of the other shard's entries, however slow the machine.
        a = cell.worker(partitions=shard_partitions("0/2", 8), consumer="a", reclaim_idle_ms=60_000)
        b = cell.worker(partitions=shard_partitions("1/2", 8), consumer="b", reclaim_idle_ms=60_000)
        seen: dict[str, set[str]] = {"a": set(), "b": set()}
        for name, worker in (("a", a), ("b", b)):
            original = worker.lake.add

            def add(event: Event, delivery: str, original=original, name=name) -> None:  # type: ignore[no-untyped-def]
                seen[name].add(event.user_id or "")
                original(event, delivery)

            worker.lake.add = add  # type: ignore[method-assign]
        await asyncio.gather(_drain(a, cell.stream), _drain(b, cell.stream))
        assert await cell.stream.pending(GROUP) == 0
        await a.close()
        await b.close()
        await cell.stream.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen["a"] and seen["b"] and not seen["a"] & seen["b"]
    ids = [row["message_id"] for row in cell.lake()]
    assert len(ids) == len(set(ids)) == 1200


def test_an_entry_delivered_too_often_is_dead_lettered_whole_and_a_replay_lands_it(cell: Cell) -> None:
    events = [_event(i, user="u") for i in range(4)]

    async def scenario() -> None:
        [entry_id] = await cell.stream.append([Record("tenA/u", encode_entry(events))])
        # Workers that took it and died before settling, again and again.
        doomed = cell.worker(reclaim_idle_ms=60_000)
        doomed.lake.max_age_s = 60
        await doomed.step()  # dedup has seen its events under their delivery ids
        await doomed.dedup.close()
        for n in range(5):
            assert await cell.stream.reclaim(GROUP, f"dead-{n}", min_idle_ms=0, count=10)
        await asyncio.sleep(0.25)  # idle long enough to be reclaimed (a 7th delivery)
        worker = cell.worker(max_deliveries=5)
        await worker.step()
        [letter] = await cell.stream.dead_letters()
        assert letter.entry_id == entry_id and letter.reason.startswith("too_many_deliveries")
        assert [e.message_id for e in decode_entry(letter.payload)] == [e.message_id for e in events]
        # Released from dedup: replayed, the events are new, not duplicates of the lost deliveries.
        assert await cell.stream.replay([letter.id]) == 1
        await _drain(worker, cell.stream)
        assert worker.stats.duplicates == 0 and worker.stats.written == 4
        books = await reconcile(worker.ledger, worker.lake_store, tenant_id="tenA")
        assert sum(row.in_lake for row in books) == 4
        await worker.close()
        await cell.stream.close()

    asyncio.run(scenario())
