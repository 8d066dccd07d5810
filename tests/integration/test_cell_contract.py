"""The cell contract: config pulled with the cell's credential, cached on disk, kept when the control plane is down."""

from __future__ import annotations

import asyncio
import hashlib
import time

import httpx
import msgspec
import pytest

from control_plane.app import create_app
from data_plane.contract.keeper import ConfigKeeper, HttpConfigFetcher, InProcessConfigFetcher
from data_plane.contract.schemas import CONFIG_PATH, decode_config
from kernel.db import utcnow
from tests.support.api import problem
from tests.support.server import LiveServer

SECRET = "cell-secret-for-tests"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
def cell_server(settings, world):
    live = LiveServer(create_app(msgspec.structs.replace(settings, cell_secret=SECRET))).start()
    yield live
    live.stop()


def test_config_needs_the_cell_credential(cell_server, world):
    with httpx.Client(base_url=cell_server.url) as http:
        problem(http.get(CONFIG_PATH), 401, "invalid_cell_credential")
        problem(http.get(CONFIG_PATH, headers=world.platform["ops_admin"].headers), 401, "invalid_cell_credential")
        problem(http.get(CONFIG_PATH, headers={"Authorization": "Bearer wrong"}), 401, "invalid_cell_credential")
        response = http.get(CONFIG_PATH, headers={"Authorization": f"Bearer {SECRET}"})
        assert response.status_code == 200
        config = decode_config(response.content)
        by_id = {t.id: t for t in config.tenants}
        assert set(by_id) == {world.a.id, world.b.id}
        [source] = by_id[world.a.id].sources
        assert source.id == world.a.source_id and source.write_key_hashes == [digest(world.a.write_key)]
        assert (
            source.allowed_origins == ["https://shop.example.com"] and by_id[world.a.id].limits.max_batch_events == 500
        )
        unchanged = http.get(
            CONFIG_PATH, headers={"Authorization": f"Bearer {SECRET}", "If-None-Match": response.headers["etag"]}
        )
        assert unchanged.status_code == 304


def test_no_remote_cell_without_a_configured_secret(client, world):
    problem(client.get(CONFIG_PATH), 401, "invalid_cell_credential")
    problem(client.get(CONFIG_PATH, headers={"Authorization": "Bearer anything"}), 401, "invalid_cell_credential")


def test_changes_reach_the_cell_within_seconds_and_survive_an_outage(cell_server, world, tmp_path, aio):
    ops = world.platform["ops_admin"].headers
    cache = tmp_path / "cell" / "config.json"

    async def scenario() -> None:
        keeper = ConfigKeeper(HttpConfigFetcher(cell_server.url, SECRET), cache, interval=0.2)
        await keeper.start()
        try:
            found = keeper.directory.resolve(digest(world.a.write_key), utcnow())
            assert found is not None and found.tenant.id == world.a.id and found.tenant.status == "active"
            assert cache.exists()
            async with httpx.AsyncClient(base_url=cell_server.url) as http:
                # Revoke A's source and suspend B: both visible in the cell within 5 s.
                await http.post(f"/api/v1/tenants/{world.a.id}/sources/{world.a.source_id}/revoke", headers=ops)
                await http.post(f"/api/v1/tenants/{world.b.id}/suspend", headers=ops)
                started = time.monotonic()
                while time.monotonic() - started < 5:
                    b = keeper.directory.resolve(digest(world.b.write_key), utcnow())
                    if (
                        keeper.directory.resolve(digest(world.a.write_key), utcnow()) is None
                        and b
                        and b.tenant.status == "suspended"
                    ):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the revocation and suspension did not reach the cell within 5 s")
        finally:
            await keeper.stop()

    aio(scenario())
    cell_server.stop()

    async def restarted_while_control_plane_is_down() -> None:
        keeper = ConfigKeeper(HttpConfigFetcher(cell_server.url, SECRET, timeout=0.5), cache, interval=0.2)
        await keeper.start()
        try:
            assert keeper.last_error is not None  # the pull failed...
            b = keeper.directory.resolve(digest(world.b.write_key), utcnow())
            assert b is not None and b.tenant.status == "suspended"  # ...and the cached config serves
            assert keeper.directory.resolve(digest(world.a.write_key), utcnow()) is None
        finally:
            await keeper.stop()

    aio(restarted_while_control_plane_is_down())


def test_in_process_contract_and_rotation_grace(runtime, world, tmp_path, aio, client):
    ops = world.platform["ops_admin"].headers
    rotated = client.post(
        f"/api/v1/tenants/{world.a.id}/sources/{world.a.source_id}/rotate",
        json={"grace_period_seconds": 1},
        headers=ops,
    ).json()

    async def build():
        async with runtime.services() as services:
            return await services.cells.build()

    async def scenario() -> None:
        keeper = ConfigKeeper(InProcessConfigFetcher(build), tmp_path / "config.json")
        await keeper.refresh()
        for key in (world.a.write_key, rotated["write_key"]):
            assert keeper.directory.resolve(digest(key), utcnow()) is not None
        await asyncio.sleep(1.1)
        # The old key's grace ended: refused even before a newer config arrives.
        assert keeper.directory.resolve(digest(world.a.write_key), utcnow()) is None
        assert keeper.directory.resolve(digest(rotated["write_key"]), utcnow()) is not None
        assert await keeper.refresh() is True  # the control plane drops the expired hash too
        assert await keeper.refresh() is False  # and nothing changes after that

    aio(scenario())
