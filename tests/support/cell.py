"""A live control plane with a remote cell in front of it, for data-plane tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from control_plane.app import create_app
from data_plane.app import create_cell_app
from data_plane.contract.keeper import ConfigKeeper, HttpConfigFetcher
from data_plane.events import Event, decode_event
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
                    found += [decode_event(entry.payload) for entry in batch]
            finally:
                await reader.close()
            return found

        return asyncio.run(read_all())


@pytest.fixture
def cell(settings, world, tmp_path) -> Iterator[Cell]:
    """Tenant A and B's control plane on a live server, and a cell pulling from it over HTTP."""
    control_plane = LiveServer(create_app(msgspec.structs.replace(settings, cell_secret=SECRET))).start()
    cell_settings = CellSettings(data_dir=str(tmp_path / "cellvar"))
    stream_path = tmp_path / "stream.db"
    keeper = ConfigKeeper(
        HttpConfigFetcher(control_plane.url, SECRET, timeout=1), cell_settings.config_cache_path, interval=0.2
    )
    server = LiveServer(create_cell_app(cell_settings, keeper, LogStream(stream_path))).start()
    yield Cell(control_plane, server, stream_path, server.url, cell_settings)
    server.stop()
    control_plane.stop()
