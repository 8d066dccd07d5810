"""Provisioning through the API with the local driver: runs, steps, spaces in the cell, failures, retries, rollback."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from control_plane.app import create_app
from control_plane.runtime import Runtime
from data_plane.contract.schemas import Space, SpaceExport, SpaceRemoval, SpaceSpec
from data_plane.spaces import TenantSpaces
from kernel.errors import Unavailable
from tests.support.api import problem
from tests.support.provisioning import embedded_spaces, runs_of, wait_for_run, wait_for_tenant
from tests.support.server import LiveServer

URL = "/api/v1/tenants"
PROVISION_STEPS = ["place_cell", "create_space", "create_source", "store_starter_content", "activate"]
DEPROVISION_STEPS = [
    "begin_deletion",
    "export_space",
    "revoke_sources",
    "remove_space",
    "release_cell",
    "finish_deletion",
]


@pytest.fixture
def ops(world):
    return world.platform["ops_admin"].headers


def _files(root: Path) -> dict[str, str]:
    """Every file under ``root`` by relative path, with the SHA-256 of its bytes."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("pattern", ["B", "A"])
@pytest.mark.parametrize("template", ["base", "ecommerce", "saas", "real_estate"])
def test_each_template_and_pattern_ends_active_with_its_resources(client, ops, tmp_path, template, pattern):
    created = client.post(
        URL,
        json={
            "name": f"{template} {pattern}",
            "template": template,
            "deployment_pattern": pattern,
            "region": "eu-west-1",
        },
        headers=ops,
    )
    assert created.status_code == 201, created.text
    tenant_id = created.json()["id"]
    assert created.json()["status"] == "provisioning"
    tenant = wait_for_tenant(client, tenant_id, ops, "active", "failed")
    assert tenant["status"] == "active", runs_of(client, tenant_id, ops)

    [run] = runs_of(client, tenant_id, ops)
    assert (run["operation"], run["status"], run["driver"]) == ("provision", "succeeded", "local")
    assert [s["name"] for s in run["steps"]] == PROVISION_STEPS
    assert all(s["status"] == "succeeded" and s["attempts"] == 1 for s in run["steps"])
    steps = {s["name"]: s["outputs"] for s in run["steps"]}

    # The space in the (built-in) cell: profiles file, lake prefix with its registration marker.
    cell_root = tmp_path / "builtin-cell"
    space = steps["create_space"]
    assert Path(space["profiles"]) == cell_root / "cell" / "tenants" / tenant_id / "profiles.sqlite"
    assert Path(space["profiles"]).is_file()
    marker = cell_root / "lake" / "tenants" / tenant_id / "_space.json"
    registered = msgspec.json.decode(marker.read_bytes())
    placement = client.get(f"{URL}/{tenant_id}/placement", headers=ops).json()
    expected_partitions = {"base": 1, "ecommerce": 4, "saas": 2, "real_estate": 1}[template]
    assert registered["stream_partitions"] == space["stream_partitions"] == expected_partitions

    # Pattern B shares the pooled built-in cell; Pattern A gets a dedicated cell of its own.
    cell = client.get(f"/api/v1/cells/{placement['cell_id']}", headers=ops).json()
    if pattern == "B":
        assert cell["builtin"] and cell["pattern"] == "B"
    else:
        assert (cell["pattern"], cell["dedicated_tenant_id"], cell["region"]) == ("A", tenant_id, "eu-west-1")

    # The default source, and the starter content kept with the tenant.
    sources = client.get(f"{URL}/{tenant_id}/sources", headers=ops).json()["items"]
    assert [(s["name"], s["kind"], s["status"]) for s in sources] == [("Default", "server", "active")]
    assert steps["create_source"]["source_id"] == sources[0]["id"]
    starter = placement["starter_content"]
    assert placement["template"] == template and placement["template_version"] >= 1
    assert starter["tracking_plan"] and starter["segments"] and starter["dashboards"]
    assert {"Page Viewed", "Signed Up"} <= {e["event"] for e in starter["tracking_plan"]}
    if template != "base":
        assert starter["crm_pipelines"] and starter["journeys"]


