"""Keeps the cell's tenant config: pulled from the control plane, cached on disk, served from memory."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
import structlog

from data_plane.contract.schemas import (
    CONFIG_PATH,
    CellConfig,
    SourceConfig,
    TenantConfig,
    decode_config,
    encode_config,
)
from kernel.errors import Unavailable

log = structlog.get_logger("livora.cell.config")


class ConfigFetcher(Protocol):
    async def fetch(self, version: str | None) -> CellConfig | None:
        """The current config, or None when it is still ``version``. Raises ``Unavailable`` when unreachable."""
        ...

    async def close(self) -> None: ...


class HttpConfigFetcher:
    """Pulls over HTTP with the cell's credential; ETag/If-None-Match keeps unchanged polls tiny."""

    def __init__(self, control_plane_url: str, credential: str, *, timeout: float = 5.0) -> None:
        self._client = httpx.AsyncClient(
            base_url=control_plane_url.rstrip("/"),
            headers={"Authorization": f"Bearer {credential}"},
            timeout=timeout,
        )

    async def fetch(self, version: str | None) -> CellConfig | None:
        headers = {"If-None-Match": f'"{version}"'} if version else {}
        try:
            response = await self._client.get(CONFIG_PATH, headers=headers)
        except httpx.HTTPError as exc:
            raise Unavailable(f"control plane unreachable: {exc}", code="control_plane_unavailable") from None
        if response.status_code == 304:
            return None
        if response.status_code != 200:
            raise Unavailable(
                f"control plane answered {response.status_code} to the config pull", code="control_plane_unavailable"
            )
        try:
            return decode_config(response.content)
        except ValueError as exc:
            raise Unavailable(f"control plane sent a config this cell cannot read: {exc}", code="bad_config") from None

    async def close(self) -> None:
        await self._client.aclose()


class InProcessConfigFetcher:
    """The all-in-one mode: the same contract, with the control plane's builder called directly."""

    def __init__(self, build: Callable[[], Awaitable[CellConfig]]) -> None:
        self._build = build

    async def fetch(self, version: str | None) -> CellConfig | None:
        config = await self._build()
        return None if config.version == version else config

    async def close(self) -> None:
        pass


@dataclass(frozen=True)
class Resolved:
    tenant: TenantConfig
    source: SourceConfig


class Directory:
    """An index of one config: write-key hash → (tenant, source)."""

    def __init__(self, config: CellConfig) -> None:
        self.config = config
        self._by_hash: dict[str, Resolved] = {}
        for tenant in config.tenants:
            for source in tenant.sources:
                for digest in source.write_key_hashes:
                    self._by_hash[digest] = Resolved(tenant, source)

    def resolve(self, write_key_hash: str, now: dt.datetime) -> Resolved | None:
        found = self._by_hash.get(write_key_hash)
        if found is None:
            return None
        source = found.source
        # A rotated-out key stops at the end of its grace even if no newer config arrived.
        if write_key_hash == source.previous_write_key_hash and (
            source.previous_valid_until is None or source.previous_valid_until <= now
        ):
            return None
        return found


EMPTY = CellConfig(version="", generated_at=dt.datetime.fromtimestamp(0, dt.UTC), tenants=[])


class ConfigKeeper:
    """Static stability: serve the last good config whatever happens to the control plane.

    At start the disk cache is loaded first, so a cell restarted while the control plane is down
    still knows its tenants. Each successful pull replaces memory and then the cache atomically.
    """

    def __init__(self, fetcher: ConfigFetcher, cache_path: Path, *, interval: float = 1.0) -> None:
        self.fetcher = fetcher
        self.cache_path = Path(cache_path)
        self.interval = interval
        self.directory = Directory(EMPTY)
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def config(self) -> CellConfig:
        return self.directory.config

    def load_cache(self) -> bool:
        try:
            self.directory = Directory(decode_config(self.cache_path.read_bytes()))
        except FileNotFoundError:
            return False
        except ValueError as exc:
            log.warning("config_cache_unreadable", path=str(self.cache_path), error=str(exc))
            return False
        return True

    def _save_cache(self, config: CellConfig) -> None:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, prefix=".config-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(encode_config(config))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.cache_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    async def refresh(self) -> bool:
        """Pull once; True when the config changed. Failures keep the last good config."""
        try:
            config = await self.fetcher.fetch(self.config.version or None)
        except Unavailable as exc:
            if self.last_error != exc.detail:
                log.warning("config_pull_failed", error=exc.detail, serving_version=self.config.version)
            self.last_error = exc.detail
            return False
        self.last_error = None
        if config is None:
            return False
        self.directory = Directory(config)
        await asyncio.to_thread(self._save_cache, config)
        log.info("config_updated", version=config.version, tenants=len(config.tenants))
        return True

    async def start(self) -> None:
        self.load_cache()
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="cell-config-keeper")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.refresh()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.fetcher.close()
