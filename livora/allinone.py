"""The all-in-one mode of `livora run`: the control plane and one built-in cell in one process."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Callable

import msgspec
import uvicorn
from litestar import Litestar

from control_plane.app import create_app
from control_plane.runtime import Runtime
from control_plane.settings import Settings
from data_plane.app import create_cell_app
from data_plane.contract.keeper import ConfigKeeper, HttpConfigFetcher, InProcessConfigFetcher
from data_plane.contract.schemas import CellConfig, UsageReceipt, UsageReport
from data_plane.pipeline.worker import create_worker
from data_plane.settings import CellSettings
from data_plane.spaces import build_spaces
from data_plane.stream.drivers import create_stream
from data_plane.stream.settings import StreamSettings
from data_plane.usage.push import InProcessUsageSink
from kernel.errors import ConfigError
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


def _die_with_parent() -> None:
    """In the child, before exec: a SIGTERM when this process ends, however it ends.

    NOTE: uvicorn re-raises the signal that stopped it, which ends this process before any
    ``finally`` runs; without this the cell's processes would outlive `livora run`.
    """
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def serve_all_in_one(
    settings: Settings,
    *,
    migrate: Callable[[Settings], None],
    on_ready: Callable[[Settings, str | None, str], None],
    ensure_admin: Callable[[Settings], str | None],
    workers: int = 1,
) -> int:
    """`livora run`: the control plane, the built-in cell and one pipeline worker.

    With ``workers`` > 1 the built-in cell is ``livora cell --workers N`` in a child process: its
    ingest processes pull their config and push usage over HTTP with the installation's cell
    secret, like any remote cell (one process can call the control plane in-process; N cannot).
    """
    configure_logging(settings.log_level, settings.log_format)
    if workers > 1 and not settings.cell_secret:
        raise ConfigError(
            "LIVORA_CELL_SECRET",
            "with --workers above 1 the built-in cell's processes authenticate to the control plane; set a secret",
        )
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
    cell = (
        create_cell_app(cell_settings, keeper, stream, usage_sink=InProcessUsageSink(take_usage))
        if workers == 1
        else None
    )
    print("Migrating the database…", flush=True)
    migrate(settings)
    password = ensure_admin(settings)
    cell_url = f"http://{cell_settings.cell_host}:{cell_settings.cell_port}"
    on_ready(settings, password, cell_url)

    cells: subprocess.Popen[bytes] | None = None
    if workers > 1:
        local = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        # Its processes retry the config pull until the control plane below is listening.
        cells = subprocess.Popen(
            [sys.executable, "-m", "livora", "cell", "--workers", str(workers)],
            env={
                **os.environ,
                "LIVORA_DATA_DIR": settings.data_dir,
                "LIVORA_CONTROL_PLANE_URL": f"http://{local}:{settings.port}",
                "LIVORA_CELL_SECRET": settings.cell_secret,
            },
            preexec_fn=_die_with_parent,
        )

    async def serve() -> None:
        # The built-in cell's pipeline worker runs in this process too; `livora worker` runs more.
        worker = create_worker(stream, cell_settings)
        stop = asyncio.Event()
        pipeline = asyncio.create_task(worker.run(stop), name="pipeline-worker")
        servers = [
            uvicorn.Server(
                uvicorn.Config(control_plane, host=settings.host, port=settings.port, log_config=None, access_log=False)
            ),
        ]
        if cell is not None:
            servers.append(
                uvicorn.Server(
                    uvicorn.Config(
                        cell,
                        host=cell_settings.cell_host,
                        port=cell_settings.cell_port,
                        log_config=None,
                        access_log=False,
                    )
                )
            )
        try:
            await asyncio.gather(*(server.serve() for server in servers))
        finally:
            if cells is not None:
                cells.terminate()
                await asyncio.to_thread(cells.wait)
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


# What uvicorn imports in each ingest process of `livora cell` (a factory: one app per process).
CELL_APP = "livora.allinone:standalone_cell_app"


def _standalone_settings() -> CellSettings:
    cell_settings = CellSettings.from_env()
    if not cell_settings.control_plane_url:
        raise ConfigError("LIVORA_CONTROL_PLANE_URL", "a standalone cell needs the URL of its control plane")
    if not cell_settings.cell_secret:
        raise ConfigError("LIVORA_CELL_SECRET", "a standalone cell needs its credential for the control plane")
    return cell_settings


def standalone_cell_app() -> Litestar:
    """The app of one ingest process of `livora cell`: its own stream handle and config keeper, over
    the cell's shared state (stream, usage ledger, rate limits) as the settings describe it."""
    cell_settings = _standalone_settings()
    settings = load_settings(Settings)
    configure_logging(settings.log_level, settings.log_format)
    # The config pull runs every second: one line per pull would drown the log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    stream = create_stream(cell_stream_settings(cell_settings))
    keeper = ConfigKeeper(
        HttpConfigFetcher(cell_settings.control_plane_url, cell_settings.cell_secret),
        cell_settings.config_cache_path,
        interval=cell_settings.config_poll_seconds,
    )
    return create_cell_app(cell_settings, keeper, stream, close_stream=True)


def serve_cell(workers: int = 1) -> int:
    """`livora cell`: a standalone cell against ``LIVORA_CONTROL_PLANE_URL``, served by ``workers``
    ingest processes on one port (uvicorn's workers share the listening socket)."""
    cell_settings = _standalone_settings()
    settings = load_settings(Settings)
    configure_logging(settings.log_level, settings.log_format)
    # Check the stream's settings here, once, rather than in every process.
    create_stream(cell_stream_settings(cell_settings))
    print(
        f"Livora cell on http://{cell_settings.cell_host}:{cell_settings.cell_port} ({workers} ingest "
        f"process{'es' if workers > 1 else ''}), control plane {cell_settings.control_plane_url}",
        flush=True,
    )
    uvicorn.run(
        CELL_APP,
        factory=True,
        host=cell_settings.cell_host,
        port=cell_settings.cell_port,
        workers=workers,
        log_config=None,
        access_log=False,
    )
    return 0