def test_deprovisioning_archives_then_removes_exactly_one_tenant(client, ops, server, tmp_path, aio):
    ids = []
    for name in ("Keep", "Drop"):
        tenant = client.post(URL, json={"name": name, "template": "saas"}, headers=ops).json()
        ids.append(wait_for_tenant(client, tenant["id"], ops, "active")["id"])
    keep, drop = ids
    cell_root = tmp_path / "builtin-cell"
    spaces = embedded_spaces(cell_root)

    async def write_data() -> None:
        # Data in both spaces as the pipeline leaves it: lake objects and profiles.
        for tenant_id in ids:
            for hour in ("00", "01"):
                key = f"tenants/{tenant_id}/events/date=2026-11-21/hour={hour}/part-{tenant_id[-6:]}.parquet"
                await spaces.lake.put(key, f"parquet bytes of {tenant_id} {hour}".encode() * 50)
        await spaces.close()

    aio(write_data())
    before_keep = {
        **_files(cell_root / "lake" / "tenants" / keep),
        **{f"profiles/{k}": v for k, v in _files(cell_root / "cell" / "tenants" / keep).items()},
    }
    drop_lake = _files(cell_root / "lake" / "tenants" / drop)
    assert len(before_keep) >= 3 and len(drop_lake) == 3

    problem(client.delete(f"{URL}/{drop}", headers=ops), 409, "illegal_transition")  # suspend first
    assert client.post(f"{URL}/{drop}/suspend", headers=ops).json()["status"] == "suspended"
    assert client.delete(f"{URL}/{drop}", headers=ops).json()["status"] == "deleted"

    run = runs_of(client, drop, ops)[0]
    assert run["operation"] == "deprovision" and run["status"] == "succeeded"
    assert [s["name"] for s in run["steps"]] == DEPROVISION_STEPS
    export = next(s for s in run["steps"] if s["name"] == "export_space")["outputs"]
    assert export["lake_objects"] == 3 and export["location"].startswith("file://")
    archive = Path(export["location"].removeprefix("file://"))
    archived = _files(archive / "lake")
    assert {k: v for k, v in drop_lake.items()} == archived  # every lake object, byte for byte
    assert (archive / "profiles.jsonl").is_file()
    placement = client.get(f"{URL}/{drop}/placement", headers=ops).json()
    assert placement["archive_location"] == export["location"] and placement["cell_id"] is None

    # Nothing of the dropped tenant is left in the cell; the other tenant is untouched, byte for byte.
    assert not (cell_root / "lake" / "tenants" / drop).exists()
    assert not (cell_root / "cell" / "tenants" / drop).exists()
    after_keep = {
        **_files(cell_root / "lake" / "tenants" / keep),
        **{f"profiles/{k}": v for k, v in _files(cell_root / "cell" / "tenants" / keep).items()},
    }
    assert after_keep == before_keep
    sources = client.get(f"{URL}/{drop}/sources", headers=ops).json()["items"]
    assert sources and all(s["status"] == "revoked" for s in sources)
    assert client.get(f"{URL}/{keep}", headers=ops).json()["status"] == "active"


def test_suspend_resume_and_upgrade_are_runs(client, ops):
    tenant = client.post(URL, json={"name": "Upgrader", "template": "base"}, headers=ops).json()
    tenant_id = wait_for_tenant(client, tenant["id"], ops, "active")["id"]
    assert client.post(f"{URL}/{tenant_id}/suspend", json={"reason": "audit"}, headers=ops).json()["status"] == (
        "suspended"
    )
    problem(client.post(f"{URL}/{tenant_id}/upgrade", headers=ops), 409, "tenant_not_active")
    assert client.post(f"{URL}/{tenant_id}/reactivate", headers=ops).json()["status"] == "active"
    upgraded = client.post(f"{URL}/{tenant_id}/upgrade", json={"template": "ecommerce"}, headers=ops)
    assert upgraded.status_code == 200, upgraded.text
    run = wait_for_run(client, upgraded.json()["id"], ops)
    assert run["status"] == "succeeded", run
    assert [s["name"] for s in run["steps"]] == ["create_space", "store_starter_content", "record_template"]
    placement = client.get(f"{URL}/{tenant_id}/placement", headers=ops).json()
    assert (placement["template"], placement["template_version"]) == ("ecommerce", 2)
    assert "Order Refunded" in {e["event"] for e in placement["starter_content"]["tracking_plan"]}
    assert client.get(f"{URL}/{tenant_id}", headers=ops).json()["template"] == "ecommerce"
    assert next(s for s in run["steps"] if s["name"] == "create_space")["outputs"]["stream_partitions"] == 4
    problem(client.post(f"{URL}/{tenant_id}/upgrade", headers=ops), 409, "template_current")
    operations = [r["operation"] for r in runs_of(client, tenant_id, ops)]
    assert operations == ["upgrade", "resume", "suspend", "provision"]


