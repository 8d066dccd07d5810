"""100,000 events while `livora worker` processes are killed (SIGKILL) again and again: none lost, none twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from data_plane.lake.compactor import Compactor
from data_plane.lake.layout import Partition
from data_plane.lake.reader import read_files
from data_plane.lake.store import open_lake_store
from tests.support.cell import SECRET, basic

EVENTS = 100_000
BATCH = 500
KILLS = 4


def _worker(cell, stream_path) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIVORA_")},
        "LIVORA_DATA_DIR": cell.settings.data_dir,
        "LIVORA_STREAM_LOG_PATH": str(stream_path),
        "LIVORA_LAKE_FLUSH_SECONDS": "0.5",
        "LIVORA_RECLAIM_IDLE_SECONDS": "1",
        "LIVORA_LOG_LEVEL": "warning",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "livora", "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


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


# The control plane's database plays no part here: one backend is enough.
@pytest.mark.parametrize("backend", ["sqlite"])
def test_killed_workers_lose_and_duplicate_nothing(cell, world, client):
    # Enterprise limits: 100k events in a few seconds stay under the tenant's token bucket.
    ops = world.platform["ops_admin"].headers
    assert client.patch(f"/api/v1/tenants/{world.a.id}", json={"plan": "enterprise"}, headers=ops).status_code == 200
    deadline = time.monotonic() + 10
    with httpx.Client(base_url=cell.url, timeout=30) as http:
        probe = {"batch": [{"type": "track", "event": "Probe", "userId": "p"} for _ in range(BATCH)]}
        while http.post("/v1/batch", json=probe, headers=basic(world.a.write_key)).status_code != 202:
            assert time.monotonic() < deadline, "the cell never saw the enterprise plan"
            time.sleep(0.2)

    sent = threading.Event()
    failures: list[str] = []

    def send() -> None:
        with httpx.Client(base_url=cell.url, timeout=30) as http:
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
    worker = _worker(cell, cell.stream_path)
    kills = 0
    try:
        while kills < KILLS:
            time.sleep(1.5)
            assert worker.poll() is None, worker.communicate()[1].decode()[-2000:]
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            kills += 1
            worker = _worker(cell, cell.stream_path)
        sender.join(timeout=300)
        assert not failures, failures
        assert sent.is_set()
        # The last worker drains the stream; the books balance once every event is accounted for.
        with httpx.Client(base_url=cell.url, headers={"Authorization": f"Bearer {SECRET}"}) as http:
            deadline = time.monotonic() + 180
            while True:
                books = http.get("/internal/v1/reconciliation", params={"tenant_id": world.a.id}).json()
                if books["balanced"]:
                    break
                assert worker.poll() is None, worker.communicate()[1].decode()[-2000:]
                assert time.monotonic() < deadline, books
                time.sleep(0.5)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
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
    print(f"kills={kills} rows_before_compaction={rows} distinct={distinct}")
