"""The pipeline end to end: SDK → cell → stream → worker → lake, each accepted event exactly once."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pyarrow.parquet as pq
import pytest

from data_plane.profiles.sqlite import SqliteProfileStore
from tests.support.cell import basic, drain, lake_rows


def test_every_event_lands_in_the_lake_once(cell, world):
    from segment.analytics import Client

    client = Client(world.a.write_key, host=cell.url, upload_size=100, max_queue_size=100_000, sync_mode=False)
    for i in range(600):
        client.track(f"user-{i % 40}", "Product Viewed", {"product_id": f"p{i % 9}"}, context={"ip": "8.8.8.8"})
        client.identify(f"user-{i % 40}", {"plan": "pro"}, anonymous_id=f"anon-{i % 40}")
        client.page(f"user-{i % 40}", "Shop", "Product", {"url": f"https://shop.example.com/p?utm_source=News&n={i}"})
    client.flush()
    client.join()
    # The same batch twice (an SDK retry after a lost answer): the copies are dropped, not stored.
    repeat = {
        "batch": [
            {"type": "track", "event": "Order Completed", "userId": "u-r", "messageId": f"r-{i}"} for i in range(50)
        ]
    }
    with httpx.Client(base_url=cell.url) as http:
        for _ in range(2):
            assert http.post("/v1/batch", json=repeat, headers=basic(world.b.write_key)).status_code == 202
    counts = asyncio.run(drain(cell))
    rows = lake_rows(cell.settings.lake_path)
    ids = [row["message_id"] for row in rows]
    assert len(ids) == len(set(ids)) == 1800 + 50
    assert counts == {"written": 1850, "duplicates": 50, "dead": 0}
    by_tenant = {t: sum(1 for r in rows if r["tenant_id"] == t) for t in (world.a.id, world.b.id)}
    assert by_tenant == {world.a.id: 1800, world.b.id: 50}
    # Files sit under each tenant's own prefix.
    for file in cell.settings.lake_path.rglob("*.parquet"):
        tenant = file.relative_to(cell.settings.lake_path).parts[1]
        assert tenant in (world.a.id, world.b.id)
        assert {r["tenant_id"] for r in pq.read_table(file, columns=["tenant_id"]).to_pylist()} == {tenant}
    track = next(r for r in rows if r["type"] == "track" and r["tenant_id"] == world.a.id)
    assert track["session_id"] and '"country_code": "US"' in track["context"].replace('":"', '": "')

    async def profile():
        store = SqliteProfileStore(cell.settings.cell_dir)
        try:
            return await store.find(world.a.id, user_id="user-0")
        finally:
            await store.close()

    person = asyncio.run(profile())
    # 600 calls of each kind over 40 users: 15 tracks, 15 identifies and 15 pages each.
    assert person is not None and person.event_count == 45 and person.traits == {"plan": "pro"}
    assert "anon-0" in person.anonymous_ids
    mine = [r for r in rows if r["tenant_id"] == world.a.id and f'"{person.profile_id}"' in r["context"]]
    assert len(mine) == 45


@pytest.mark.cell_settings(ingest_success_status=200)
def test_rudderstacks_sdk_works_unchanged_on_a_cell_that_answers_200(cell, world):
    from rudderstack.analytics.client import Client

    failures: list[object] = []
    client = Client(
        world.a.write_key,
        host=cell.url,
        upload_size=100,
        max_queue_size=100_000,
        on_error=lambda error, batch: failures.append(error),
        max_retries=1,
    )
    for i in range(400):
        client.track(f"user-{i % 25}", "Product Added", {"sku": f"s{i % 7}"})
        client.identify(f"user-{i % 25}", {"tier": "gold"})
        client.screen(f"user-{i % 25}", "Home")
    client.flush()
    client.join()
    assert failures == []
    asyncio.run(drain(cell))
    ids = [row["message_id"] for row in lake_rows(cell.settings.lake_path)]
    assert len(ids) == len(set(ids)) == 1200


def test_a_killed_worker_loses_and_duplicates_nothing(cell, world):
    batch = {"batch": [{"type": "track", "event": "Tick", "userId": f"u{i % 13}"} for i in range(100)]}
    with httpx.Client(base_url=cell.url) as http:
        for _ in range(20):
            assert http.post("/v1/batch", json=batch, headers=basic(world.a.write_key)).status_code == 202
    counts = asyncio.run(drain(cell, crash_after=700))
    ids = [row["message_id"] for row in lake_rows(cell.settings.lake_path)]
    assert len(ids) == len(set(ids)) == 2000
    assert counts["dead"] == 0


def test_sessions_continue_across_worker_restarts(cell, world):
    start = dt.datetime(2026, 6, 1, 9, 0, tzinfo=dt.UTC)

    def send(minutes: int, message_id: str) -> None:
        event = {
            "type": "track",
            "event": "Tick",
            "userId": "returning",
            "messageId": message_id,
            "timestamp": (start + dt.timedelta(minutes=minutes)).isoformat(),
        }
        with httpx.Client(base_url=cell.url) as http:
            assert http.post("/v1/batch", json={"batch": [event]}, headers=basic(world.a.write_key)).status_code == 202
        # Each event is handled by a new worker process's worth of state: a fresh sessionizer.
        asyncio.run(drain(cell))

    send(0, "first")
    send(10, "ten-minutes-later")
    send(55, "after-a-long-pause")
    sessions = {row["message_id"]: row["session_id"] for row in lake_rows(cell.settings.lake_path)}
    assert sessions["first"] == sessions["ten-minutes-later"]
    assert sessions["after-a-long-pause"] != sessions["first"]
