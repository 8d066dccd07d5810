"""Ingestion benchmark: ack throughput and latency per stream driver, against a decode-only ceiling, then end to end.

    .venv/bin/python bench/ingest.py [--seconds 10] [--concurrency 32] [--drivers log,redis] [--offered 20000]
                                     [--workers N] [--sender wrk|python] [--json] [--soak SECONDS]

The cell runs in its own process (``--workers N``: N ingest processes on one port) with a fixed
config of one tenant. Batches carry 100 realistic events. Per driver it measures:

1. acks: as fast as ``--concurrency`` connections can go (wrk when installed: it reuses one body,
   which is fine for acks; else a small asyncio HTTP/1.1 sender), events/s and p50/p99 per batch;
2. latency at a fixed offered load (``--offered`` events/s): each request is timed from when it was
   due, not from when it went out, so a stalled cell shows up as latency (no coordinated omission);
3. end to end: a pipeline worker process runs beside the cell while the senders go flat out;
   events/s from the first send until the usage ledger shows every accepted event in the lake.

The ceiling: a Litestar endpoint in its own process that only decodes the same batch (the same
msgspec types), under the same load from the same sender. Every figure is printed beside its
target, and acks beside their ratio to the ceiling. ``--soak SECONDS`` instead offers 10,000
events/s for that long with a worker running, and reports errors, consumer lag and the worker's
memory growth. ``--json`` prints one JSON object with every figure.
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
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WRITE_KEY = "lvw_benchmark_write_key_000000000000"
TENANT = "ten_bench"
BATCH = 100
TARGETS = {
    "acks_log": 60_000,
    "acks_redis": 100_000,
    "p99_ms": 50.0,
    "end_to_end": 20_000,
    "soak_lag_s": 10.0,
}


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


def stream_settings(folder: str, driver: str, redis_url: str, prefix: str):
    from data_plane.stream.settings import StreamSettings

    return StreamSettings(
        stream_driver=driver, stream_log_path=f"{folder}/stream.db", redis_url=redis_url, stream_redis_prefix=prefix
    )


def bench_app():
    """One ingest process of the benchmark's cell (uvicorn's factory; the settings come from BENCH_*)."""
    from data_plane.app import create_cell_app
    from data_plane.contract.keeper import ConfigKeeper, InProcessConfigFetcher
    from data_plane.settings import CellSettings
    from data_plane.stream.drivers import create_stream
    from kernel.logging import configure_logging

    configure_logging("warning")
    folder, driver, redis_url, prefix = (os.environ[f"BENCH_{k}"] for k in ("FOLDER", "DRIVER", "REDIS", "PREFIX"))
    fixed = config()

    async def build():
        return fixed

    # LIVORA_* settings apply (LIVORA_RATE_LIMIT_DRIVER, say), in the benchmark's folder.
    settings = CellSettings.from_env(data_dir=folder)
    stream = create_stream(stream_settings(folder, driver, redis_url, prefix))
    keeper = ConfigKeeper(InProcessConfigFetcher(build), settings.config_cache_path, interval=60)
    return create_cell_app(settings, keeper, stream, close_stream=True)


def serve(port: int, folder: str, driver: str, redis_url: str, workers: int) -> None:
    import uvicorn

    os.environ.update(
        BENCH_FOLDER=folder, BENCH_DRIVER=driver, BENCH_REDIS=redis_url, BENCH_PREFIX=prefix_of(os.getpid())
    )
    uvicorn.run(
        "bench.ingest:bench_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
    )


def prefix_of(server_pid: int) -> str:
    return f"bench:{server_pid}:"


def ceiling_app():
    """The ceiling: the same route, the same decode of the same batch, and nothing else."""
    import msgspec
    from litestar import Litestar, Request, Response, post

    from data_plane.ingest.schemas import Batch

    decoder = msgspec.json.Decoder(Batch)

    @post("/v1/batch", status_code=202)
    async def batch(request: Request) -> Response[dict[str, int]]:
        decoded = decoder.decode(await request.body())
        return Response({"accepted": len(decoded.batch)}, status_code=202)

    return Litestar(
        route_handlers=[batch],
        logging_config=None,
        debug=False,
        request_max_body_size=512_000,
        # The annotations are strings (postponed evaluation); these names resolve them.
        signature_namespace={"Request": Request, "Response": Response},
    )


def serve_ceiling(port: int) -> None:
    import uvicorn

    uvicorn.run(ceiling_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


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


def auth_header() -> str:
    return "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()


def request_head(host: str, port: int) -> bytes:
    return (
        f"POST /v1/batch HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: {auth_header()}\r\n"
        "Content-Type: application/json\r\n"
    ).encode()


BODIES = 200


def bodies() -> list[bytes]:
    return [json.dumps({"batch": [event(b * BATCH + i) for i in range(BATCH)]}).encode() for b in range(BODIES)]


def unique(body: bytes, k: int) -> bytes:
    # Every request carries new message ids, so the pipeline sees no duplicates.
    return body.replace(b'"messageId": "m-', b'"messageId": "m%d-' % k)


async def load(
    port: int, seconds: float, concurrency: int, offered: float | None = None
) -> tuple[int, list[float], int, float]:
    """Send for ``seconds``: flat out with ``concurrency`` connections, or ``offered`` events/s.

    At a fixed rate, request ``k`` of a connection is due at ``start + k * interval`` whatever
    happened before; its latency runs from then, so time spent waiting behind a slow answer counts.
    """
    head = request_head("127.0.0.1", port)
    payloads = bodies()
    latencies: list[float] = []
    accepted = errors = 0
    started = time.perf_counter()
    deadline = started + seconds
    interval = BATCH / offered * concurrency if offered else 0.0

    async def sender(n: int) -> None:
        nonlocal accepted, errors
        connection = await Connection.open("127.0.0.1", port)
        k, due = n, started + (interval * n / concurrency)
        try:
            while (due if interval else time.perf_counter()) < deadline:
                if interval:
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    begun = due
                    due += interval
                else:
                    begun = time.perf_counter()
                status = await connection.post(head, unique(payloads[k % BODIES], k))
                latencies.append(time.perf_counter() - begun)
                if status in (200, 202):
                    accepted += BATCH
                else:
                    errors += 1
                k += concurrency
        finally:
            await connection.close()

    await asyncio.gather(*(sender(n) for n in range(concurrency)))
    # Over the time the answers took, not the nominal window: a cell that falls behind a fixed
    # rate answers the last requests after it.
    elapsed = max(seconds, time.perf_counter() - started)
    return accepted, latencies, errors, elapsed


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "%s"
local f = io.open("%s", "rb")
wrk.body = f:read("*a")
f:close()
"""


