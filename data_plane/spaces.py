"""A tenant's space in this cell: its profiles store, its lake prefix and its stream registration.

Provisioning creates, exports and removes spaces through the cell contract (``SPACES_PATH``), over
HTTP with the cell's credential, or in-process in the all-in-one mode. Every call is idempotent, and
removal touches exactly one tenant: its profiles file or schema, ``tenants/{id}/`` in the lake and its
dedup records.
"""

from __future__ import annotations

import hmac
import os
import re
from typing import Any

import msgspec
from litestar import Controller, Request, delete, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody

from data_plane.contract.schemas import SPACES_PATH, Space, SpaceExport, SpaceExportRequest, SpaceRemoval, SpaceSpec
from data_plane.lake.layout import check_tenant_id, tenant_prefix
from data_plane.lake.store import LocalObjectStore, ObjectStore, object_store_drivers
from data_plane.pipeline.dedup import DedupStore, dedup_drivers
from data_plane.pipeline.settings import load_pipeline_settings
from data_plane.profiles.port import ProfileStore, create_profile_store, load_profiles_settings
from data_plane.profiles.tenants import schema_name
from data_plane.settings import CellSettings
from kernel.errors import NotAuthenticated, ValidationFailed

# The marker that says a space exists and records what it was made with (the stream registration).
MARKER = "_space.json"
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


class SpaceRecord(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    stream_partitions: int
    lake_retention_days: int
    stores: list[str]


class TenantSpaces:
    """The cell side of the contract, over the cell's own stores."""

    def __init__(
        self,
        profiles: ProfileStore,
        lake: ObjectStore,
        archive: ObjectStore,
        *,
        archive_root: str,
        dedup: DedupStore | None = None,
    ) -> None:
        self.profiles = profiles
        self.lake = lake
        self.archive = archive
        self.archive_root = archive_root.rstrip("/")
        self.dedup = dedup

    def _check(self, tenant_id: str) -> str:
        try:
            return check_tenant_id(tenant_id)
        except ValueError as exc:
            raise ValidationFailed(str(exc), code="invalid_tenant_id") from None

    def _profiles_location(self, tenant_id: str) -> str:
        path = getattr(self.profiles, "path", None)
        return str(path(tenant_id)) if callable(path) else f"schema:{schema_name(tenant_id)}"

    async def create(self, spec: SpaceSpec) -> Space:
        tenant_id = self._check(spec.tenant_id)
        marker = tenant_prefix(tenant_id) + MARKER
        existed = bool(await self.lake.list(marker))
        await self.profiles.ensure_tenant(tenant_id)
        record = SpaceRecord(
            tenant_id=tenant_id,
            stream_partitions=spec.stream_partitions,
            lake_retention_days=spec.lake_retention_days,
            stores=list(spec.stores),
        )
        # Rewritten every time: an upgrade changes the registration, a repeat writes the same bytes.
        await self.lake.put(marker, msgspec.json.encode(record))
        return Space(
            tenant_id=tenant_id,
            profiles=self._profiles_location(tenant_id),
            lake_prefix=tenant_prefix(tenant_id),
            stream_partitions=spec.stream_partitions,
            created=not existed,
        )

    async def export(self, tenant_id: str, label: str) -> SpaceExport:
        tenant_id = self._check(tenant_id)
        if not _LABEL.fullmatch(label):
            raise ValidationFailed("An export label is letters, digits, - and _.", code="invalid_label")
        base = f"tenants/{tenant_id}/{label}/"
        total = 0
        objects = await self.lake.list(tenant_prefix(tenant_id))
        for info in objects:
            data = await self.lake.get(info.key)
            await self.archive.put(base + "lake/" + info.key[len(tenant_prefix(tenant_id)) :], data)
            total += len(data)
        lines: list[bytes] = []
        cursor: str | None = None
        while True:
            page = await self.profiles.list(tenant_id, limit=200, cursor=cursor)
            lines += [msgspec.json.encode(profile) for profile in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
        dump = b"\n".join(lines) + (b"\n" if lines else b"")
        await self.archive.put(base + "profiles.jsonl", dump)
        total += len(dump)
        return SpaceExport(
            tenant_id=tenant_id,
            location=f"{self.archive_root}/{base}",
            lake_objects=len(objects),
            profiles=len(lines),
            bytes=total,
        )

    async def remove(self, tenant_id: str) -> SpaceRemoval:
        tenant_id = self._check(tenant_id)
        keys = [info.key for info in await self.lake.list(tenant_prefix(tenant_id))]
        # The marker goes last: a removal cut short is still seen, and finished, by the next call.
        marker = tenant_prefix(tenant_id) + MARKER
        await self.lake.delete([key for key in keys if key != marker])
        await self.profiles.drop_tenant(tenant_id)
        if self.dedup is not None:
            await self.dedup.forget_tenant(tenant_id)
        await self.lake.delete([marker])
        return SpaceRemoval(tenant_id=tenant_id, lake_objects=len(keys), removed=bool(keys))

    async def close(self) -> None:
        await self.profiles.close()
        if self.dedup is not None:
            await self.dedup.close()


def _authenticate(request: Request[Any, Any, Any], secret: str) -> None:
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if not secret or scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), secret):
        raise NotAuthenticated(
            "This endpoint is for the control plane and its cell credential.", code="invalid_cell_credential"
        )


