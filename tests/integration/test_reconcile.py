"""Reconciliation and dead letters over a live cell: accepted = in the lake + dead-lettered + duplicates."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys

import httpx

from data_plane.usage.ledger import UsageLedger
from tests.support.cell import SECRET, basic, drain, lake_rows

OPS = {"Authorization": f"Bearer {SECRET}"}


def _send(cell, world) -> dict[str, int]:
    """Tenant A: 300 events, 40 of them sent twice (a retrying SDK), 3 poison events. Tenant B: 50."""
    with httpx.Client(base_url=cell.url) as http:
        a = [{"type": "track", "event": "Tick", "userId": f"u{i % 17}", "messageId": f"a-{i}"} for i in range(300)]
        for start in range(0, 300, 100):
            assert (
                http.post(
                    "/v1/batch", json={"batch": a[start : start + 100]}, headers=basic(world.a.write_key)
                ).status_code
                == 202
            )
        resent = {"batch": a[:40]}
        assert http.post("/v1/batch", json=resent, headers=basic(world.a.write_key)).status_code == 202
        # Accepted at the edge, refused by the profile store (NUL in an id): dead-lettered, not lost.
        poison = [{"type": "identify", "userId": f"bad\u0000{i}", "messageId": f"poison-{i}"} for i in range(3)]
        assert http.post("/v1/batch", json={"batch": poison}, headers=basic(world.a.write_key)).status_code == 202
        b = [{"type": "page", "anonymousId": f"x{i % 5}", "messageId": f"b-{i}"} for i in range(50)]
        assert http.post("/v1/batch", json={"batch": b}, headers=basic(world.b.write_key)).status_code == 202
    return {"a": 343, "b": 50}


def _totals(hours: list[dict], tenant_id: str) -> dict[str, int]:
    mine = [h for h in hours if h["tenant_id"] == tenant_id]
    return {k: sum(h[k] for h in mine) for k in ("accepted", "in_lake", "dead_lettered", "duplicates", "difference")}


def test_every_accepted_event_is_accounted_for_per_tenant_and_hour(cell, world):
    _send(cell, world)
    with httpx.Client(base_url=cell.url, headers=OPS) as http:
        before = http.get("/internal/v1/reconciliation").json()
        # Nothing processed yet: all in flight, and the check says so.
        assert before["balanced"] is False
        assert _totals(before["hours"], world.a.id)["difference"] == 343

        counts = asyncio.run(drain(cell))
        assert counts == {"written": 350, "duplicates": 40, "dead": 3}

        body = http.get("/internal/v1/reconciliation").json()
        assert body["balanced"] is True
        assert _totals(body["hours"], world.a.id) == {
            "accepted": 343,
            "in_lake": 300,
            "dead_lettered": 3,
            "duplicates": 40,
            "difference": 0,
        }
        assert _totals(body["hours"], world.b.id) == {
            "accepted": 50,
            "in_lake": 50,
            "dead_lettered": 0,
            "duplicates": 0,
            "difference": 0,
        }
        only_b = http.get("/internal/v1/reconciliation", params={"tenant_id": world.b.id}).json()
        assert {h["tenant_id"] for h in only_b["hours"]} == {world.b.id}
        later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).isoformat()
        assert http.get("/internal/v1/reconciliation", params={"since": later}).json() == {
            "balanced": True,
            "hours": [],
        }

        # One dead letter per stream entry: poison events of one request and partition share one.
        letters = http.get("/internal/v1/dead-letters", params={"tenant_id": world.a.id}).json()
        assert sorted(m for letter in letters for m in letter["message_ids"]) == ["poison-0", "poison-1", "poison-2"]
        assert {letter["message_id"] for letter in letters} <= {"poison-0", "poison-1", "poison-2"}
        assert all(letter["reason"].startswith("profile_refused") for letter in letters)
        assert http.get("/internal/v1/dead-letters", params={"tenant_id": world.b.id}).json() == []


def test_a_replayed_dead_letter_is_processed_again_and_still_reconciles(cell, world):
    with httpx.Client(base_url=cell.url) as http:
        good = {"type": "identify", "userId": "fine", "messageId": "fine-1"}
        poison = {"type": "identify", "userId": "bad\u0000", "messageId": "poison-x", "traits": {"n": 1}}
        assert (
            http.post("/v1/batch", json={"batch": [good, poison]}, headers=basic(world.a.write_key)).status_code == 202
        )
    asyncio.run(drain(cell))
    with httpx.Client(base_url=cell.url, headers=OPS) as http:
        [letter] = http.get("/internal/v1/dead-letters").json()
        replay = http.post("/internal/v1/dead-letters/replay", json={"ids": [letter["id"], "no-such-id"]})
        assert replay.status_code == 200
        assert replay.json() == {"replayed": 1, "unknown": ["no-such-id"]}
        assert http.get("/internal/v1/dead-letters").json() == []
        # Replayed but not processed yet: in flight again.
        assert _totals(http.get("/internal/v1/reconciliation").json()["hours"], world.a.id)["difference"] == 1
        # Still poison: it goes back to the dead letters, counted once, and the books balance.
        asyncio.run(drain(cell))
        body = http.get("/internal/v1/reconciliation").json()
        assert body["balanced"] is True
        assert _totals(body["hours"], world.a.id)["dead_lettered"] == 1
        assert [row["message_id"] for row in lake_rows(cell.settings.lake_path)] == ["fine-1"]
        assert len(http.get("/internal/v1/dead-letters").json()) == 1


def test_the_operations_api_needs_the_cell_credential(cell):
    with httpx.Client(base_url=cell.url) as http:
        for method, path in (("GET", "/internal/v1/reconciliation"), ("GET", "/internal/v1/dead-letters")):
            missing = http.request(method, path)
            assert missing.status_code == 401
            assert missing.json()["code"] == "invalid_cell_credential"
            wrong = http.request(method, path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        bad = http.post("/internal/v1/dead-letters/replay", json={"ids": []}, headers=OPS)
        assert bad.status_code == 400
        assert bad.headers["content-type"].startswith("application/problem+json")


def test_livora_reconcile_prints_the_books_and_fails_when_they_do_not_balance(cell, world):
    env = {"LIVORA_DATA_DIR": cell.settings.data_dir, "PATH": "/usr/bin:/bin"}
    _send(cell, world)
    unbalanced = subprocess.run(
        [sys.executable, "-m", "livora", "reconcile"], env=env, capture_output=True, text=True, timeout=60
    )
    assert unbalanced.returncode == 1, unbalanced.stderr
    assert "in flight" in unbalanced.stdout
    asyncio.run(drain(cell))
    done = subprocess.run(
        [sys.executable, "-m", "livora", "reconcile", "--tenant", world.a.id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(world.a.id in line and "343" in line and "300" in line and " 40 " in f" {line} " for line in lines)
    assert "balanced" in lines[-1]
    assert world.b.id not in done.stdout


def test_the_ledger_counts_an_entry_once_however_often_it_is_delivered(tmp_path):
    async def scenario() -> None:
        from data_plane.usage.ledger import Outcome

        ledger = UsageLedger(tmp_path / "usage.db")
        at = dt.datetime(2026, 3, 1, 10, 30, tzinfo=dt.UTC)
        await asyncio.gather(*(ledger.accepted("t1", at, 10, {f"k{i}"}) for i in range(20)))
        outcomes = [Outcome(f"0:{i}", "t1", at, "written") for i in range(150)]
        assert await ledger.outcomes(outcomes) == 150
        assert await ledger.outcomes(outcomes[:100]) == 0  # redelivered after a crash
        assert await ledger.outcomes([Outcome("0:x", "t1", at, "duplicate")] * 2) == 1
        [hour] = await ledger.hours("t1")
        assert (hour.accepted, hour.written, hour.duplicates, hour.users) == (200, 150, 1, 20)
        assert hour.hour == dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC)
        await ledger.close()

    asyncio.run(scenario())