def wrk_load(port: int, seconds: float, concurrency: int, folder: str) -> tuple[int, float, float, int]:
    """(events acked, p50 ms, p99 ms, errors) from wrk, one body reused (fine for acks)."""
    body = Path(folder) / "wrk-body.json"
    body.write_bytes(bodies()[0])
    script = Path(folder) / "wrk.lua"
    script.write_text(WRK_SCRIPT % (auth_header(), body))
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/v1/batch",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(failed.group(1)) if failed else 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return (requests - (int(failed.group(1)) if failed else 0)) * BATCH, ms("50"), ms("99"), errors


def work(folder: str, driver: str, redis_url: str, prefix: str) -> None:
    """A pipeline worker process for the benchmark's cell, until terminated."""
    import signal

    from data_plane.pipeline.worker import create_worker
    from data_plane.settings import CellSettings
    from data_plane.stream.drivers import create_stream
    from kernel.logging import configure_logging

    configure_logging("warning")
    os.environ.setdefault("LIVORA_PROFILES_SQLITE_ROOT", folder)

    async def run() -> None:
        stream = create_stream(stream_settings(folder, driver, redis_url, prefix))
        worker = create_worker(stream, CellSettings(data_dir=folder))
        worker.batch_size = 2000
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await worker.run(stop)
        await worker.close()
        await stream.close()

    asyncio.run(run())


def ledger_file(folder: str, driver: str) -> Path:
    # The embedded log holds the ledger in its own file; other streams leave it in the cell's usage.db.
    return Path(folder) / "stream.db" if driver == "log" else Path(folder) / "cell" / "usage.db"


async def ledger_totals(folder: str, driver: str) -> tuple[int, int]:
    """(accepted, written) so far, from the cell's usage ledger."""
    from data_plane.usage.ledger import UsageLedger

    ledger = UsageLedger(ledger_file(folder, driver))
    try:
        hours = await ledger.hours()
        return sum(h.accepted for h in hours), sum(h.written for h in hours)
    finally:
        await ledger.close()


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentiles(latencies: list[float]) -> tuple[float, float]:
    if not latencies:
        return 0.0, 0.0
    latencies = sorted(latencies)
    return statistics.median(latencies) * 1000, latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000


def wait_ready(port: int, path: str = "/ready") -> None:
    for _ in range(400):
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}").status_code in (200, 405):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"the server on port {port} never became ready")


def start_cell(folder: str, driver: str, redis_url: str, workers: int) -> tuple[multiprocessing.Process, int]:
    port = free_port()
    server = multiprocessing.Process(target=serve, args=(port, folder, driver, redis_url, workers), daemon=False)
    server.start()
    wait_ready(port)
    return server, port