class SpaceController(Controller):
    """Internal: the control plane's provisioning creates, exports and removes tenant spaces here."""

    path = SPACES_PATH
    tags = ["Cell internal"]
    include_in_schema = False

    @post("/", operation_id="CreateSpace", status_code=200)
    async def create_space(self, data: JSONBody[SpaceSpec], request: Request[Any, Any, Any], state: State) -> Space:
        """Create (or find) a tenant's space."""
        _authenticate(request, state.cell_secret)
        spaces: TenantSpaces = state.spaces
        return await spaces.create(data)

    @post("/{tenant_id:str}/export", operation_id="ExportSpace", status_code=200)
    async def export_space(
        self,
        tenant_id: FromPath[str],
        data: JSONBody[SpaceExportRequest],
        request: Request[Any, Any, Any],
        state: State,
    ) -> SpaceExport:
        """Archive a tenant's lake objects and profiles."""
        _authenticate(request, state.cell_secret)
        spaces: TenantSpaces = state.spaces
        return await spaces.export(tenant_id, data.label)

    @delete("/{tenant_id:str}", operation_id="RemoveSpace", status_code=200)
    async def remove_space(
        self, tenant_id: FromPath[str], request: Request[Any, Any, Any], state: State
    ) -> SpaceRemoval:
        """Delete exactly a tenant's space."""
        _authenticate(request, state.cell_secret)
        spaces: TenantSpaces = state.spaces
        return await spaces.remove(tenant_id)


def build_spaces(cell: CellSettings) -> TenantSpaces:
    """Spaces over the same stores the cell's pipeline worker writes (see ``create_worker``)."""
    profiles = load_profiles_settings()
    if "LIVORA_PROFILES_SQLITE_ROOT" not in os.environ:
        profiles = msgspec.structs.replace(profiles, profiles_sqlite_root=str(cell.cell_dir))
    pipeline = load_pipeline_settings()
    if "LIVORA_DEDUP_SQLITE_PATH" not in os.environ:
        pipeline = msgspec.structs.replace(pipeline, dedup_sqlite_path=str(cell.cell_dir / "dedup.db"))
    lake = object_store_drivers.create(
        cell.lake_driver,
        lake_dir=cell.lake_path,
        bucket=cell.lake_bucket or None,
        prefix=cell.lake_prefix,
        endpoint_url=cell.lake_endpoint_url or None,
        region=cell.lake_region or None,
    )
    archive_dir = cell.cell_dir / "archives"
    return TenantSpaces(
        create_profile_store(profiles),
        lake,
        LocalObjectStore(archive_dir),
        archive_root=archive_dir.resolve().as_uri(),
        dedup=dedup_drivers.create(
            pipeline.dedup_driver,
            sqlite_path=pipeline.dedup_sqlite_path,
            redis_url=pipeline.redis_url,
            prefix=pipeline.kv_prefix,
        ),
    )
