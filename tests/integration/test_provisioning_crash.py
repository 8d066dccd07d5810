"""A provisioning run in a real process, killed (SIGKILL) at several points, then resumed by another: nothing twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from control_plane.cells.models import Cell, TenantPlacement
from control_plane.db.models import Source, Tenant
from kernel.tenancy import dangerously_unscoped
from provisioning.models import ProvisioningRun, ProvisioningStep

ROOT = Path(__file__).resolve().parents[2]

# The child: one control-plane runtime executing runs with the built-in cell in-process. With a step
# name, that step does its work and then the process hangs (to be killed) before recording success.
CHILD = r"""
import asyncio, sys
from pathlib import Path
from control_plane.runtime import Runtime
from control_plane.settings import Settings
from control_plane.tenants.schemas import TenantCreate
from tests.support.provisioning import embedded_spaces

database_url, data_dir, cell_root, mode, hang_after = sys.argv[1:6]
settings = Settings(
    database_url=database_url, data_dir=data_dir, provisioning_lease_seconds=1.0, provisioning_backoff_seconds=0.05
)
runtime = Runtime.build(settings)
runtime.provisioner.attach_builtin_cell(embedded_spaces(Path(cell_root)))
runner = runtime.provisioner.runner
if hang_after != "-":
    original = runner.handlers[hang_after]

    async def hang(context):
        outputs = await original(context)
        print(f"REACHED {hang_after}", flush=True)
        await asyncio.sleep(3600)
        return outputs

    runner.handlers[hang_after] = hang


async def main():
    await runtime.provisioner.start()  # resumes whatever a killed process left unfinished
    async with runtime.services() as services:
        if mode == "start":
            tenant = await services.tenants.create(
                TenantCreate(name="Crash test", slug="crash-test", deployment_pattern="A", template="saas"), None
            )
            run = await services.provisioning.start(tenant.id, "provision", wait=False)
            run_id, tenant_id = run.id, tenant.id
            print(f"RUN {run_id} {tenant_id}", flush=True)
        else:
            page = await services.provisioning.list_runs()
            run_id, tenant_id = page.items[0].id, page.items[0].tenant_id
        status = await services.provisioning.wait(run_id, tenant_id, 60)
        print(f"DONE {status}", flush=True)
    await runtime.close()

asyncio.run(main())
"""


def _child(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_until(process: subprocess.Popen[str], prefix: str, timeout: float = 60) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith(prefix):
            return line.strip()
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError(
        f"the child never printed {prefix!r}; stderr:\n{process.stderr.read() if process.stderr else ''}"
    )


def _resources(runtime, aio, cell_root: Path, tenant_id: str) -> dict[str, object]:
    async def count() -> dict[str, object]:
        async with runtime.services() as services:
            db = services.db
            with dangerously_unscoped():
                tenant = await db.get(Tenant, tenant_id)
                sources = (await db.scalars(select(Source).where(Source.tenant_id == tenant_id))).all()
                cells = (await db.scalars(select(Cell).where(Cell.dedicated_tenant_id == tenant_id))).all()
                placements = await db.scalar(select(func.count()).select_from(TenantPlacement))
                runs = (await db.scalars(select(ProvisioningRun))).all()
                steps = (await db.scalars(select(ProvisioningStep).order_by(ProvisioningStep.position))).all()
            return {
                "status": tenant.status if tenant else None,
                "sources": [(s.name, s.revoked_at is None) for s in sources],
                "cells": [(c.pattern, c.status) for c in cells],
                "placements": placements,
                "runs": [(r.operation, r.status) for r in runs],
                "steps": [(s.name, s.status, s.attempts) for s in steps],
            }

    result: dict[str, object] = aio(count())
    result["space"] = sorted(
        str(p.relative_to(cell_root))
        for p in cell_root.rglob("*")
        if p.is_file() and tenant_id in p.parts and not p.name.endswith(("-wal", "-shm"))
    )
    return result


@pytest.mark.parametrize("killed_after", ["-", "place_cell", "create_space", "create_source", "store_starter_content"])
def test_a_run_killed_mid_step_resumes_and_creates_nothing_twice(database_url, tmp_path, runtime, aio, killed_after):
    cell_root = tmp_path / "cell"
    first = _child([database_url, str(tmp_path / "var"), str(cell_root), "start", killed_after])
    try:
        _, _, tenant_id = _read_until(first, "RUN ").split()
        if killed_after != "-":
            _read_until(first, f"REACHED {killed_after}")
            first.send_signal(signal.SIGKILL)  # a real crash: no cleanup, the lease is left behind
            first.wait(timeout=10)
            # The step's work is done but not recorded: the run is still `running` there.
            half = _resources(runtime, aio, cell_root, tenant_id)
            assert half["runs"] == [("provision", "running")]
            assert (killed_after, "running", 1) in half["steps"]  # type: ignore[operator]
            second = _child([database_url, str(tmp_path / "var"), str(cell_root), "resume", "-"])
            try:
                assert _read_until(second, "DONE") == "DONE succeeded"
            finally:
                second.wait(timeout=30)
        else:
            assert _read_until(first, "DONE") == "DONE succeeded"
    finally:
        if first.poll() is None:
            first.kill()
        first.wait(timeout=10)

    found = _resources(runtime, aio, cell_root, tenant_id)
    # The same resources as an uninterrupted run: one of each, nothing twice.
    assert found["status"] == "active"
    assert found["sources"] == [("Default", True)]
    assert found["cells"] == [("A", "active")]
    assert found["placements"] == 1
    assert found["runs"] == [("provision", "succeeded")]
    assert found["space"] == [
        f"cell/tenants/{tenant_id}/profiles.sqlite",
        f"lake/tenants/{tenant_id}/_space.json",
    ]
    steps = found["steps"]
    assert [name for name, _, _ in steps] == [  # type: ignore[attr-defined]
        "place_cell",
        "create_space",
        "create_source",
        "store_starter_content",
        "activate",
    ]
    for name, status, attempts in steps:  # type: ignore[attr-defined]
        assert status == "succeeded"
        # The step the process died in ran again (idempotently); every other ran once.
        assert attempts == (2 if name == killed_after else 1), (name, attempts)
