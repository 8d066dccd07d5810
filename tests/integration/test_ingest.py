"""The cell's Segment-compatible ingestion API, as a remote cell of a live control plane."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import time

import httpx

from tests.support.api import problem


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def track(n: int = 0, **extra) -> dict:
    return {"type": "track", "event": "Product Viewed", "userId": f"user-{n}", "properties": {"n": n}, **extra}


def test_segment_python_library_lands_every_call_once(cell, world):
    from segment.analytics import Client

    failures: list[object] = []
    client = Client(
        world.a.write_key,
        host=cell.url,
        max_queue_size=100_000,
        upload_size=100,
        gzip=True,
        on_error=lambda error, batch: failures.append(error),
        sync_mode=False,
    )
    sent = 0
    for i in range(400):
        client.track(f"user-{i % 50}", "Order Completed", {"revenue": i, "products": [{"id": f"p{i}"}]})
        client.identify(f"user-{i % 50}", {"email": f"u{i % 50}@example.com"})
        client.page(f"user-{i % 50}", "Docs", "Install", {"url": f"https://shop.example.com/p/{i}"})
        client.screen(f"user-{i % 50}", "App", "Home")
        client.group(f"user-{i % 50}", f"org-{i % 7}", {"plan": "pro"})
        sent += 5
    client.alias("user-0", "user-0-new")
    sent += 1
    client.flush()
    client.join()
    assert failures == []
    events = cell.events()
    assert len(events) == sent
    assert len({e.message_id for e in events}) == sent
    assert {e.tenant_id for e in events} == {world.a.id} and {e.source_id for e in events} == {world.a.source_id}
    assert {e.type for e in events} == {"track", "identify", "page", "screen", "group", "alias"}
    order = next(e for e in events if e.type == "track")
    assert order.event == "Order Completed" and "revenue" in order.properties
    assert order.context["library"]["name"] == "analytics-python"


def test_single_call_endpoints_and_write_key_in_body(cell, world):
    with httpx.Client(base_url=cell.url) as http:
        calls = {
            "track": track(1),
            "identify": {"userId": "u1", "traits": {"plan": "pro"}},
            "page": {"anonymousId": "a1", "name": "Home", "properties": {"url": "https://shop.example.com/"}},
            "screen": {"userId": "u1", "name": "Settings"},
            "group": {"userId": "u1", "groupId": "org-1"},
            "alias": {"userId": "u1", "previousId": "a1"},
        }
        for kind, body in calls.items():
            response = http.post(f"/v1/{kind}", json={**body, "writeKey": world.b.write_key})
            assert response.status_code == 202, (kind, response.text)
            assert response.json()["accepted"] == 1
        assert http.post("/v1/events", json={"batch": [track(2)]}, headers=basic(world.b.write_key)).status_code == 202
    events = cell.events()
    assert sorted(e.type for e in events) == sorted([*calls, "track"])
    assert {e.tenant_id for e in events} == {world.b.id}


def test_accepted_events_are_stamped(cell, world):
    sent_at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)  # the client's clock is an hour slow
    stamp = sent_at - dt.timedelta(minutes=5)
    body = {
        "batch": [
            track(1, messageId="keep-me", timestamp=stamp.isoformat()),
            track(2),
        ],
        "sentAt": sent_at.isoformat(),
        "context": {"library": {"name": "custom"}},
    }
    with httpx.Client(base_url=cell.url) as http:
        response = http.post("/v1/batch", json=body, headers=basic(world.a.write_key))
    assert response.status_code == 202, response.text
    ids = response.json()["message_ids"]
    assert ids[0] == "keep-me" and len(ids[1]) == 36
    kept, generated = sorted(cell.events(), key=lambda e: e.message_id != "keep-me")
    assert kept.original_timestamp == stamp
    # Corrected by the skew: received - sent ≈ 1 h, so the event happened ~5 min before receipt.
    assert abs((kept.received_at - kept.timestamp) - dt.timedelta(minutes=5)) < dt.timedelta(seconds=5)
    assert generated.timestamp == generated.received_at and generated.original_timestamp is None
    assert kept.context["library"] == {"name": "custom"} and kept.context["ip"] == "127.0.0.1"


def test_credentials_and_tenant_state(cell, world):
    ops = world.platform["ops_admin"].headers
    with httpx.Client(base_url=cell.url) as http:
        problem(http.post("/v1/batch", json={"batch": [track()]}), 401, "missing_write_key")
        problem(http.post("/v1/batch", json={"batch": [track()]}, headers=basic("lvw_nope")), 401, "invalid_write_key")
        with httpx.Client(base_url=cell.control_plane.url) as cp:
            cp.post(f"/api/v1/tenants/{world.b.id}/suspend", headers=ops)
            cp.post(f"/api/v1/tenants/{world.a.id}/sources/{world.a.source_id}/revoke", headers=ops)
        deadline = time.monotonic() + 5
        while True:
            a = http.post("/v1/batch", json={"batch": [track()]}, headers=basic(world.a.write_key))
            b = http.post("/v1/batch", json={"batch": [track()]}, headers=basic(world.b.write_key))
            if (a.status_code, b.status_code) == (401, 403) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        problem(a, 401, "invalid_write_key")
        problem(b, 403, "tenant_suspended")


def test_whole_batch_is_refused_naming_every_bad_event(cell, world):
    bad = {
        "batch": [
            track(0),
            {"type": "track", "userId": "u"},  # no event name
            {"type": "identify"},  # no id at all
            {"type": "launch", "userId": "u"},
            track(4, timestamp="yesterday"),
            {"type": "alias", "userId": "u"},
            {"type": "group", "userId": "u"},
            track(7, userId="x" * 201),
        ]
    }
    with httpx.Client(base_url=cell.url) as http:
        body = problem(http.post("/v1/batch", json=bad, headers=basic(world.a.write_key)), 400, "events_rejected")
    assert [e["index"] for e in body["errors"]] == [1, 2, 3, 4, 5, 6, 7]
    assert all(e["code"] == "invalid_event" and e["detail"] for e in body["errors"])
    assert cell.events() == []


def test_size_and_count_limits(cell, world):
    key = basic(world.a.write_key)
    with httpx.Client(base_url=cell.url) as http:
        big = track(1, properties={"blob": "x" * 33_000})
        body = problem(http.post("/v1/batch", json={"batch": [track(0), big]}, headers=key), 413, "events_rejected")
        assert body["errors"] == [
            {"index": 1, "message_id": None, "code": "event_too_large", "detail": body["errors"][0]["detail"]}
        ]
        huge = {"batch": [track(i, properties={"pad": "y" * 6000}) for i in range(90)]}
        problem(http.post("/v1/batch", json=huge, headers=key), 413, "request_too_large")
        many = {"batch": [track(i) for i in range(501)]}  # tenant A is on growth: 500 per batch
        problem(http.post("/v1/batch", json=many, headers=key), 413, "too_many_events")
        problem(http.post("/v1/batch", content=b"{not json", headers=key), 400, "invalid_json")
        problem(http.post("/v1/batch", json={"batch": []}, headers=key), 400, "empty_batch")
        zipped = gzip.compress(json.dumps({"batch": [track(i) for i in range(100)]}).encode())
        ok = http.post(
            "/v1/batch", content=zipped, headers={**key, "Content-Encoding": "gzip", "Content-Type": "application/json"}
        )
        assert ok.status_code == 202 and ok.json()["accepted"] == 100
        bomb = gzip.compress(b" " * 5_000_000)
        problem(
            http.post("/v1/batch", content=bomb, headers={**key, "Content-Encoding": "gzip"}), 413, "request_too_large"
        )
        problem(
            http.post("/v1/batch", content=b"not gzip", headers={**key, "Content-Encoding": "gzip"}),
            400,
            "invalid_encoding",
        )
    assert len(cell.events()) == 100


def test_cors_for_browser_sources(cell, world):
    origin = "https://shop.example.com"
    with httpx.Client(base_url=cell.url) as http:
        preflight = http.options("/v1/batch", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code in (200, 204) and preflight.headers["access-control-allow-origin"] in ("*", origin)
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        ok = http.post("/v1/track", json=track(1), headers={**basic(world.a.write_key), "Origin": origin})
        assert ok.status_code == 202 and ok.headers["access-control-allow-origin"] in ("*", origin)
        problem(
            http.post(
                "/v1/track", json=track(1), headers={**basic(world.a.write_key), "Origin": "https://evil.example"}
            ),
            403,
            "origin_not_allowed",
        )
        # A server source's key is refused from a browser page whatever the origin.
        with httpx.Client(base_url=cell.control_plane.url) as cp:
            created = cp.post(
                f"/api/v1/tenants/{world.a.id}/sources",
                json={"name": "backend", "kind": "server"},
                headers=world.platform["ops_admin"].headers,
            ).json()
        time.sleep(0.6)
        problem(
            http.post("/v1/track", json=track(1), headers={**basic(created["write_key"]), "Origin": origin}),
            403,
            "origin_not_allowed",
        )
        assert http.post("/v1/track", json=track(1), headers=basic(created["write_key"])).status_code == 202


def test_rate_limit_answers_429_with_retry_after(cell, world):
    ops = world.platform["ops_admin"].headers
    with httpx.Client(base_url=cell.control_plane.url) as cp:
        cp.patch(f"/api/v1/tenants/{world.b.id}", json={"plan": "free"}, headers=ops)
    time.sleep(0.6)  # the cell pulls every 0.2 s
    with httpx.Client(base_url=cell.url) as http:
        statuses = [
            http.post("/v1/batch", json={"batch": [track(i) for i in range(100)]}, headers=basic(world.b.write_key))
            # More than the burst and what refills meanwhile (200/s) on a slow machine.
            for _ in range(20)
        ]
    codes = [r.status_code for r in statuses]
    assert codes[:10] == [202] * 10 and 429 in codes[10:]  # free: a burst of 1,000 events
    limited = next(r for r in statuses if r.status_code == 429)
    problem(limited, 429, "rate_limited")
    assert int(limited.headers["retry-after"]) >= 1


def test_keeps_ingesting_while_the_control_plane_is_down(cell, world):
    cell.control_plane.stop()
    time.sleep(0.5)
    with httpx.Client(base_url=cell.url) as http:
        assert http.get("/ready").status_code == 200
        response = http.post(
            "/v1/batch", json={"batch": [track(i) for i in range(10)]}, headers=basic(world.a.write_key)
        )
        assert response.status_code == 202
    assert len(cell.events()) == 10
