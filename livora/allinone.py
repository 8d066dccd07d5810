"""The all-in-one mode of `livora run`: the control plane and one built-in cell in one process."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import msgspec
import uvicorn

from control_plane.app import create_app
from control_plane.runtime import Runtime
from control_plane.settings import Settings
from data_plane.app import create_cell_app
from data_plane.contract.keeper import ConfigKeeper, InProcessConfigFetcher
from data_plane.contract.schemas import CellConfig, UsageReceipt, UsageReport
from data_plane.pipeline.worker import create_worker
from data_plane.settings import CellSettings
from data_plane.spaces import build_spaces
from data_plane.stream.drivers import create_stream
from data_plane.stream.settings import StreamSettings
from data_plane.usage.push import InProcessUsageSink
from kernel.logging import configure_logging
from kernel.settings import load_settings


def cell_stream_settings(cell_settings: CellSettings) -> StreamSettings:
    """Stream settings from ``LIVORA_STREAM_*``; the embedded log lives with the cell's other state."""
    stream_settings = load_settings(StreamSettings)
    if "LIVORA_STREAM_LOG_PATH" not in os.environ:
        stream_settings = msgspec.structs.replace(
            stream_settings, stream_log_path=str(cell_settings.cell_dir / "stream.db")
        )
    return stream_settings


def serve_all_in_one(
    settings: Settings,
    *,
    migrate: Callable[[Settings], None],
    on_ready: Callable[[Settings, str | None, str], None],
    ensure_admin: Callable[[Settings], str | None],
) -> int:
    configure_logging(settings.log_level, settings.log_format)
    cell_settings = CellSettings.from_env(data_dir=settings.data_dir)
    stream_settings = cell_stream_settings(cell_settings)
    # Building everything first checks every setting before anything is touched.
    runtime = Runtime.build(settings)
    stream = create_stream(stream_settings)

    async def build_config() -> CellConfig:
        async with runtime.services() as services:
            return await services.cells.build()

    # The same contract as a remote cell's, called in-process: no credential, no network.
    keeper = ConfigKeeper(
        InProcessConfigFetcher(build_config),
        cell_settings.config_cache_path,
        interval=cell_settings.config_poll_seconds,
    )
    # Provisioning reaches the built-in cell's tenant spaces in-process too (the same contract).
    runtime.provisioner.attach_builtin_cell(build_spaces(cell_settings))
    control_plane = create_app(settings, runtime)

    async def take_usage(report: UsageReport) -> UsageReceipt:
        async with runtime.services() as services:
            return await services.billing.ingest_usage(report)

    # Usage goes to billing over the same contract as a remote cell's push, in-process.
    cell = create_cell_app(cell_settings, keeper, stream, usage_sink=InProcessUsageSink(take_usage))
    print("Migrating the database…", flush=True)
    migrate(settings)
    password = ensure_admin(settings)
    cell_url = f"http://{cell_settings.cell_host}:{cell_settings.cell_port}"
    on_ready(settings, password, cell_url)

    async def serve() -> None:
        # The built-in cell's pipeline worker runs in this process too; `livora worker` runs more.
        worker = create_worker(stream, cell_settings)
        stop = asyncio.Event()
        pipeline = asyncio.create_task(worker.run(stop), name="pipeline-worker")
        servers = [
            uvicorn.Server(
                uvicorn.Config(control_plane, host=settings.host, port=settings.port, log_config=None, access_log=False)
            ),
            uvicorn.Server(
                uvicorn.Config(
                    cell, host=cell_settings.cell_host, port=cell_settings.cell_port, log_config=None, access_log=False
                )
            ),
        ]
        try:
            await asyncio.gather(*(server.serve() for server in servers))
        finally:
            stop.set()
            await pipeline
            await worker.close()

    asyncio.run(serve())
    return 0


def run_worker() -> int:
    """`livora worker`: one pipeline worker process for the cell these settings describe, until a signal."""
    import signal

    cell_settings = CellSettings.from_env()
    settings = load_settings(Settings)
    configure_logging(settings.log_level, settings.log_format)
    stream_settings = cell_stream_settings(cell_settings)

    async def work() -> None:
        stream = create_stream(stream_settings)
        worker = create_worker(stream, cell_settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await worker.run(stop)
        finally:
            await worker.close()
            await stream.close()

    asyncio.run(work())
    return 0
