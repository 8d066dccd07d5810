"""The profile store port, its settings (``LIVORA_PROFILES_*``) and the driver registry."""

from __future__ import annotations

import builtins
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Protocol

import msgspec

from data_plane.events import Event
from data_plane.pipeline.identity import Resolution
from data_plane.profiles.schemas import MergeRecord, Profile, ProfilePage, RelinkRecord
from kernel.errors import ConfigError
from kernel.registry import DriverRegistry
from kernel.settings import load_settings


class ProfileStore(Protocol):
    """Profiles and the persistent identity graph of many tenants, each in storage of its own.

    Every method takes the tenant explicitly and checks it (``ValueError`` for an id that is not
    safe as a path segment or schema name). Storage failures raise ``kernel.errors.Unavailable``
    (code ``profiles_unavailable``, retryable); no driver exception crosses the port.
    """

    async def apply(self, tenant_id: str, events: Sequence[Event]) -> builtins.list[Resolution]:
        """Resolve each event through the tenant's identity graph and fold it into its profile.

        All or nothing: the whole batch is one transaction. Returns, per event in order, what
        ``IdentityGraph.resolve`` would: the profile id (the pipeline puts it in
        ``context.profile_id``) and the merges and re-links the event caused (sessions follow
        merges). Idempotent per message id: an event already applied (earlier, or earlier in this
        batch) changes nothing and gets back the same resolution as the first time. ``ValueError``
        for an event of another tenant, one naming nobody, or one whose data cannot be stored;
        nothing of the batch is applied then.
        """
        ...

    async def get(self, tenant_id: str, profile_id: str) -> Profile | None:
        """The live profile; a merged-away id resolves to the profile it was merged into."""
        ...

    async def find(
        self, tenant_id: str, *, user_id: str | None = None, anonymous_id: str | None = None
    ) -> Profile | None:
        """The profile an identifier resolves to now; give exactly one of the two."""
        ...

    async def merges(self, tenant_id: str, profile_id: str) -> builtins.list[MergeRecord]:
        """Every merge that built the (live) profile, oldest first."""
        ...

    async def relinks(self, tenant_id: str, profile_id: str) -> builtins.list[RelinkRecord]:
        """Anonymous ids that moved to or from the (live) profile, oldest first."""
        ...

    async def list(self, tenant_id: str, limit: int = 50, cursor: str | None = None) -> ProfilePage:
        """Live profiles ordered by id, ``limit`` (1..200) at a time."""
        ...

    async def load_sessions(self, tenant_id: str, profile_ids: Sequence[str]) -> dict[str, bytes]:
        """The persisted session state of those profiles that have one."""
        ...

    async def save_sessions(self, tenant_id: str, states: Mapping[str, bytes | None]) -> None:
        """Replace the profiles' session state (``None`` deletes it), in one transaction."""
        ...

    async def ensure_tenant(self, tenant_id: str) -> None:
        """Create the tenant's storage now (``apply`` also does it on first use)."""
        ...

    async def drop_tenant(self, tenant_id: str) -> None:
        """Delete exactly this tenant's profiles, graph and history; no-op when it has none."""
        ...

    async def purge_applied(self, tenant_id: str, received_before: dt.datetime) -> int:
        """Forget applied message ids received before the cut-off; returns how many.

        CAUTION: a redelivery of a forgotten message would count again; keep at least the
        pipeline's dedup window (7 days) and the stream's retention.
        """
        ...

    async def close(self) -> None: ...


class ProfilesSettings(msgspec.Struct, kw_only=True, frozen=True):
    """Defaults give embedded SQLite files under ``./var/cell``."""

    # Which driver: sqlite (a file per tenant) or postgres (a schema per tenant).
    profiles_driver: str = "sqlite"
    # sqlite: folder holding tenants/{tenant_id}/profiles.sqlite.
    profiles_sqlite_root: str = "var/cell"
    # postgres: the cell's database, e.g. postgresql://user@host:5432/cell.
    profiles_database_url: str = ""


def load_profiles_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> ProfilesSettings:
    return load_settings(ProfilesSettings, environ, **overrides)


profile_drivers: DriverRegistry[ProfileStore] = DriverRegistry[ProfileStore]("profiles", "LIVORA_PROFILES_DRIVER")

# NOTE: factories import their driver when called (the drivers import this module for the port).


@profile_drivers.register("sqlite")
def _sqlite_driver(settings: ProfilesSettings) -> ProfileStore:
    from data_plane.profiles.sqlite import SqliteProfileStore

    return SqliteProfileStore(settings.profiles_sqlite_root)


@profile_drivers.register("postgres")
def _postgres_driver(settings: ProfilesSettings) -> ProfileStore:
    from data_plane.profiles.postgres import PostgresProfileStore

    if not settings.profiles_database_url:
        raise ConfigError(
            "LIVORA_PROFILES_DATABASE_URL", "a PostgreSQL URL is required when LIVORA_PROFILES_DRIVER=postgres"
        )
    return PostgresProfileStore(settings.profiles_database_url)


def create_profile_store(settings: ProfilesSettings) -> ProfileStore:
    """The store the settings describe; ``ConfigError`` names the variable to fix."""
    return profile_drivers.create(settings.profiles_driver, settings)
