"""A live control plane with a remote cell in front of it, for data-plane tests."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import pyarrow.parquet as pq
import pytest

from control_plane.app import create_app
from data_plane.app import create_cell_app
from data_plane.contract.keeper import ConfigKeeper, HttpConfigFetcher
from data_plane.events import Event, decode_entry
from data_plane.pipeline.worker import GROUP, create_worker
from data_plane.settings import CellSettings
from data_plane.stream.log import LogStream
from tests.support.server import LiveServer

SECRET = "cell-secret-for-tests"


@dataclass
class Cell:
    control_plane: LiveServer
    server: LiveServer
    stream_path: Path
    url: str
    settings: CellSettings

    def events(self) -> list[Event]:
        """Everything on the stream, read by a fresh consumer group through a second handle."""

        async def read_all() -> list[Event]:
            reader = LogStream(self.stream_path)
            group = f"test-{time.monotonic_ns()}"
            found: list[Event] = []
            try:
                while batch := await reader.read(group, "t", count=5000):
                    found += [event for entry in batch for event in decode_entry(entry.payload)]
            finally:
                await reader.close()
            return found

        return asyncio.run(read_all())


@pytest.fixture
def cell(settings, world, tmp_path, request: pytest.FixtureRequest) -> Iterator[Cell]:
    """Tenant A and B's control plane on a live server, and a cell pulling from it over HTTP.

    ``@pytest.mark.cell_settings(field=value)`` sets the cell's settings.
    """
    marker = request.node.get_closest_marker("cell_settings")
    control_plane = LiveServer(create_app(msgspec.structs.replace(settings, cell_secret=SECRET))).start()
    values = dict(marker.kwargs) if marker else {}
    if "usage_push_seconds" in values:
        # Pushing usage needs somewhere to push it: this control plane.
        values.setdefault("control_plane_url", control_plane.url)
    cell_settings = CellSettings(data_dir=str(tmp_path / "cellvar"), cell_secret=SECRET, **values)
    # Where `livora run` and `livora cell` keep it, so the CLI finds the same stream (and ledger).
    stream_path = cell_settings.cell_dir / "stream.db"
    keeper = ConfigKeeper(
        HttpConfigFetcher(control_plane.url, SECRET, timeout=1), cell_settings.config_cache_path, interval=0.2
    )
    server = LiveServer(create_cell_app(cell_settings, keeper, LogStream(stream_path))).start()
    # Ready once the first config arrived: a test's first request must not race the first pull.
    deadline = time.monotonic() + 15
    while httpx.get(f"{server.url}/ready", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the cell never got its config from the control plane"
        time.sleep(0.05)
    yield Cell(control_plane, server, stream_path, server.url, cell_settings)
    server.stop()
    control_plane.stop()


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def lake_rows(lake: Path) -> list[dict]:
    files = sorted(lake.rglob("*.parquet"))
    rows: list[dict] = []
    for file in files:
        rows += pq.read_table(file, columns=["message_id", "tenant_id", "type", "session_id", "context"]).to_pylist()
    return rows


async def drain(cell, *, crash_after: int | None = None) -> dict:
    """Run workers until the stream is empty; with ``crash_after``, drop the first worker mid-way."""
    stream = LogStream(cell.stream_path)
    try:
        if crash_after is not None:
            doomed = create_worker(stream, cell.settings)
            doomed.reclaim_idle_ms = 200
            handled = 0
            while handled < crash_after:
                handled += await doomed.step()
            # Killed: its buffer is lost, its entries stay pending in the stream.
            await doomed.dedup.close()
        worker = create_worker(stream, cell.settings)
        worker.reclaim_idle_ms = 200
        worker.lake.max_age_s = 0.2
        for _ in range(500):
            handled = await worker.step()
            if not handled and not worker.lake.buffered and await stream.pending(GROUP) == 0:
                break
        await worker.flush()
        assert await stream.pending(GROUP) == 0
        stats = worker.stats
        await worker.close()
        return {"written": stats.written, "duplicates": stats.duplicates, "dead": stats.dead_lettered}
    finally:
        await stream.close()
