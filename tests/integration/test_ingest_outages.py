"""Outages: Redis (the stream) stopped means 503 and never 202; it recovers when Redis returns."""

from __future__ import annotations

import asyncio
import base64
import signal
import socket

import httpx
import msgspec
import pytest

from control_plane.app import create_app
from data_plane.app import create_cell_app
from data_plane.contract.keeper import ConfigKeeper, HttpConfigFetcher
from data_plane.settings import CellSettings
from data_plane.stream.redis_streams import RedisStream
from tests.support.api import problem
from tests.support.cell import SECRET
from tests.support.redis_server import redis_server_binary, start_redis
from tests.support.server import LiveServer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("backend", ["sqlite"], indirect=False)
def test_stream_down_answers_503_then_recovers(settings, world, tmp_path, backend):
    binary = redis_server_binary()
    port = free_port()
    redis = start_redis(binary, port, tmp_path)
    control_plane = LiveServer(create_app(msgspec.structs.replace(settings, cell_secret=SECRET))).start()
    cell_settings = CellSettings(data_dir=str(tmp_path / "cellvar"))
    keeper = ConfigKeeper(HttpConfigFetcher(control_plane.url, SECRET), cell_settings.config_cache_path, interval=0.2)
    stream = RedisStream(f"redis://127.0.0.1:{port}/0", partitions=4, socket_timeout=0.5, retries=0)
    cell = LiveServer(create_cell_app(cell_settings, keeper, stream)).start()
    key = {"Authorization": "Basic " + base64.b64encode(f"{world.a.write_key}:".encode()).decode()}
    batch = {"batch": [{"type": "track", "event": "E", "userId": f"u{i}"} for i in range(20)]}
    accepted: list[str] = []
    try:
        with httpx.Client(base_url=cell.url, timeout=10) as http:
            ok = http.post("/v1/batch", json=batch, headers=key)
            assert ok.status_code == 202
            accepted += ok.json()["message_ids"]
            redis.send_signal(signal.SIGKILL)
            redis.wait()
            for _ in range(5):
                down = http.post("/v1/batch", json=batch, headers=key)
                problem(down, 503, "stream_unavailable")
                assert int(down.headers["retry-after"]) >= 1
            redis = start_redis(binary, port, tmp_path)
            for _ in range(50):
                again = http.post("/v1/batch", json=batch, headers=key)
                if again.status_code == 202:
                    accepted += again.json()["message_ids"]
                    break
                assert again.status_code == 503
            else:
                raise AssertionError("ingestion did not recover after Redis came back")
    finally:
        cell.stop()
        control_plane.stop()
        redis.kill()
        redis.wait()

    async def on_stream() -> set[str]:
        from data_plane.events import decode_entry

        reader = RedisStream(f"redis://127.0.0.1:{port}/0", partitions=4)
        found: set[str] = set()
        redis2 = start_redis(binary, port, tmp_path)
        try:
            while entries := await reader.read("check", "c", count=1000):
                found |= {ev.message_id for e in entries for ev in decode_entry(e.payload)}
        finally:
            await reader.close()
            redis2.kill()
            redis2.wait()
        return found

    # Every 202 is on the stream (AOF with fsync always survived the kill); no 503 left anything behind.
    assert asyncio.run(on_stream()) == set(accepted)
