"""Ingestion benchmark: ack throughput and latency per stream driver, then end to end into the lake.

    .venv/bin/python bench/ingest.py [--seconds 10] [--concurrency 16] [--drivers log,redis]

The cell runs in its own process (uvicorn, one worker) with a fixed config of one tenant; this
process sends batches of 100 realistic events and measures. Then a pipeline worker drains the
stream into a local lake and the events/s it sustains is reported, with its peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import hashlib
import json
import multiprocessing
import os
import random
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WRITE_KEY = "lvw_benchmark_write_key_000000000000"
TENANT = "ten_bench"


def config():
    from data_plane.contract.schemas import CellConfig, Limits, SourceConfig, TenantConfig, config_digest

    tenants = [
        TenantConfig(
            id=TENANT,
            status="active",
            plan="enterprise",
            limits=Limits(max_batch_events=2500, events_per_second=10_000_000, burst_events=10_000_000),
            sources=[
                SourceConfig(
                    id="src_bench", kind="server", write_key_hashes=[hashlib.sha256(WRITE_KEY.encode()).hexdigest()]
                )
            ],
        )
    ]
    return CellConfig(version=config_digest(tenants), generated_at=dt.datetime.now(dt.UTC), tenants=tenants)


def serve(port: int, folder: str, driver: str, redis_url: str) -> None:
    import uvicorn

    from data_plane.app import create_cell_app
    from data_plane.contract.keeper import ConfigKeeper, InProcessConfigFetcher
    from data_plane.settings import CellSettings
    from data_plane.stream.drivers import create_stream
    from data_plane.stream.settings import StreamSettings
    from kernel.logging import configure_logging

    configure_logging("warning")
    fixed = config()

    async def build():
        return fixed

    settings = CellSettings(data_dir=folder)
    stream = create_stream(
        StreamSettings(
            stream_driver=driver,
            stream_log_path=f"{folder}/stream.db",
            redis_url=redis_url,
            stream_redis_prefix=f"bench:{os.getpid()}:",
        )
    )
    keeper = ConfigKeeper(InProcessConfigFetcher(build), settings.config_cache_path, interval=60)
    uvicorn.run(
        create_cell_app(settings, keeper, stream), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


def event(i: int) -> dict:
    user = f"user-{random.randrange(100_000)}"
    return {
        "type": "track",
        "event": random.choice(["Product Viewed", "Product Added", "Order Completed", "Page Viewed"]),
        "userId": user,
        "anonymousId": f"anon-{user}",
        "properties": {"product_id": f"p{i % 500}", "price": 19.99, "currency": "USD", "category": "shoes"},
        "context": {
            "ip": "8.8.8.8",
            "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
            "page": {
                "url": f"https://shop.example.com/p/{i % 500}?utm_source=news",
                "referrer": "https://www.google.com/",
            },
            "library": {"name": "analytics-python", "version": "2.4.0"},
        },
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "messageId": f"m-{i}",
    }


async def load(url: str, seconds: float, concurrency: int) -> tuple[int, list[float], int]:
    headers = {
        "Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode(),
        "Content-Type": "application/json",
    }
    bodies = [json.dumps({"batch": [event(b * 100 + i) for i in range(100)]}).encode() for b in range(200)]
    latencies: list[float] = []
    accepted = errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def sender(n: int) -> None:
            nonlocal accepted, errors
            k = n
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                # Every request carries new message ids, so the pipeline sees no duplicates.
                body = bodies[k % len(bodies)].replace(b'"messageId": "m-', b'"messageId": "m%d-' % k)
                response = await client.post("/v1/batch", content=body, headers=headers)
                latencies.append(time.perf_counter() - started)
                if response.status_code == 202:
                    accepted += 100
                else:
                    errors += 1
                k += concurrency

        await asyncio.gather(*(sender(n) for n in range(concurrency)))
    return accepted, latencies, errors


async def drain(folder: str, driver: str, redis_url: str, expected: int, prefix: str) -> tuple[int, float]:
    from data_plane.pipeline.worker import create_worker
    from kernel.logging import configure_logging

    configure_logging("warning")
    from data_plane.settings import CellSettings
    from data_plane.stream.drivers import create_stream
    from data_plane.stream.settings import StreamSettings

    os.environ.setdefault("LIVORA_PROFILES_SQLITE_ROOT", folder)
    stream = create_stream(
        StreamSettings(
            stream_driver=driver, stream_log_path=f"{folder}/stream.db", redis_url=redis_url, stream_redis_prefix=prefix
        )
    )
    worker = create_worker(stream, CellSettings(data_dir=folder))
    worker.batch_size = 2000
    started = time.perf_counter()
    idle = 0
    while worker.stats.written + worker.stats.duplicates + worker.stats.dead_lettered < expected and idle < 20:
        idle = 0 if await worker.step() else idle + 1
    await worker.flush()
    elapsed = time.perf_counter() - started
    written = worker.stats.written
    assert worker.stats.duplicates == 0, f"{worker.stats.duplicates} duplicates: message ids were reused"
    await worker.close()
    await stream.close()
    return written, elapsed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--drivers", default="log,redis")
    parser.add_argument("--redis-url", default=os.environ.get("LIVORA_REDIS_URL", "redis://127.0.0.1:6379/15"))
    args = parser.parse_args()
    print(f"batches of 100 events, {args.concurrency} senders, {args.seconds:.0f} s per driver, {os.cpu_count()} cores")
    for driver in args.drivers.split(","):
        with tempfile.TemporaryDirectory() as folder:
            port = free_port()
            server = multiprocessing.Process(target=serve, args=(port, folder, driver, args.redis_url), daemon=True)
            server.start()
            url = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    if httpx.get(f"{url}/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            accepted, latencies, errors = asyncio.run(load(url, args.seconds, args.concurrency))
            server.terminate()
            server.join()
            latencies.sort()
            p50 = statistics.median(latencies) * 1000
            p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
            print(
                f"[{driver}] acked {accepted / args.seconds:,.0f} events/s, "
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms per batch, {errors} errors"
            )
            prefix = f"bench:{server.pid}:"
            written, elapsed = asyncio.run(drain(folder, driver, args.redis_url, accepted, prefix))
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"[{driver}] pipeline: {written:,} events into the lake in {elapsed:.1f} s "
                f"= {written / elapsed:,.0f} events/s; peak RSS {peak:.0f} MiB"
            )


if __name__ == "__main__":
    main()
