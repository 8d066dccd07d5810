"""The cell's analytics API over HTTP: who may call it, whose data they see, problem details, CSV, and
answers that keep coming while the control plane is down."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import secrets
import time
from collections.abc import Iterator

import httpx
import msgspec
import pytest

from control_plane.app import create_app
from data_plane.analytics import schemas
from data_plane.app import create_cell_app
from data_plane.contract.keeper import ConfigKeeper, HttpConfigFetcher
from data_plane.lake import LocalObjectStore
from data_plane.settings import CellSettings
from data_plane.stream.log import LogStream
from tests.support import analytics_reference as reference
from tests.support.analytics import event, write_lake
from tests.support.api import problem
from tests.support.cell import SECRET, Cell
from tests.support.server import LiveServer

DAY = dt.date(2026, 6, 10)
T0 = dt.datetime(2026, 6, 10, 8, tzinfo=dt.UTC)
FUNNEL = {
    "from_date": DAY.isoformat(),
    "to_date": DAY.isoformat(),
    "steps": [{"event": "Product Viewed"}, {"event": "Product Added"}, {"event": "Order Completed"}],
}


def shop(tenant_id: str, users: int) -> list:
    events = []
    for i in range(users):
        moment = T0 + dt.timedelta(minutes=i)
        events.append(event(f"{tenant_id}-{i}-v", "Product Viewed", f"u{i}", moment, tenant_id=tenant_id))
        if i % 2 == 0:
            events.append(
                event(
                    f"{tenant_id}-{i}-a",
                    "Product Added",
                    f"u{i}",
                    moment + dt.timedelta(seconds=30),
                    tenant_id=tenant_id,
                )
            )
        if i % 4 == 0:
            events.append(
                event(
                    f"{tenant_id}-{i}-o",
                    "Order Completed",
                    f"u{i}",
                    moment + dt.timedelta(seconds=95),
                    tenant_id=tenant_id,
                    properties={"revenue": 20, "products": [{"product_id": "=cmd", "price": 20, "quantity": 1}]},
                )
            )
    return events


@pytest.fixture
def cell(settings, world, tmp_path) -> Iterator[Cell]:
    """A live control plane with its cell-token key set (as production needs with PostgreSQL), and a cell
    pulling its config over HTTP."""
    key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    control_plane = LiveServer(
        create_app(msgspec.structs.replace(settings, cell_secret=SECRET, cell_token_key=key))
    ).start()
    cell_settings = CellSettings(data_dir=str(tmp_path / "cellvar"), cell_secret=SECRET, warehouse_threads=1)
    keeper = ConfigKeeper(
        HttpConfigFetcher(control_plane.url, SECRET, timeout=1), cell_settings.config_cache_path, interval=0.2
    )
    server = LiveServer(create_cell_app(cell_settings, keeper, LogStream(tmp_path / "stream.db"))).start()
    yield Cell(control_plane, server, tmp_path / "stream.db", server.url, cell_settings)
    server.stop()
    control_plane.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_for(http: httpx.Client, headers: dict[str, str], status: int = 200) -> httpx.Response:
    """The cell learns of keys with its next config pull (every 0.2 s here)."""
    deadline = time.monotonic() + 10
    while True:
        response = http.post("/v1/analytics/funnels", json=FUNNEL, headers=headers)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_keys_and_tokens_see_their_own_tenant_only(cell, world, aio) -> None:
    a_events, b_events = shop(world.a.id, 8), shop(world.b.id, 3)
    aio(write_lake(LocalObjectStore(cell.settings.lake_path), [a_events + b_events]))
    with httpx.Client(base_url=cell.url, timeout=30) as http:
        a_key = bearer(world.a.keys["key_all"].token)
        response = wait_for(http, a_key)
        assert response.status_code == 200, response.text
        want = reference.funnel(a_events, msgspec.convert(FUNNEL, schemas.FunnelQuery))
        assert response.json() == msgspec.to_builtins(want)
        assert [step["count"] for step in response.json()["steps"]] == [8, 4, 2]
        # The same question with B's key answers about B only.
        b = http.post("/v1/analytics/funnels", json=FUNNEL, headers=bearer(world.b.keys["key_all"].token)).json()
        assert [step["count"] for step in b["steps"]] == [3, 2, 1]

        # Without the analytics scope a key is unknown to the cell; no credential, a bad one, a wrong scheme.
        problem(
            http.post("/v1/analytics/funnels", json=FUNNEL, headers=bearer(world.a.keys["key_read_tenant"].token)),
            401,
            "invalid_api_key",
        )
        problem(http.post("/v1/analytics/funnels", json=FUNNEL), 401, "missing_credential")
        problem(
            http.post("/v1/analytics/funnels", json=FUNNEL, headers=bearer("lvk_nope_nope")), 401, "invalid_api_key"
        )
        problem(http.post("/v1/analytics/funnels", json=FUNNEL, headers=bearer("lvt_e30.AAAA")), 401, "invalid_token")
        # A session token of the control plane is not a credential here.
        problem(
            http.post("/v1/analytics/funnels", json=FUNNEL, headers=world.a.members["owner"].headers),
            401,
            "invalid_api_key",
        )

        # People get a short-lived token from the control plane: analyst and up, not viewers or strangers.
        with httpx.Client(base_url=cell.control_plane.url) as control:
            issued = control.post(
                f"/api/v1/tenants/{world.a.id}/analytics/token", headers=world.a.members["analyst"].headers
            )
            assert issued.status_code == 201, issued.text
            token = issued.json()
            assert token["tenant_id"] == world.a.id and token["role"] == "analyst"
            problem(
                control.post(
                    f"/api/v1/tenants/{world.a.id}/analytics/token", headers=world.a.members["viewer"].headers
                ),
                403,
                "permission_denied",
            )
            problem(
                control.post(f"/api/v1/tenants/{world.a.id}/analytics/token", headers=world.b.members["owner"].headers),
                404,
                "tenant_not_found",
            )
            problem(
                control.post(f"/api/v1/tenants/{world.a.id}/analytics/token", headers=world.a.keys["key_all"].headers),
                403,
                "permission_denied",
            )
        by_token = wait_for(http, bearer(token["token"]))
        assert by_token.status_code == 200, by_token.text
        assert by_token.json() == response.json()
        tampered = token["token"][:-3] + ("AAA" if not token["token"].endswith("AAA") else "BBB")
        problem(http.post("/v1/analytics/funnels", json=FUNNEL, headers=bearer(tampered)), 401, "invalid_token")

        # Static stability: with the control plane gone, the cell still knows its keys and token keys.
        cell.control_plane.stop()
        again = http.post("/v1/analytics/funnels", json=FUNNEL, headers=bearer(token["token"]))
        assert again.status_code == 200 and again.json() == response.json()
        assert http.get("/v1/analytics/live?limit=3", headers=a_key).status_code == 200


def test_bad_input_is_a_problem_and_every_result_exports_as_csv(cell, world, aio) -> None:
    aio(write_lake(LocalObjectStore(cell.settings.lake_path), [shop(world.a.id, 4)]))
    key = bearer(world.a.keys["key_all"].token)
    window = {"from_date": DAY.isoformat(), "to_date": DAY.isoformat()}
    with httpx.Client(base_url=cell.url, timeout=30) as http:
        assert wait_for(http, key).status_code == 200

        def ask(path: str, body: dict) -> httpx.Response:
            return http.post(f"/v1/analytics/{path}", json=body, headers=key)

        one_step = {**FUNNEL, "steps": [{"event": "Product Viewed"}]}
        problem(ask("funnels", one_step), 400, "validation_failed")
        problem(ask("funnels", {**FUNNEL, "steps": [{"event": f"e{i}"} for i in range(21)]}), 400, "validation_failed")
        problem(ask("funnels", {**FUNNEL, "conversion_window_seconds": 30}), 400, "validation_failed")
        problem(ask("funnels", {**FUNNEL, "conversion_window_seconds": 366 * 86_400}), 400, "validation_failed")
        problem(ask("funnels", {**FUNNEL, "time_zone": "Mars/Olympus"}), 400, "unknown_time_zone")
        problem(ask("funnels", {**FUNNEL, "to_date": "2026-06-01"}), 400, "invalid_date_range")
        problem(
            ask("funnels", {**FUNNEL, "order": "any", "exclusions": [{"event": "x"}]}), 400, "exclusions_need_order"
        )
        problem(ask("funnels", {**FUNNEL, "exclusions": [{"event": "x", "after_step": 3}]}), 400, "invalid_exclusion")
        problem(
            ask("trends", {**window, "filters": [{"property": "plan", "op": "gt", "value": "a"}]}),
            400,
            "invalid_filter",
        )
        problem(
            ask("trends", {**window, "filters": [{"property": "plan", "op": "like", "value": "a"}]}),
            400,
            "validation_failed",
        )
        problem(ask("trends", {**window, "measure": "sum"}), 400, "property_required")
        problem(ask("retention", {**window, "periods": 53}), 400, "validation_failed")
        problem(ask("products", {**window, "cursor": "bogus!"}), 400, "invalid_cursor")
        problem(http.get("/v1/analytics/live?limit=0", headers=key), 400, "validation_failed")

        bodies = {
            "funnels": FUNNEL,
            "retention": {**window, "period": "day", "periods": 3},
            "trends": {**window, "interval": "hour"},
            "kpis": window,
            "products": window,
            "ltv": window,
        }
        for path, body in bodies.items():
            answer = http.post(f"/v1/analytics/{path}?format=csv", json=body, headers=key)
            assert answer.status_code == 200, (path, answer.text)
            assert answer.headers["content-type"].startswith("text/csv")
            rows = list(csv.reader(io.StringIO(answer.text)))
            assert len(rows) >= 2, (path, rows)
        products = list(csv.DictReader(io.StringIO(ask("products?format=csv", window).text)))
        # Text that a spreadsheet would run as a formula is quoted.
        assert products == [
            {
                "product_id": "'=cmd",
                "views": "0",
                "add_to_cart": "0",
                "purchases": "1",
                "units": "1.0",
                "revenue": "20.0",
                "view_to_purchase": "",
            }
        ]
        live = http.get("/v1/analytics/live?limit=2&format=csv", headers=key)
        assert live.status_code == 200 and live.text.startswith("message_id,event,")
