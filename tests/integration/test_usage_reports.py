"""A cell's usage reaches billing over the cell contract: events billed once per message id, tracked users."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import httpx
import pytest

from data_plane.usage.ledger import Outcome, UsageLedger
from tests.support.cell import SECRET, basic, drain


def _usage(client, world, tenant) -> dict[str, int]:
    response = client.get(f"/api/v1/tenants/{tenant.id}/usage", headers=world.platform["ops_admin"].headers)
    assert response.status_code == 200, response.text
    return {item["meter"]: item["quantity"] for item in response.json()["items"]}


def _wait_for(client, world, wanted: dict) -> dict:
    deadline = time.monotonic() + 15
    while True:
        seen = {tenant: _usage(client, world, getattr(world, tenant)) for tenant in wanted}
        if all(all(seen[t].get(k) == v for k, v in meters.items()) for t, meters in wanted.items()):
            return seen
        assert time.monotonic() < deadline, seen
        time.sleep(0.2)


@pytest.mark.cell_settings(usage_push_seconds=0.2)
def test_the_cell_pushes_billed_events_and_tracked_users_to_billing(cell, world, client):
    with httpx.Client(base_url=cell.url) as http:
        for round_ in range(3):
            batch = [
                {"type": "track", "event": "Tick", "userId": f"u{i % 7}", "messageId": f"m-{round_}-{i}"}
                for i in range(30)
            ]
            assert http.post("/v1/batch", json={"batch": batch}, headers=basic(world.a.write_key)).status_code == 202
        anonymous = [{"type": "page", "anonymousId": f"visitor-{i}"} for i in range(4)]
        assert http.post("/v1/batch", json={"batch": anonymous}, headers=basic(world.b.write_key)).status_code == 202
    # Received is known at once; billed once the pipeline knows each event's outcome.
    _wait_for(client, world, {"a": {"events_received": 90}, "b": {"events_received": 4}})
    assert _usage(client, world, world.a).get("events", 0) == 0
    asyncio.run(drain(cell))
    a = _wait_for(client, world, {"a": {"events": 90}, "b": {"events": 4}})["a"]
    # Seven distinct users over three rounds: counted once each, not once per report.
    assert a["tracked_users"] == 7
    assert a["events_duplicate"] == 0
    assert _usage(client, world, world.b)["tracked_users"] == 4


@pytest.mark.cell_settings(usage_push_seconds=0.2)
def test_an_sdk_retrying_the_same_batch_is_billed_once(cell, world, client):
    # A RudderStack-style retry: the same 500 message ids sent 4 times (the answers were lost).
    batch = [{"type": "track", "event": "Order", "userId": f"u{i % 11}", "messageId": f"r-{i}"} for i in range(500)]
    with httpx.Client(base_url=cell.url) as http:
        for _ in range(4):
            assert http.post("/v1/batch", json={"batch": batch}, headers=basic(world.a.write_key)).status_code == 202
    asyncio.run(drain(cell))
    usage = _wait_for(client, world, {"a": {"events": 500, "events_received": 2000, "events_duplicate": 1500}})["a"]
    assert usage["tracked_users"] == 11
    with httpx.Client(base_url=cell.url, headers={"Authorization": f"Bearer {SECRET}"}) as http:
        books = http.get("/internal/v1/reconciliation", params={"tenant_id": world.a.id}).json()
    assert books["balanced"]
    totals = {k: sum(h[k] for h in books["hours"]) for k in ("accepted", "duplicates", "billed", "in_lake")}
    assert totals == {"accepted": 2000, "duplicates": 1500, "billed": 500, "in_lake": 500}


def test_billed_events_are_reported_once_as_outcomes_arrive(tmp_path):
    async def scenario() -> None:
        ledger = UsageLedger(tmp_path / "usage.db")
        at = dt.datetime(2026, 3, 1, 10, 30, tzinfo=dt.UTC)

        async def reported() -> dict[str, int]:
            records = await ledger.take_reports()
            await ledger.confirm([r.id for r in records])
            totals: dict[str, int] = {}
            for record in records:
                totals[record.metric] = totals.get(record.metric, 0) + record.value
            return {k: v for k, v in totals.items() if k != "tracked_users"}

        await ledger.accepted("t1", at, 10, [])
        assert await reported() == {"events_received": 10}
        await ledger.outcomes([Outcome(f"0:{i}#0", "t1", at, "written") for i in range(6)])
        await ledger.outcomes([Outcome("0:6#0", "t1", at, "duplicate"), Outcome("0:7#0", "t1", at, "dead_lettered")])
        assert await reported() == {"events": 7, "events_duplicate": 1}
        # Redelivered outcomes count nothing; nothing new is reported.
        await ledger.outcomes([Outcome(f"0:{i}#0", "t1", at, "written") for i in range(6)])
        assert await reported() == {}
        # The dead letter is replayed: billed dips until its new entry lands, then nothing is billed twice.
        await ledger.replayed("t1", at)
        assert await reported() == {}
        await ledger.outcomes([Outcome("5:1#0", "t1", at, "written")])
        assert await reported() == {}
        await ledger.outcomes([Outcome("0:8#0", "t1", at, "written"), Outcome("0:9#0", "t1", at, "written")])
        assert await reported() == {"events": 2}
        [hour] = await ledger.hours("t1")
        assert (hour.accepted, hour.billed, hour.duplicates) == (10, 9, 1)
        await ledger.close()

    asyncio.run(scenario())


def test_hours_billed_by_an_older_cell_are_not_billed_again(tmp_path):
    async def scenario() -> None:
        import sqlite3

        path = tmp_path / "usage.db"
        ledger = UsageLedger(path)
        at = dt.datetime(2026, 3, 1, 10, 30, tzinfo=dt.UTC)
        await ledger.accepted("t1", at, 5, [])
        await ledger.outcomes([Outcome(f"0:{i}", "t1", at, "written") for i in range(5)])
        await ledger.close()
        # As an older cell left it: accepted already reported as events, no billed watermark.
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE usage_hours SET reported = accepted")
            conn.execute("DELETE FROM usage_marks")
        ledger = UsageLedger(path)
        assert [r for r in await ledger.take_reports() if r.metric.startswith("events")] == []
        await ledger.close()

    asyncio.run(scenario())