class FlakySpaces:
    """The real embedded cell, with a switch that makes creating a space fail as an unreachable cell does."""

    def __init__(self, real: TenantSpaces) -> None:
        self.real = real
        self.broken = False
        self.created: list[str] = []
        self.removed: list[str] = []

    async def create(self, spec: SpaceSpec) -> Space:
        space = await self.real.create(spec)
        self.created.append(spec.tenant_id)
        if self.broken:
            # The worst case: the cell did the work, then the answer was lost.
            raise Unavailable("the cell at http://cell.invalid is unreachable", code="cell_unavailable")
        return space

    async def export(self, tenant_id: str, label: str) -> SpaceExport:
        return await self.real.export(tenant_id, label)

    async def remove(self, tenant_id: str) -> SpaceRemoval:
        self.removed.append(tenant_id)
        return await self.real.remove(tenant_id)

    async def close(self) -> None:
        await self.real.close()


@pytest.fixture
def flaky(settings, tmp_path) -> Iterator[tuple[LiveServer, FlakySpaces]]:
    settings = msgspec.structs.replace(settings, provisioning_max_attempts=3, provisioning_backoff_seconds=0.05)
    runtime = Runtime.build(settings)
    spaces = FlakySpaces(embedded_spaces(tmp_path / "flaky-cell"))
    runtime.provisioner.attach_builtin_cell(spaces)
    live = LiveServer(create_app(settings, runtime)).start()
    yield live, spaces
    live.stop()


def _client(live: LiveServer) -> Any:
    import httpx

    return httpx.Client(base_url=live.url, timeout=30)


def test_a_failing_step_fails_the_run_visibly_and_can_be_retried(flaky, world, tmp_path):
    live, spaces = flaky
    ops = world.platform["ops_admin"].headers
    spaces.broken = True
    with _client(live) as client:
        tenant = client.post(URL, json={"name": "Flaky"}, headers=ops).json()
        failed = wait_for_tenant(client, tenant["id"], ops, "failed")
        [run] = runs_of(client, tenant["id"], ops)
        assert run["status"] == "failed"
        assert run["error"] == "create_space: the cell at http://cell.invalid is unreachable"
        assert failed["status_reason"] == run["error"]
        step = next(s for s in run["steps"] if s["name"] == "create_space")
        assert (step["status"], step["attempts"]) == ("failed", 3)
        assert [s["status"] for s in run["steps"]] == ["succeeded", "failed", "pending", "pending", "pending"]
        # Retried with backoff: the tries were spaced out (0.05 s, then 0.1 s).
        assert len(spaces.created) == 3

        viewer = world.platform["ops_viewer"].headers
        assert client.get(f"/api/v1/provisioning/runs/{run['id']}", headers=viewer).status_code == 200
        problem(client.post(f"/api/v1/provisioning/runs/{run['id']}/retry", headers=viewer), 403, "permission_denied")
        problem(
            client.get(f"/api/v1/provisioning/runs/{run['id']}", headers=world.a.members["owner"].headers),
            403,
            "permission_denied",
        )

        spaces.broken = False
        retried = client.post(f"/api/v1/provisioning/runs/{run['id']}/retry", headers=ops)
        assert retried.status_code == 200, retried.text
        assert wait_for_run(client, run["id"], ops)["status"] == "succeeded"
        assert wait_for_tenant(client, tenant["id"], ops, "active")["status_reason"] is None
        problem(client.post(f"/api/v1/provisioning/runs/{run['id']}/retry", headers=ops), 409, "run_not_failed")
        # One space, one default source, however many tries it took.
        assert len(client.get(f"{URL}/{tenant['id']}/sources", headers=ops).json()["items"]) == 1
        assert (tmp_path / "flaky-cell" / "cell" / "tenants" / tenant["id"] / "profiles.sqlite").is_file()


