"""100,000 events through `livora cell --workers 2` while two sharded `livora worker` processes are killed
(SIGKILL) again and again: none lost, none twice, and each user's events in order."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from data_plane.lake.compactor import Compactor
from data_plane.lake.layout import Partition
from data_plane.lake.reader import read_files
from data_plane.lake.store import open_lake_store
from tests.support.cell import SECRET, basic
from tests.support.localstripe_server import free_port

EVENTS = 100_000
BATCH = 500
KILLS = 4
SHARDS = ("0/2", "1/2")


def _env(cell) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIVORA_")},
        "LIVORA_DATA_DIR": cell.settings.data_dir,
        "LIVORA_STREAM_LOG_PATH": str(cell.stream_path),
        "LIVORA_LOG_LEVEL": "warning",
    }


def _worker(cell, shard: str) -> subprocess.Popen[bytes]:
    env = {
        **_env(cell),
        "LIVORA_LAKE_FLUSH_SECONDS": "0.5",
        "LIVORA_RECLAIM_IDLE_SECONDS": "1",
        "LIVORA_WORKER_SHARD": shard,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "livora", "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _ingest(cell, port: int) -> subprocess.Popen[bytes]:
    """Two ingest processes on one port, over the same stream and ledger as the test's cell."""
    env = {
        **_env(cell),
        "LIVORA_CONTROL_PLANE_URL": cell.control_plane.url,
        "LIVORA_CELL_SECRET": SECRET,
        "LIVORA_CELL_PORT": str(port),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "livora", "cell", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def _sessions_per_user(cell) -> dict[str, int]:
    """Distinct session ids per user in the lake. Every user's events here fall within minutes, so
    one user handled by one worker, in stream order, has exactly one session, whatever the kills."""
    store = open_lake_store(cell.settings)
    try:
        tables = await read_files(store, [info.key for info in await store.list("tenants/")], ["user_id", "session_id"])
    finally:
        await store.close()
    table = pa.concat_tables(list(tables.values()))
    sessions: dict[str, set[str]] = {}
    for user, session in zip(table.column("user_id").to_pylist(), table.column("session_id").to_pylist(), strict=True):
        sessions.setdefault(user, set()).add(session)
    return {user: len(ids) for user, ids in sessions.items()}


async def _lake_rows(cell) -> tuple[int, int, int]:
    """(rows, distinct message ids) in the lake, and rows once every partition is compacted."""
    store = open_lake_store(cell.settings)
    try:
        keys = [info.key for info in await store.list("tenants/")]
        tables = await read_files(store, keys, ["message_id"])
        ids = pc.unique(pa.concat_arrays([t.column("message_id").combine_chunks() for t in tables.values()]))
        before = sum(t.num_rows for t in tables.values())
        partitions = {p for key in keys if (p := Partition.from_key(key)) is not None}
        compactor = Compactor(store)
        for partition in partitions:
            await compactor.compact(partition)
        after = await read_files(store, [info.key for info in await store.list("tenants/")], ["message_id"])
        return before, len(ids), sum(t.num_rows for t in after.values())
    finally:
        await store.close()


@pytest.fixture
def ingest_url(cell) -> Iterator[str]:
    """`livora cell --workers 2` on its own port, ready (it has pulled its first config)."""
    port = free_port()
    ingest = _ingest(cell, port)
    url = f"http://127.0.0.1:{port}"
    try:
        # Two processes importing everything on a loaded machine: give them time.
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert ingest.poll() is None, ingest.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "livora cell never became ready"
            time.sleep(0.2)
        yield url
    finally:
        ingest.send_signal(signal.SIGTERM)
        try:
            ingest.wait(timeout=30)
        except subprocess.TimeoutExpired:
            ingest.kill()
            ingest.wait()


# The control plane's database plays no part here: one backend is enough.
@pytest.mark.parametrize("backend", ["sqlite"])
def test_killed_workers_lose_and_duplicate_nothing(cell, world, client, ingest_url):
    # Enterprise limits: 100k events in a few seconds stay under the tenant's token bucket.
    ops = world.platform["ops_admin"].headers
    assert client.patch(f"/api/v1/tenants/{world.a.id}", json={"plan": "enterprise"}, headers=ops).status_code == 200
    deadline = time.monotonic() + 10
    with httpx.Client(base_url=ingest_url, timeout=30) as http:
        probe = {"batch": [{"type": "track", "event": "Probe", "userId": "p"} for _ in range(BATCH)]}
        while http.post("/v1/batch", json=probe, headers=basic(world.a.write_key)).status_code != 202:
            assert time.monotonic() < deadline, "the cell never saw the enterprise plan"
            time.sleep(0.2)

    sent = threading.Event()
    failures: list[str] = []

    def send() -> None:
        with httpx.Client(base_url=ingest_url, timeout=30) as http:
            for start in range(0, EVENTS, BATCH):
                batch = [
                    {"type": "track", "event": "Tick", "userId": f"u{i % 997}", "messageId": f"m-{i}"}
                    for i in range(start, start + BATCH)
                ]
                response = http.post("/v1/batch", json={"batch": batch}, headers=basic(world.a.write_key))
                while response.status_code == 429:  # over the plan's rate: back off as told, as an SDK does
                    time.sleep(min(float(response.headers.get("Retry-After", "1")), 1.0))
                    response = http.post("/v1/batch", json={"batch": batch}, headers=basic(world.a.write_key))
                if response.status_code != 202:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                    return
        sent.set()

    sender = threading.Thread(target=send)
    sender.start()
    workers = [_worker(cell, shard) for shard in SHARDS]
    kills = 0
    try:
        while kills < KILLS:
            time.sleep(1.5)
            # The two shards' workers die in turn, each replaced by a new process for its shard.
            victim = kills % len(SHARDS)
            assert workers[victim].poll() is None, workers[victim].communicate()[1].decode()[-2000:]
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait(timeout=10)
            kills += 1
            workers[victim] = _worker(cell, SHARDS[victim])
        sender.join(timeout=300)
        assert not failures, failures
        assert sent.is_set()
        # The last workers drain the stream; the books balance once every event is accounted for.
        with httpx.Client(base_url=cell.url, headers={"Authorization": f"Bearer {SECRET}"}) as http:
            deadline = time.monotonic() + 180
            while True:
                books = http.get("/internal/v1/reconciliation", params={"tenant_id": world.a.id}).json()
                if books["balanced"]:
                    break
                for worker in workers:
                    assert worker.poll() is None, worker.communicate()[1].decode()[-2000:]
                assert time.monotonic() < deadline, books
                time.sleep(0.5)
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            process.wait(timeout=30)
    accepted = sum(h["accepted"] for h in books["hours"])
    probes = BATCH  # the one probe batch that was accepted
    assert accepted == EVENTS + probes
    rows, distinct, compacted = asyncio.run(_lake_rows(cell))
    # Every one of the 100,000 (plus the probe batches) is in the lake exactly once once compacted;
    # before compaction a batch written just before a kill may sit in two files, which readers dedupe.
    assert distinct == EVENTS + probes
    assert compacted == distinct
    assert rows >= distinct
    assert sum(h["dead_lettered"] for h in books["hours"]) == 0
    assert sum(h["duplicates"] for h in books["hours"]) == 0
    assert sum(h["billed"] for h in books["hours"]) == EVENTS + probes
    sessions = asyncio.run(_sessions_per_user(cell))
    assert len(sessions) == 997 + 1 and set(sessions.values()) == {1}, {u: n for u, n in sessions.items() if n > 1}
    print(f"kills={kills} rows_before_compaction={rows} distinct={distinct}")