def stop(process: multiprocessing.Process) -> None:
    process.terminate()
    process.join(timeout=30)


def acks(port: int, args: argparse.Namespace, folder: str) -> dict:
    if args.sender == "wrk":
        accepted, p50, p99, errors = wrk_load(port, args.seconds, args.concurrency, folder)
    else:
        accepted, latencies, errors, elapsed = asyncio.run(load(port, args.seconds, args.concurrency))
        p50, p99 = percentiles(latencies)
        return {"events_per_s": accepted / elapsed, "p50_ms": p50, "p99_ms": p99, "errors": errors}
    return {"events_per_s": accepted / args.seconds, "p50_ms": p50, "p99_ms": p99, "errors": errors}


def ceiling(args: argparse.Namespace) -> dict:
    port = free_port()
    server = multiprocessing.Process(target=serve_ceiling, args=(port,), daemon=False)
    server.start()
    wait_ready(port, "/v1/batch")
    with tempfile.TemporaryDirectory() as folder:
        figures = acks(port, args, folder)
    stop(server)
    return figures


def measure(driver: str, args: argparse.Namespace) -> dict:
    figures: dict = {"driver": driver, "workers": args.workers}
    with tempfile.TemporaryDirectory() as folder:
        server, port = start_cell(folder, driver, args.redis_url, args.workers)
        figures["acks"] = acks(port, args, folder)
        sent, latencies, errors, elapsed = asyncio.run(load(port, args.seconds, 8, offered=args.offered))
        p50, p99 = percentiles(latencies)
        figures["fixed_rate"] = {
            "offered_events_per_s": args.offered,
            "acked_events_per_s": sent / elapsed,
            "p50_ms": p50,
            "p99_ms": p99,
            "errors": errors,
        }
        stop(server)
    if args.no_end_to_end:
        return figures
    with tempfile.TemporaryDirectory() as folder:
        # End to end: a fresh cell and a worker beside it, senders flat out, until all is in the lake.
        server, port = start_cell(folder, driver, args.redis_url, args.workers)
        worker = multiprocessing.Process(
            target=work, args=(folder, driver, args.redis_url, prefix_of(server.pid or 0)), daemon=True
        )
        worker.start()
        started = time.perf_counter()
        sent, _, errors, _ = asyncio.run(load(port, args.seconds, args.concurrency))
        sending = time.perf_counter() - started
        accepted, written = asyncio.run(ledger_totals(folder, driver))
        peak = 0.0
        while written < accepted:
            time.sleep(0.2)
            peak = max(peak, rss_mib(worker.pid or 0))
            accepted, written = asyncio.run(ledger_totals(folder, driver))
        elapsed = time.perf_counter() - started
        stop(worker)
        stop(server)
        figures["end_to_end"] = {
            "events": written,
            "seconds": elapsed,
            "events_per_s": written / elapsed,
            "acked_events_per_s_while_working": sent / sending,
            "worker_rss_mib": peak,
            "errors": errors,
        }
    return figures