def test_a_failed_run_can_be_rolled_back(flaky, world, tmp_path):
    live, spaces = flaky
    ops = world.platform["ops_admin"].headers
    spaces.broken = True
    with _client(live) as client:
        tenant = client.post(URL, json={"name": "Rolled"}, headers=ops).json()
        wait_for_tenant(client, tenant["id"], ops, "failed")
        [run] = runs_of(client, tenant["id"], ops)
        # The cell did create the space before the answer was lost: the rollback removes it.
        assert (tmp_path / "flaky-cell" / "cell" / "tenants" / tenant["id"] / "profiles.sqlite").is_file()
        rollback = client.post(f"/api/v1/provisioning/runs/{run['id']}/rollback", headers=ops)
        assert rollback.status_code == 200, rollback.text
        done = wait_for_run(client, rollback.json()["id"], ops)
        assert done["status"] == "succeeded" and done["rollback_of"] == run["id"]
        assert [s["name"] for s in done["steps"]] == ["remove_space", "release_cell", "reset_tenant"]
        assert client.get(f"/api/v1/provisioning/runs/{run['id']}", headers=ops).json()["status"] == "rolled_back"
        assert client.get(f"{URL}/{tenant['id']}", headers=ops).json()["status"] == "pending"
        assert spaces.removed == [tenant["id"]]
        assert not (tmp_path / "flaky-cell" / "cell" / "tenants" / tenant["id"]).exists()
        assert not (tmp_path / "flaky-cell" / "lake" / "tenants" / tenant["id"]).exists()
        # Provisioned again from scratch, it ends active.
        spaces.broken = False
        assert client.post(f"{URL}/{tenant['id']}/provision", headers=ops).json()["status"] == "active"
        problem(client.post(f"/api/v1/provisioning/runs/{run['id']}/rollback", headers=ops), 409, "run_not_failed")


def test_runs_list_filters_and_one_run_at_a_time(client, ops, world):
    tenant = client.post(URL, json={"name": "Lister", "provision": False}, headers=ops).json()
    assert client.post(f"{URL}/{tenant['id']}/provision", headers=ops).json()["status"] == "active"
    viewer = world.platform["ops_viewer"].headers
    page = client.get("/api/v1/provisioning/runs", params={"tenant_id": tenant["id"]}, headers=viewer).json()
    assert [r["operation"] for r in page["items"]] == ["provision"]
    assert client.get("/api/v1/provisioning/runs", params={"status": "failed"}, headers=viewer).json()["items"] == []
    problem(client.get("/api/v1/provisioning/runs", headers=world.a.members["owner"].headers), 403, "permission_denied")
    problem(client.get("/api/v1/provisioning/runs/run_missing", headers=viewer), 404, "run_not_found")
    problem(client.get(f"{URL}/{tenant['id']}/trust-policy", headers=ops), 404, "not_pattern_a")


@pytest.mark.redis
def test_runs_execute_through_the_redis_jobs_driver(settings, tmp_path, world, redis_url, unique_prefix):
    """Production mode: the run's jobs go through Redis; the tenant ends active just the same."""
    settings = msgspec.structs.replace(settings, jobs_driver="redis", redis_url=redis_url, kv_prefix=unique_prefix)
    runtime = Runtime.build(settings)
    runtime.provisioner.attach_builtin_cell(embedded_spaces(tmp_path / "redis-cell"))
    live = LiveServer(create_app(settings, runtime)).start()
    ops = world.platform["ops_admin"].headers
    try:
        with _client(live) as client:
            tenant = client.post(URL, json={"name": "Through Redis", "template": "real_estate"}, headers=ops).json()
            assert wait_for_tenant(client, tenant["id"], ops, "active", "failed")["status"] == "active"
            [run] = runs_of(client, tenant["id"], ops)
            assert [s["status"] for s in run["steps"]] == ["succeeded"] * len(PROVISION_STEPS)
    finally:
        live.stop()
    import redis

    raw = redis.Redis.from_url(redis_url)
    try:
        job = raw.hgetall(f"{unique_prefix}cp:jobs:job:run:{run['id']}")
        assert job[b"state"] == b"done" and job[b"name"] == b"provisioning.advance"
        for key in raw.scan_iter(match=f"{unique_prefix}*"):
            raw.delete(key)
    finally:
        raw.close()
