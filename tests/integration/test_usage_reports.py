"""A cell's usage reaches billing over the cell contract: events and distinct tracked users."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.cell import basic


def _usage(client, world, tenant) -> dict[str, int]:
    response = client.get(f"/api/v1/tenants/{tenant.id}/usage", headers=world.platform["ops_admin"].headers)
    assert response.status_code == 200, response.text
    return {item["meter"]: item["quantity"] for item in response.json()["items"]}


@pytest.mark.cell_settings(usage_push_seconds=0.2)
def test_the_cell_pushes_accepted_events_and_tracked_users_to_billing(cell, world, client):
    with httpx.Client(base_url=cell.url) as http:
        for round_ in range(3):
            batch = [
                {"type": "track", "event": "Tick", "userId": f"u{i % 7}", "messageId": f"m-{round_}-{i}"}
                for i in range(30)
            ]
            assert http.post("/v1/batch", json={"batch": batch}, headers=basic(world.a.write_key)).status_code == 202
        anonymous = [{"type": "page", "anonymousId": f"visitor-{i}"} for i in range(4)]
        assert http.post("/v1/batch", json={"batch": anonymous}, headers=basic(world.b.write_key)).status_code == 202
    deadline = time.monotonic() + 15
    while True:
        a, b = _usage(client, world, world.a), _usage(client, world, world.b)
        if a.get("events") == 90 and b.get("events") == 4:
            break
        assert time.monotonic() < deadline, (a, b)
        time.sleep(0.2)
    # Seven distinct users over three rounds: counted once each, not once per report.
    assert a["tracked_users"] == 7
    assert b["tracked_users"] == 4
