"""Ingestion benchmark: ack throughput and latency per stream driver, then end to end into the lake.

    .venv/bin/python bench/ingest.py [--seconds 10] [--concurrency 16] [--drivers log,redis] [--offered 20000]

The cell runs in its own process (uvicorn, one worker) with a fixed config of one tenant; this
process sends batches of 100 realistic events over plain HTTP/1.1 keep-alive connections (a
small asyncio client, so the sender costs little of the machine) and measures, per driver:

1. acks: as fast as ``--concurrency`` senders can go: events/s and p50/p99 per batch;
2. latency at a fixed offered load (``--offered`` events/s): p50/p99 per batch;
3. end to end: a pipeline worker process runs beside the cell while the senders go flat out;
   events/s from the first send until the usage ledger shows every accepted event written to
   the lake, and the worker's peak memory.
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


class Connection:
    """One keep-alive HTTP/1.1 connection: write a request, read the status and the body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def post(self, head: bytes, body: bytes) -> int:
        self.writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status = int((await self.reader.readline()).split(b" ", 2)[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        self.writer.close()


def request_head(host: str, port: int) -> bytes:
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    return (
        f"POST /v1/batch HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Basic {auth}\r\n"
        "Content-Type: application/json\r\n"
    ).encode()


BODIES = 200


def bodies() -> list[bytes]:
    return [json.dumps({"batch": [event(b * 100 + i) for i in range(100)]}).encode() for b in range(BODIES)]


def unique(body: bytes, k: int) -> bytes:
    # Every request carries new message ids, so the pipeline sees no duplicates.
    return body.replace(b'"messageId": "m-', b'"messageId": "m%d-' % k)


async def load(
    port: int, seconds: float, concurrency: int, offered: float | None = None
) -> tuple[int, list[float], int]:
    """Send for ``seconds``: flat out with ``concurrency`` connections, or ``offered`` events/s."""
    head = request_head("127.0.0.1", port)
    payloads = bodies()
    latencies: list[float] = []
    accepted = errors = 0
    started = time.perf_counter()
    deadline = started + seconds
    interval = 100 / offered * concurrency if offered else 0.0

    async def sender(n: int) -> None:
        nonlocal accepted, errors
        connection = await Connection.open("127.0.0.1", port)
        k, due = n, started + (interval * n / concurrency)
        try:
            while time.perf_counter() < deadline:
                if interval:
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    due += interval
                sent = time.perf_counter()
                status = await connection.post(head, unique(payloads[k % BODIES], k))
                latencies.append(time.perf_counter() - sent)
                if status == 202:
                    accepted += 100
                else:
                    errors += 1
                k += concurrency
        finally:
            await connection.close()

    await asyncio.gather(*(sender(n) for n in range(concurrency)))
    return accepted, latencies, errors


def work(folder: str, driver: str, redis_url: str, prefix: str) -> None:
    """A pipeline worker process for the benchmark's cell, until terminated."""
    import signal

    from data_plane.pipeline.worker import create_worker
    from data_plane.settings import CellSettings
    from data_plane.stream.drivers import create_stream
    from data_plane.stream.settings import StreamSettings
    from kernel.logging import configure_logging

    configure_logging("warning")
    os.environ.setdefault("LIVORA_PROFILES_SQLITE_ROOT", folder)

    async def run() -> None:
        stream = create_stream(
            StreamSettings(
                stream_driver=driver,
                stream_log_path=f"{folder}/stream.db",
                redis_url=redis_url,
                stream_redis_prefix=prefix,
            )
        )
        worker = create_worker(stream, CellSettings(data_dir=folder))
        worker.batch_size = 2000
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await worker.run(stop)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"        worker peak RSS {peak:.0f} MiB", flush=True)
        await worker.close()
        await stream.close()

    asyncio.run(run())


async def ledger_totals(folder: str) -> tuple[int, int]:
    """(accepted, written) so far, from the cell's usage ledger."""
    from data_plane.usage.ledger import UsageLedger

    ledger = UsageLedger(Path(folder) / "cell" / "usage.db")
    try:
        hours = await ledger.hours()
        return sum(h.accepted for h in hours), sum(h.written for h in hours)
    finally:
        await ledger.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentiles(latencies: list[float]) -> tuple[float, float]:
    latencies = sorted(latencies)
    return statistics.median(latencies) * 1000, latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--offered", type=float, default=20_000, help="events/s of the fixed-rate latency run")
    parser.add_argument("--drivers", default="log,redis")
    parser.add_argument("--redis-url", default=os.environ.get("LIVORA_REDIS_URL", "redis://127.0.0.1:6379/15"))
    args = parser.parse_args()
    print(f"batches of 100 events, {args.concurrency} senders, {args.seconds:.0f} s per run, {os.cpu_count()} cores")
    for driver in args.drivers.split(","):
        with tempfile.TemporaryDirectory() as folder:
            server, port = start_cell(folder, driver, args.redis_url)
            accepted, latencies, errors = asyncio.run(load(port, args.seconds, args.concurrency))
            p50, p99 = percentiles(latencies)
            print(
                f"[{driver}] acks: {accepted / args.seconds:,.0f} events/s, "
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms per batch, {errors} errors"
            )
            offered, latencies, errors = asyncio.run(load(port, args.seconds, 8, offered=args.offered))
            p50, p99 = percentiles(latencies)
            print(
                f"[{driver}] at {args.offered:,.0f} events/s offered: {offered / args.seconds:,.0f} acked/s, "
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms per batch, {errors} errors"
            )
            server.terminate()
            server.join()
        with tempfile.TemporaryDirectory() as folder:
            # End to end: a fresh cell and a worker beside it, senders flat out, until all is in the lake.
            server, port = start_cell(folder, driver, args.redis_url)
            worker = multiprocessing.Process(
                target=work, args=(folder, driver, args.redis_url, f"bench:{server.pid}:"), daemon=True
            )
            worker.start()
            started = time.perf_counter()
            sent, _, errors = asyncio.run(load(port, args.seconds, args.concurrency))
            sending = time.perf_counter() - started
            accepted, written = asyncio.run(ledger_totals(folder))
            while written < accepted:
                time.sleep(0.2)
                accepted, written = asyncio.run(ledger_totals(folder))
            elapsed = time.perf_counter() - started
            worker.terminate()
            worker.join()
            server.terminate()
            server.join()
            print(
                f"[{driver}] end to end: {written:,} events in the lake {elapsed:.1f} s after the first send "
                f"= {written / elapsed:,.0f} events/s (sending took {sending:.1f} s, {sent / sending:,.0f} acked/s "
                f"with the worker running, {errors} errors)"
            )


def start_cell(folder: str, driver: str, redis_url: str) -> tuple[multiprocessing.Process, int]:
    port = free_port()
    server = multiprocessing.Process(target=serve, args=(port, folder, driver, redis_url), daemon=True)
    server.start()
    for _ in range(200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return server, port


if __name__ == "__main__":
    main()