def soak(driver: str, args: argparse.Namespace) -> dict:
    """Offer 10,000 events/s for ``--soak`` seconds with a worker running; sample the consumer's lag
    (how long ago the accepted count was where the lake's count is now) and the worker's memory."""
    rate, seconds = 10_000.0, args.soak
    with tempfile.TemporaryDirectory() as folder:
        server, port = start_cell(folder, driver, args.redis_url, args.workers)
        worker = multiprocessing.Process(
            target=work, args=(folder, driver, args.redis_url, prefix_of(server.pid or 0)), daemon=True
        )
        worker.start()
        samples: list[tuple[float, int, int, float]] = []

        async def sample(done: asyncio.Event) -> None:
            while not done.is_set():
                accepted, written = await ledger_totals(folder, driver)
                samples.append((time.perf_counter(), accepted, written, rss_mib(worker.pid or 0)))
                try:
                    await asyncio.wait_for(done.wait(), 2.0)
                except TimeoutError:
                    pass

        async def run() -> tuple[int, int]:
            done = asyncio.Event()
            sampler = asyncio.create_task(sample(done))
            sent, _, errors, elapsed = await load(port, seconds, 8, offered=rate)
            done.set()
            await sampler
            return sent, errors, elapsed

        sent, errors, elapsed = asyncio.run(run())
        stop(worker)
        stop(server)

    def lag(at: int) -> float:
        t, _, written, _ = samples[at]
        reached = next((s[0] for s in samples if s[1] >= written), t)
        return t - reached

    warm = max(1, len(samples) // 5)
    lags = [lag(i) for i in range(warm, len(samples))] or [0.0]
    rss = [s[3] for s in samples[warm:]] or [0.0]
    return {
        "driver": driver,
        "seconds": seconds,
        "offered_events_per_s": rate,
        "acked_events_per_s": sent / elapsed,
        "errors": errors,
        "max_consumer_lag_s": max(lags),
        "worker_rss_after_warmup_mib": rss[0],
        "worker_rss_growth_mib": rss[-1] - rss[0],
    }


def line(label: str, value: str, target: str = "", ratio: str = "") -> str:
    return f"  {label:<44} {value:>22}   {target:<18} {ratio}"


def verdict(value: float, target: float, higher: bool = True) -> str:
    ok = value >= target if higher else value <= target
    return ("≥ " if higher else "≤ ") + f"{target:,.0f}" + (" ok" if ok else " MISSED")


def report(results: dict) -> None:
    print(f"batches of {BATCH} events, {results['cores']} cores, sender: {results['sender']}")
    if "ceiling" in results:
        c = results["ceiling"]
        print(line("ceiling (decode only, 1 process): acks/s", f"{c['events_per_s']:,.0f}"))
    for figures in results["drivers"]:
        driver = figures["driver"]
        print(f"[{driver}, {figures['workers']} ingest process(es)]")
        a = figures["acks"]
        target = TARGETS[f"acks_{driver}"] if f"acks_{driver}" in TARGETS else 0
        ratio = (
            f"{a['events_per_s'] / results['ceiling']['events_per_s']:.0%} of ceiling" if "ceiling" in results else ""
        )
        print(line("acks: events/s", f"{a['events_per_s']:,.0f}", verdict(a["events_per_s"], target), ratio))
        print(line("acks: p50 / p99 per batch (ms)", f"{a['p50_ms']:.1f} / {a['p99_ms']:.1f}", f"{a['errors']} errors"))
        f = figures["fixed_rate"]
        print(
            line(
                f"at {f['offered_events_per_s']:,.0f} events/s offered: p99 (ms)",
                f"{f['p99_ms']:.1f}",
                verdict(f["p99_ms"], TARGETS["p99_ms"], higher=False),
                f"p50 {f['p50_ms']:.1f} ms, {f['acked_events_per_s']:,.0f} acked/s, {f['errors']} errors",
            )
        )
        e = figures.get("end_to_end")
        if e is None:
            continue
        print(
            line(
                "end to end into the lake: events/s",
                f"{e['events_per_s']:,.0f}",
                verdict(e["events_per_s"], TARGETS["end_to_end"]),
                f"{e['events']:,} in {e['seconds']:.1f} s, worker RSS {e['worker_rss_mib']:.0f} MiB",
            )
        )
    for s in results.get("soak", []):
        print(f"[{s['driver']} soak, {s['seconds']:.0f} s at {s['offered_events_per_s']:,.0f} events/s offered]")
        print(line("errors", f"{s['errors']}", "0"))
        print(
            line("max consumer lag (s)", f"{s['max_consumer_lag_s']:.1f}", verdict(s["max_consumer_lag_s"], 10, False))
        )
        print(
            line(
                "worker RSS growth after warm-up (MiB)",
                f"{s['worker_rss_growth_mib']:+.0f}",
                "flat",
                f"from {s['worker_rss_after_warmup_mib']:.0f} MiB",
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--offered", type=float, default=20_000, help="events/s of the fixed-rate latency run")
    parser.add_argument("--drivers", default="log,redis")
    parser.add_argument("--workers", type=int, default=1, help="ingest processes of the cell")
    parser.add_argument("--sender", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--soak", type=float, default=0, help="seconds of a soak at 10,000 events/s (instead)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    parser.add_argument("--no-end-to-end", action="store_true", help="acks and latency only (no pipeline)")
    parser.add_argument("--redis-url", default=os.environ.get("LIVORA_REDIS_URL", "redis://127.0.0.1:6379/15"))
    args = parser.parse_args()
    # The soak and the fixed-rate runs always use the asyncio sender (wrk cannot pace requests).
    sender = "python" if args.soak else args.sender
    results: dict = {"cores": os.cpu_count(), "sender": sender, "targets": TARGETS, "drivers": []}
    drivers = args.drivers.split(",")
    if args.soak:
        results["soak"] = [soak(driver, args) for driver in drivers]
    else:
        results["ceiling"] = ceiling(args)
        results["drivers"] = [measure(driver, args) for driver in drivers]
    if args.json:
        print(json.dumps(results))
    else:
        report(results)


if __name__ == "__main__":
    main()
