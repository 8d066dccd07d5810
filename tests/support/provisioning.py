"""Provisioning helpers: an embedded built-in cell's spaces, and waiting for a tenant or a run to settle."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from data_plane.lake.store import LocalObjectStore
from data_plane.profiles.sqlite import SqliteProfileStore
from data_plane.spaces import TenantSpaces


def embedded_spaces(root: Path) -> TenantSpaces:
    """The built-in cell's side of the space contract over real embedded stores under ``root``."""
    return TenantSpaces(
        SqliteProfileStore(root / "cell"),
        LocalObjectStore(root / "lake"),
        LocalObjectStore(root / "archives"),
        archive_root=(root / "archives").resolve().as_uri(),
    )


def wait_for_tenant(
    client: httpx.Client, tenant_id: str, headers: dict[str, str], *statuses: str, timeout: float = 20
) -> dict[str, Any]:
    """Poll the tenant until its status is one of ``statuses``; fail with its last state otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        tenant: dict[str, Any] = client.get(f"/api/v1/tenants/{tenant_id}", headers=headers).json()
        if tenant.get("status") in statuses:
            return tenant
        assert time.monotonic() < deadline, f"tenant never became {statuses}: {tenant}"
        time.sleep(0.05)


def wait_for_run(client: httpx.Client, run_id: str, headers: dict[str, str], timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = client.get(f"/api/v1/provisioning/runs/{run_id}", headers=headers).json()
        if run["status"] not in ("queued", "running"):
            return run
        assert time.monotonic() < deadline, f"run never finished: {run}"
        time.sleep(0.05)


def runs_of(client: httpx.Client, tenant_id: str, headers: dict[str, str], timeout: float = 20) -> list[dict[str, Any]]:
    """The tenant's runs, newest first, once none is queued or running.

    NOTE: a run's last step (e.g. `activate`) commits before the run itself is marked finished.
    """
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/api/v1/tenants/{tenant_id}/provisioning-runs", params={"limit": 200}, headers=headers)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        if all(run["status"] not in ("queued", "running") for run in items) or time.monotonic() > deadline:
            return items
        time.sleep(0.05)
