"""Object-store port for the lake: whole objects put atomically, read, listed by prefix, deleted."""

from __future__ import annotations

import asyncio
import errno
import os
import pathlib
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import AsyncExitStack, contextmanager, suppress
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import msgspec

from kernel.errors import ConfigError, Conflict, NotFound, Unavailable
from kernel.registry import DriverRegistry

if TYPE_CHECKING:
    import aioboto3

    from data_plane.settings import CellSettings

UNAVAILABLE = "object_store_unavailable"
MISSING = "object_not_found"
# Temporary files of the local driver: hidden (keys never have a segment starting with ".") and not
# ending in .parquet, so neither list() nor a reader's ``**/*.parquet`` glob ever sees one.
_TEMP_SUFFIX = ".tmp"
_MAX_KEY_BYTES = 1024  # S3's limit; the local driver keeps it too so both accept the same keys.
_DELETE_BATCH = 1000  # S3 DeleteObjects takes at most 1,000 keys.


class ObjectInfo(msgspec.Struct, frozen=True):
    key: str
    size: int


class ObjectStore(Protocol):
    """Keys are ``/``-separated relative paths such as ``tenants/{tenant_id}/events/...``.

    Callers put the tenant in the key (see ``data_plane.lake.layout``); the store adds no scoping.
    Backend failures raise ``kernel.errors.Unavailable`` (code ``object_store_unavailable``); no
    vendor exception crosses the port.
    """

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any object there.

        Atomic: a reader sees the old object or the whole new one, never a part, and a failed put
        leaves nothing behind under ``key``.
        """
        ...

    async def get(self, key: str) -> bytes:
        """The object's bytes; ``kernel.errors.NotFound`` (code ``object_not_found``) when missing."""
        ...

    async def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a plain string prefix), sorted by key."""
        ...

    async def delete(self, keys: Iterable[str]) -> None:
        """Remove the objects; missing keys are not an error."""
        ...

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


def _check_segment(segment: str, key: str) -> None:
    if not segment or segment.startswith(".") or "\\" in segment or "\x00" in segment:
        raise ValueError(f"invalid object key {key!r}: empty, hidden, '.', '..' or backslash segment")


def check_key(key: str) -> str:
    """Return ``key`` if it is a relative path of plain segments that every driver accepts."""
    if not isinstance(key, str) or not key or len(key.encode()) > _MAX_KEY_BYTES:
        raise ValueError(f"invalid object key {key!r}: empty or longer than {_MAX_KEY_BYTES} bytes")
    for segment in key.split("/"):
        _check_segment(segment, key)
    return key


def check_prefix(prefix: str) -> str:
    """Like ``check_key`` but the last segment may be partial or empty (``""`` lists everything)."""
    if prefix == "":
        return prefix
    *dirs, last = prefix.split("/")
    for segment in dirs:
        _check_segment(segment, prefix)
    if last:
        _check_segment(last, prefix)
    return prefix


class MemoryObjectStore:
    """A dict of objects, for tests and property tests.

    NOTE: deliberately not in the driver registry: a lake that forgets everything on restart is
    never what a setting should be able to pick.
    """

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}

    async def put(self, key: str, data: bytes) -> None:
        self._objects[check_key(key)] = bytes(data)

    async def get(self, key: str) -> bytes:
        try:
            return self._objects[check_key(key)]
        except KeyError:
            raise NotFound(f"object {key!r} does not exist", code=MISSING) from None

    async def list(self, prefix: str) -> list[ObjectInfo]:
        check_prefix(prefix)
        return [ObjectInfo(key, len(data)) for key, data in sorted(self._objects.items()) if key.startswith(prefix)]

    async def delete(self, keys: Iterable[str]) -> None:
        for key in list(keys):
            self._objects.pop(check_key(key), None)

    async def close(self) -> None:
        return None


class LocalObjectStore:
    """Objects as files under ``root``; the embedded lake.

    ``put`` writes a hidden temporary file in the target directory, fsyncs it, renames it over
    the key (atomic on POSIX) and fsyncs the directory, so a crash leaves the old file or the new
    one, plus at worst a stray temporary file that ``list`` ignores (``sweep_temporary_files``
    removes old ones). Work runs in a thread so the event loop never waits on the disk.

    CAUTION: a key cannot be both an object and a "directory" of other keys here (``a`` and
    ``a/b``), as it can on S3; the lake layout never does that. Such a put raises ``Conflict``.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = pathlib.Path(root).resolve()

    def _path(self, key: str) -> pathlib.Path:
        return self.root.joinpath(*check_key(key).split("/"))

    @contextmanager
    def _translated(self, operation: str, key: str) -> Iterator[None]:
        try:
            yield
        except (IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
            raise Conflict(
                f"object store (directory {self.root}) cannot {operation} {key!r}: {exc.strerror}",
                code="object_key_conflict",
            ) from exc
        except OSError as exc:
            raise Unavailable(
                f"object store (directory {self.root}) failed to {operation} {key!r}: {exc}", code=UNAVAILABLE
            ) from exc

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        # NOTE: delete() prunes empty directories, which may race with the mkdir below; retrying
        # recreates the directory (the temporary file then keeps it non-empty until the rename).
        for attempt in range(3):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            # mkstemp creates 0600; readers such as a warehouse under another account need to read.
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            with suppress(OSError):
                os.unlink(temporary)
            raise
        _fsync_directory(path.parent)

    def _get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            # No file at the key (a directory of other keys is not an object, as on S3).
            raise NotFound(f"object {key!r} does not exist", code=MISSING) from None

    def _list(self, prefix: str) -> list[ObjectInfo]:
        directory, _, _ = check_prefix(prefix).rpartition("/")
        base = self.root.joinpath(*directory.split("/")) if directory else self.root
        found: list[ObjectInfo] = []
        for current, dirnames, filenames in os.walk(base):
            dirnames[:] = [name for name in dirnames if not name.startswith(".")]
            relative = pathlib.Path(current).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue
                key = name if relative == "." else f"{relative}/{name}"
                if not key.startswith(prefix):
                    continue
                with suppress(FileNotFoundError):  # deleted while we walked
                    found.append(ObjectInfo(key, os.stat(os.path.join(current, name)).st_size))
        found.sort(key=lambda info: info.key)
        return found

    def _delete(self, keys: list[str]) -> None:
        parents: set[pathlib.Path] = set()
        for key in keys:
            path = self._path(key)
            with suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
                path.unlink()
            parents.add(path.parent)
        for parent in parents:
            self._prune(parent)

    def _prune(self, directory: pathlib.Path) -> None:
        """Remove empty directories up to (not including) the root, so a deleted tenant leaves no trace."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    return
                raise
            directory = directory.parent

    def sweep_temporary_files(self, older_than: float = 3600.0) -> int:
        """Remove temporary files a crashed ``put`` left behind; returns how many were removed."""
        removed = 0
        cutoff = time.time() - older_than
        for current, _, filenames in os.walk(self.root):
            for name in filenames:
                if name.startswith(".") and name.endswith(_TEMP_SUFFIX):
                    path = os.path.join(current, name)
                    with suppress(FileNotFoundError):
                        if os.stat(path).st_mtime < cutoff:
                            os.unlink(path)
                            removed += 1
        return removed

    async def put(self, key: str, data: bytes) -> None:
        check_key(key)
        with self._translated("put", key):
            await asyncio.to_thread(self._put, key, bytes(data))

    async def get(self, key: str) -> bytes:
        check_key(key)
        with self._translated("get", key):
            return await asyncio.to_thread(self._get, key)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        check_prefix(prefix)
        with self._translated("list", prefix):
            return await asyncio.to_thread(self._list, prefix)

    async def delete(self, keys: Iterable[str]) -> None:
        batch = [check_key(key) for key in keys]
        with self._translated("delete", ", ".join(batch[:3]) + (" …" if len(batch) > 3 else "")):
            await asyncio.to_thread(self._delete, batch)

    async def close(self) -> None:
        return None


def _fsync_directory(directory: pathlib.Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(endpoint_url: str | None) -> str:
    """Where the endpoint is, without any credentials the URL may carry."""
    if not endpoint_url:
        return "AWS"
    parts = urlsplit(endpoint_url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


class S3ObjectStore:
    """Objects in an S3 bucket (or an S3-compatible endpoint), each key stored as ``prefix + key``.

    A single PutObject is atomic: S3 never shows a partly uploaded object. Credentials come from
    ``session`` (e.g. one built from an assumed role in a client's account) or the default chain.
    Connection failures, timeouts and error responses become ``Unavailable``; a missing key on
    ``get`` is ``NotFound``.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        session: aioboto3.Session | None = None,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
        max_attempts: int = 3,
    ) -> None:
        if not bucket:
            raise ValueError("an S3 bucket name is required")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if prefix:
            check_key(prefix.rstrip("/"))
        self.bucket = bucket
        self.prefix = prefix
        self._endpoint_url = endpoint_url
        self._region = region
        self._session = session
        self._config = {
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "retries": {"max_attempts": max_attempts, "mode": "standard"},
        }
        self._where = f"s3://{bucket}/{prefix} at {_describe(endpoint_url)}"
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def _s3(self) -> Any:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    # Imported here so the embedded (local) lake works without the AWS libraries.
                    import aioboto3
                    from aiobotocore.config import AioConfig

                    session = self._session or aioboto3.Session()
                    stack = AsyncExitStack()
                    with self._translated("connect", ""):
                        self._client = await stack.enter_async_context(
                            session.client(
                                "s3",
                                endpoint_url=self._endpoint_url,
                                region_name=self._region,
                                config=AioConfig(**self._config),
                            )
                        )
                    self._stack = stack
        return self._client

    @contextmanager
    def _translated(self, operation: str, key: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if operation == "get" and code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"object {key!r} does not exist", code=MISSING) from None
            raise Unavailable(
                f"object store ({self._where}) refused {operation} {key!r}: {code or exc}", code=UNAVAILABLE
            ) from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise Unavailable(
                f"object store ({self._where}) is unreachable during {operation} {key!r}: {exc}", code=UNAVAILABLE
            ) from exc
        except Exception as exc:
            # aiohttp's own errors (payload, disconnects) can surface through aiobotocore.
            if type(exc).__module__.partition(".")[0] in ("aiohttp", "aiobotocore", "botocore"):
                raise Unavailable(
                    f"object store ({self._where}) failed {operation} {key!r}: {exc}", code=UNAVAILABLE
                ) from exc
            raise

    async def put(self, key: str, data: bytes) -> None:
        check_key(key)
        s3 = await self._s3()
        with self._translated("put", key):
            await s3.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=bytes(data))

    async def get(self, key: str) -> bytes:
        check_key(key)
        s3 = await self._s3()
        with self._translated("get", key):
            response = await s3.get_object(Bucket=self.bucket, Key=self.prefix + key)
            async with response["Body"] as body:
                data: bytes = await body.read()
            return data

    async def list(self, prefix: str) -> list[ObjectInfo]:
        check_prefix(prefix)
        s3 = await self._s3()
        found: list[ObjectInfo] = []
        with self._translated("list", prefix):
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    found.append(ObjectInfo(item["Key"][len(self.prefix) :], int(item["Size"])))
        found.sort(key=lambda info: info.key)
        return found

    async def delete(self, keys: Iterable[str]) -> None:
        batch = [check_key(key) for key in keys]
        if not batch:
            return
        s3 = await self._s3()
        for start in range(0, len(batch), _DELETE_BATCH):
            chunk = batch[start : start + _DELETE_BATCH]
            with self._translated("delete", chunk[0]):
                response = await s3.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self.prefix + key} for key in chunk], "Quiet": True},
                )
            if errors := response.get("Errors"):
                first = errors[0]
                raise Unavailable(
                    f"object store ({self._where}) failed to delete {len(errors)} objects, "
                    f"e.g. {first.get('Key')!r}: {first.get('Code')}",
                    code=UNAVAILABLE,
                )

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with self._translated("close", ""):
                await stack.aclose()


