"""The cells registry: credentials, health from heartbeats, least-loaded placement, and each cell's own config."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import pytest

from control_plane.app import create_app
from control_plane.runtime import Runtime
from data_plane.app import create_cell_app
from data_plane.contract.keeper import ConfigKeeper, HttpConfigFetcher
from data_plane.contract.schemas import CONFIG_PATH, decode_config
from data_plane.settings import CellSettings
from data_plane.stream.log import LogStream
from tests.support.api import problem
from tests.support.provisioning import embedded_spaces, wait_for_tenant
from tests.support.server import LiveServer

MASTER = "installation-cell-secret-for-tests"
URL = "/api/v1/tenants"


@dataclass
class RemoteCell:
    id: str
    credential: str
    root: Path
    server: LiveServer


@pytest.fixture
def platform(settings, tmp_path) -> Iterator[LiveServer]:
    settings = msgspec.structs.replace(settings, cell_secret=MASTER, cell_heartbeat_seconds=30)
    runtime = Runtime.build(settings)
    runtime.provisioner.attach_builtin_cell(embedded_spaces(tmp_path / "builtin-cell"))
    live = LiveServer(create_app(settings, runtime)).start()
    yield live
    live.stop()


def _start_cell(client: httpx.Client, ops: dict[str, str], control_plane: str, root: Path, name: str) -> RemoteCell:
    """Register a pooled cell, then run it: a real cell app that pulls its config with its own credential."""
    created = client.post(
        "/api/v1/cells", json={"name": name, "region": "eu-west-1", "endpoint": "http://unset"}, headers=ops
    )
    assert created.status_code == 201, created.text
    cell_id, credential = created.json()["cell"]["id"], created.json()["credential"]
    settings = CellSettings(data_dir=str(root), cell_secret=credential)
    keeper = ConfigKeeper(HttpConfigFetcher(control_plane, credential, timeout=2), root / "config.json", interval=0.2)
    server = LiveServer(create_cell_app(settings, keeper, LogStream(root / "stream.db"), spaces=embedded_spaces(root)))
    assert client.patch(f"/api/v1/cells/{cell_id}", json={"endpoint": server.url}, headers=ops).status_code == 200
    server.start()
    return RemoteCell(cell_id, credential, root, server)


def _wait_healthy(client: httpx.Client, ops: dict[str, str], cell_id: str) -> None:
    deadline = time.monotonic() + 10
    while client.get(f"/api/v1/cells/{cell_id}", headers=ops).json()["health"] != "healthy":
        assert time.monotonic() < deadline, "the cell never sent a heartbeat"
        time.sleep(0.05)


def test_pooled_tenants_go_to_the_least_loaded_healthy_cell_of_their_region(platform, world, tmp_path):
    ops = world.platform["ops_admin"].headers
    cells: list[RemoteCell] = []
    with httpx.Client(base_url=platform.url, timeout=30) as client:
        try:
            for name in ("eu-1", "eu-2"):
                cells.append(_start_cell(client, ops, platform.url, tmp_path / name, name))
            first, second = cells
            for cell in cells:
                _wait_healthy(client, ops, cell.id)

            placed: dict[str, str] = {}
            for i in range(4):
                tenant = client.post(URL, json={"name": f"EU {i}", "region": "eu-west-1"}, headers=ops).json()
                assert wait_for_tenant(client, tenant["id"], ops, "active", "failed")["status"] == "active"
                placed[tenant["id"]] = client.get(f"{URL}/{tenant['id']}/placement", headers=ops).json()["cell_id"]
            # Least loaded first: the two cells share the four tenants evenly.
            assert sorted(placed.values()) == sorted([first.id, first.id, second.id, second.id])
            listed = {c["id"]: c for c in client.get("/api/v1/cells", headers=ops).json()["items"]}
            assert listed[first.id]["tenants"] == listed[second.id]["tenants"] == 2
            assert listed["cell_builtin"]["builtin"] and listed["cell_builtin"]["region"] == "*"

            # Each tenant's space is in its own cell, made over the cell contract (HTTP, the cell's credential).
            for tenant_id, cell_id in placed.items():
                cell = first if cell_id == first.id else second
                assert (cell.root / "cell" / "tenants" / tenant_id / "profiles.sqlite").is_file()
                other = second if cell is first else first
                assert not (other.root / "cell" / "tenants" / tenant_id).exists()

            # A cell pulls only its own tenants; the built-in cell pulls the ones placed nowhere (the world's).
            pulled = client.get(CONFIG_PATH, headers={"Authorization": f"Bearer {first.credential}"})
            assert {t.id for t in decode_config(pulled.content).tenants} == {
                t for t, c in placed.items() if c == first.id
            }
            builtin = decode_config(client.get(CONFIG_PATH, headers={"Authorization": f"Bearer {MASTER}"}).content)
            assert {t.id for t in builtin.tenants} == {world.a.id, world.b.id}

            # A draining cell takes no new tenants.
            client.patch(f"/api/v1/cells/{second.id}", json={"status": "draining"}, headers=ops)
            late = client.post(URL, json={"name": "Late", "region": "eu-west-1"}, headers=ops).json()
            wait_for_tenant(client, late["id"], ops, "active")
            assert client.get(f"{URL}/{late['id']}/placement", headers=ops).json()["cell_id"] == first.id

            # No cell in a region: the built-in cell takes the tenant.
            far = client.post(URL, json={"name": "Far", "region": "ap-south-1"}, headers=ops).json()
            wait_for_tenant(client, far["id"], ops, "active")
            assert client.get(f"{URL}/{far['id']}/placement", headers=ops).json()["cell_id"] == "cell_builtin"
        finally:
            for cell in cells:
                cell.server.stop()


def test_a_stale_cell_gets_no_tenants_and_credentials_rotate(platform, world, tmp_path):
    ops = world.platform["ops_admin"].headers
    with httpx.Client(base_url=platform.url, timeout=30) as client:
        # Registered, but never heard from: not healthy, so the tenant goes to the built-in cell.
        registered = client.post(
            "/api/v1/cells",
            json={"name": "silent", "region": "eu-west-1", "endpoint": "http://127.0.0.1:9"},
            headers=ops,
        ).json()
        cell_id, credential = registered["cell"]["id"], registered["credential"]
        assert registered["cell"]["health"] == "unknown" and credential.startswith(
            registered["cell"]["credential_prefix"]
        )
        tenant = client.post(URL, json={"name": "Elsewhere", "region": "eu-west-1"}, headers=ops).json()
        wait_for_tenant(client, tenant["id"], ops, "active")
        assert client.get(f"{URL}/{tenant['id']}/placement", headers=ops).json()["cell_id"] == "cell_builtin"

        def pull(secret: str) -> httpx.Response:
            return client.get(CONFIG_PATH, headers={"Authorization": f"Bearer {secret}"})

        assert pull(credential).status_code == 200
        assert client.get(f"/api/v1/cells/{cell_id}", headers=ops).json()["health"] == "healthy"
        rotated = client.post(
            f"/api/v1/cells/{cell_id}/rotate-credential", json={"grace_period_seconds": 0}, headers=ops
        ).json()
        assert rotated["credential"] != credential
        problem(pull(credential), 401, "invalid_cell_credential")
        assert pull(rotated["credential"]).status_code == 200
        problem(
            client.post("/api/v1/cells/cell_builtin/rotate-credential", headers=ops), 409, "builtin_cell_credential"
        )
        problem(
            client.post(
                "/api/v1/cells", json={"name": "silent", "region": "eu-west-1", "endpoint": "http://x"}, headers=ops
            ),
            409,
            "cell_name_taken",
        )
        problem(client.get("/api/v1/cells/cel_missing", headers=ops), 404, "cell_not_found")
        # A retired cell's credential no longer opens anything.
        client.patch(f"/api/v1/cells/{cell_id}", json={"status": "retired"}, headers=ops)
        problem(pull(rotated["credential"]), 401, "invalid_cell_credential")
