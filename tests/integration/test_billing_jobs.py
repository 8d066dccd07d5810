"""The billing cycle runs by itself in the control plane, and from the `livora billing` command."""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from control_plane.settings import Settings
from tests.support.billing import CELL_SECRET, backdate_tenant, record, report, write_small_catalog
from tests.support.world import World

ROOT = Path(__file__).resolve().parents[2]
Aio = Callable[[Awaitable[Any]], Any]


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return msgspec.structs.replace(
        settings,
        cell_secret=CELL_SECRET,
        billing_job_interval_seconds=1,
        billing_grace_seconds=0,  # the previous period is due at once, whatever the day of the month
        billing_catalog_path=write_small_catalog(tmp_path),
    )


def _previous_period() -> tuple[dt.datetime, str]:
    start = dt.datetime.now(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    previous = (start - dt.timedelta(days=1)).replace(day=1)
    return previous, previous.strftime("%Y-%m")


def test_the_app_drafts_and_finalises_ended_periods_by_itself(client: httpx.Client, world: World, aio: Aio) -> None:
    previous, label = _previous_period()
    backdate_tenant(world, aio, world.a.id, previous - dt.timedelta(days=20))
    assert report(client, [record(world.a.id, "events", previous + dt.timedelta(days=3), value=12)]).status_code == 200
    finance = world.platform["finance"].headers
    deadline = time.monotonic() + 15
    while True:
        items = client.get(
            "/api/v1/billing/invoices", params={"period": label, "tenant_id": world.a.id}, headers=finance
        ).json()["items"]
        if items and items[0]["status"] == "finalised":
            break
        assert time.monotonic() < deadline, items
        time.sleep(0.2)
    assert items[0]["number"] == "LIV-000001"
    # Tenant B was created this period: nothing to bill for the previous one.
    assert (
        client.get(
            "/api/v1/billing/invoices", params={"period": label, "tenant_id": world.b.id}, headers=finance
        ).json()["items"]
        == []
    )


def test_the_cli_closes_periods_and_exports_csv(world: World, aio: Aio, settings: Settings, tmp_path: Path) -> None:
    backdate_tenant(world, aio, world.a.id, dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    env = {
        **os.environ,
        "LIVORA_DATABASE_URL": settings.database_url,
        "LIVORA_DATA_DIR": settings.data_dir,
        "LIVORA_BILLING_CATALOG_PATH": settings.billing_catalog_path,
        "LIVORA_BILLING_GRACE_SECONDS": "3600",
    }

    def livora(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "livora", "billing", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    drafted = livora("close-period", "--now", "2026-05-01T00:10:00+00:00")
    assert drafted.returncode == 0, drafted.stderr
    assert msgspec.json.decode(drafted.stdout) == {"drafts": 1, "finalised": [], "pushed": 0, "push_failures": 0}
    closed = livora("close-period", "--now", "2026-05-01T02:00:00+00:00")
    assert closed.returncode == 0, closed.stderr
    assert msgspec.json.decode(closed.stdout)["finalised"] == ["LIV-000001"]
    out = tmp_path / "invoices.csv"
    exported = livora("export", "invoices", "--period", "2026-04", "--status", "finalised", "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    # The base fee, and 6 seats (one member per tenant role) of which 3 are included, at 2.00 each.
    assert [(r["tenant_id"], r["number"], r["total"]) for r in rows] == [
        (world.a.id, "LIV-000001", str(3000 + 3 * 200))
    ]
    lines = livora("export", "lines", "--period", "2026-04")
    assert lines.returncode == 0 and "Growth plan" in lines.stdout