object_store_drivers: DriverRegistry[ObjectStore] = DriverRegistry[ObjectStore](
    "lake object store", "LIVORA_LAKE_DRIVER"
)


@object_store_drivers.register("local")
def _local_driver(
    *,
    lake_dir: str | os.PathLike[str] | None = None,
    bucket: str | None = None,
    prefix: str = "",
    endpoint_url: str | None = None,
    region: str | None = None,
) -> ObjectStore:
    del bucket, prefix, endpoint_url, region
    if not lake_dir:
        raise ConfigError("LIVORA_LAKE_DIR", "a directory is required when LIVORA_LAKE_DRIVER=local")
    return LocalObjectStore(lake_dir)


@object_store_drivers.register("s3")
def _s3_driver(
    *,
    lake_dir: str | os.PathLike[str] | None = None,
    bucket: str | None = None,
    prefix: str = "",
    endpoint_url: str | None = None,
    region: str | None = None,
) -> ObjectStore:
    del lake_dir
    if not bucket:
        raise ConfigError("LIVORA_LAKE_BUCKET", "a bucket is required when LIVORA_LAKE_DRIVER=s3")
    return S3ObjectStore(bucket, prefix=prefix, endpoint_url=endpoint_url or None, region=region or None)


def open_lake_store(settings: CellSettings) -> ObjectStore:
    """The cell's lake, as its ``LIVORA_LAKE_*`` settings describe it."""
    return object_store_drivers.create(
        settings.lake_driver,
        lake_dir=settings.lake_path,
        bucket=settings.lake_bucket or None,
        prefix=settings.lake_prefix,
        endpoint_url=settings.lake_endpoint_url or None,
        region=settings.lake_region or None,
    )
