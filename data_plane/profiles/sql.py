"""The SQL profile store both drivers share: one batch is one transaction over the tenant's own tables."""

from __future__ import annotations

import asyncio
import base64
import builtins
import datetime as dt
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from data_plane.events import Event
from data_plane.pipeline.identity import (
    Attach,
    CreateProfile,
    Identifiers,
    Key,
    Known,
    Merge,
    Relink,
    Resolution,
    plan,
    profile_id_for,
)
from data_plane.profiles.bulk import Bulk
from data_plane.profiles.models import EVENT_TYPES, applied_messages, identities, merges, profiles, redirects, relinks
from data_plane.profiles.schemas import MergeRecord, Profile, ProfilePage, RelinkRecord
from data_plane.profiles.state import ProfileState
from data_plane.profiles.tenants import check_tenant_id
from kernel.errors import Unavailable, ValidationFailed
from kernel.pagination import MAX_LIMIT

T = TypeVar("T")
_NOBODY = {None}
UNAVAILABLE = "profiles_unavailable"
# Bound parameters per IN list: far below SQLite's (32,766) and asyncpg's (32,767) limits.
_CHUNK = 500
_encode = msgspec.json.Encoder().encode


def json_serializer(value: Any) -> str:
    return _encode(value).decode()


def json_deserializer(value: str | bytes) -> Any:
    return msgspec.json.decode(value)


def _chunks(values: Iterable[T]) -> Iterator[builtins.list[T]]:
    items = builtins.list(values)
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _storable(event: Event) -> None:
    """Refuse, before anything is written, data one of the drivers cannot store (a poison event)."""
    if event.timestamp.tzinfo is None or event.received_at.tzinfo is None:
        raise ValueError(f"event {event.message_id!r}: timestamps must be timezone-aware")
    ids = (event.message_id, event.user_id, event.anonymous_id, event.previous_id, event.group_id)
    if any(value is not None and "\x00" in value for value in ids):
        raise ValueError(f"event {event.message_id!r}: an id contains a NUL character")
    context = event.context
    parts = [event.traits, context.get("geo"), context.get("user_agent_parsed"), context.get("ip")]
    try:
        encoded = _encode(parts)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"event {event.message_id!r}: traits or context are not JSON: {exc}") from None
    # NOTE: PostgreSQL text and jsonb cannot hold U+0000; refuse it on both drivers alike.
    if b"\\u0000" in encoded:
        raise ValueError(f"event {event.message_id!r}: traits or context contain a NUL character")


# --- rows <-> values ----------------------------------------------------------------------------


def _profile(row: Any, ids: Iterable[tuple[str, str]]) -> Profile:
    users, anons = [], []
    for kind, identifier in ids:
        (users if kind == "user" else anons).append(identifier)
    counts = {kind: count for kind in EVENT_TYPES if (count := getattr(row, f"{kind}_count"))}
    return Profile(
        profile_id=row.profile_id,
        user_id=row.user_id,
        user_ids=sorted(users),
        anonymous_ids=sorted(anons),
        traits=row.traits,
        groups=row.groups,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        event_count=row.event_count,
        counts=counts,
        last_location=row.last_location,
        last_device=row.last_device,
        last_ip=row.last_ip,
    )


def _encode_cursor(profile_id: str) -> str:
    return base64.urlsafe_b64encode(_encode(["p", profile_id])).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        tag, profile_id = msgspec.json.decode(raw, type=tuple[str, str])
        if tag != "p":
            raise ValueError(tag)
        return profile_id
    except (ValueError, TypeError, msgspec.DecodeError):
        raise ValidationFailed(
            "The cursor is not one this API returned; pass next_cursor from the previous page unchanged.",
            code="invalid_cursor",
        ) from None


# --- one batch ----------------------------------------------------------------------------------


class _Batch:
    """A unit of work over one tenant's tables inside one write transaction, set-based per table.

    ``load`` reads in three statements every row the batch's events can need: applied message
    ids, the identities of every identifier the events name with the user ids of the profiles
    reached only through anonymous ids (``users`` holds a non-empty subset of a profile's user ids,
    all ``plan`` needs: see ``Known``), the profiles' aggregates. ``run`` then plans and applies each event in memory,
    in order, exactly as ``IdentityGraph`` would; ``flush`` writes the outcome, one statement per
    table. Rows the batch did not load but a merge must move (other identifiers of a merged-away
    profile, older redirects) are moved first, straight to the profile each merge chain ends in.
    """

    def __init__(self, tenant_id: str, conn: AsyncConnection, bulk: Bulk) -> None:
        self.tenant_id, self.conn, self.bulk = tenant_id, conn, bulk
        self.applied: dict[str, Resolution] = {}
        self.owner: dict[Key, str] = {}
        self.users: dict[str, set[str]] = {}
        self.profiles: dict[str, ProfileState] = {}
        self.stored_profiles: set[str] = set()
        self.dirty_keys: dict[Key, None] = {}
        self.dirty_profiles: dict[str, None] = {}
        self.deleted: builtins.list[str] = []
        self.merges: builtins.list[Merge] = []
        self.relinks: builtins.list[Relink] = []
        self.new_applied: builtins.list[tuple[str, str, dt.datetime]] = []

    async def load(self, events: Sequence[Event]) -> None:
        await self._load_applied(events)
        keys: dict[Key, None] = {}
        for event in events:
            if event.message_id not in self.applied:
                keys.update(dict.fromkeys(Identifiers.of(event).keys()))
        if not keys:
            return
        owners, members = await self.bulk.identities(builtins.list(keys))
        for kind, identifier, profile_id in owners:
            self.owner[(kind, identifier)] = profile_id  # type: ignore[index]
            users = self.users.setdefault(profile_id, set())
            if kind == "user":
                users.add(identifier)
        for identifier, profile_id in members:
            self.users[profile_id].add(identifier)
        if not self.users:
            return
        for state in await self.bulk.profiles(builtins.list(self.users)):
            self.profiles[state.profile_id] = state
        self.stored_profiles = set(self.profiles)
        if missing := self.users.keys() - self.stored_profiles:
            raise RuntimeError(f"identities point at missing profiles {sorted(missing)[:5]} (a damaged store)")

    async def _load_applied(self, events: Sequence[Event]) -> None:
        """Events applied before get back what they got then: their profile, merges and re-links."""
        found = await self.bulk.applied(builtins.list(dict.fromkeys(e.message_id for e in events)))
        if not found:
            return
        parts: dict[str, tuple[str, builtins.list[Merge], builtins.list[Relink]]] = {
            message_id: (profile_id, [], []) for message_id, profile_id in found
        }
        merged, moved = await self.bulk.history(builtins.list(parts))
        for source, into, reason, at, message_id in merged:
            parts[message_id][1].append(  # type: ignore[index]
                Merge(
                    tenant_id=self.tenant_id,
                    from_profile=source,
                    into_profile=into,
                    reason=reason,  # type: ignore[arg-type]
                    at=at,
                    message_id=message_id,
                )
            )
        for anonymous_id, source, target, at, message_id in moved:
            parts[message_id][2].append(  # type: ignore[index]
                Relink(
                    tenant_id=self.tenant_id,
                    anonymous_id=anonymous_id,
                    from_profile=source,
                    to_profile=target,
                    at=at,
                    message_id=message_id,
                )
            )
        self.applied = {message_id: Resolution(*found) for message_id, found in parts.items()}

    def run(self, events: Sequence[Event]) -> builtins.list[Resolution]:
        result: builtins.list[Resolution] = []
        owner, users, profiles = self.owner, self.users, self.profiles
        for event in events:
            done = self.applied.get(event.message_id)
            if done is not None:
                result.append(done)
                continue
            ids = Identifiers.of(event)
            keys = ids.keys()
            found = {owner.get(key) for key in keys}
            # NOTE: two shortcuts for the usual events, each exactly what ``plan`` would return.
            if len(found) == 1 and None not in found:
                # Every identifier is known and on one profile: nothing changes.
                profile_id: str = found.pop()  # type: ignore[assignment]
                resolution = Resolution(profile_id, [], [])
            elif found == _NOBODY and not (event.type == "alias" and ids.user_id and ids.previous_id):
                # A new person: a profile named after the user id (else the anonymous id) holding both.
                user, anon = ids.user_id, ids.anonymous_id
                profile_id = profile_id_for(self.tenant_id, "user" if user else "anonymous", user or anon)  # type: ignore[arg-type]
                profiles[profile_id] = ProfileState(profile_id)
                users[profile_id] = {user} if user else set()
                for key in keys[:2] if user and anon else keys[:1]:
                    owner[key] = profile_id
                    self.dirty_keys[key] = None
                resolution = Resolution(profile_id, [], [])
            else:
                known = {key: Known(p, frozenset(users[p])) for key in keys if (p := owner.get(key))}
                outcome = plan(
                    self.tenant_id,
                    ids,
                    known,
                    at=event.timestamp,
                    message_id=event.message_id,
                    alias=event.type == "alias",
                )
                if outcome is None:
                    raise ValueError(f"event {event.message_id!r} names nobody: it needs a user id or an anonymous id")
                for change in outcome.changes:
                    self._change(change)
                profile_id = outcome.profile_id
                resolution = Resolution(
                    profile_id,
                    [c for c in outcome.changes if isinstance(c, Merge)],
                    [c for c in outcome.changes if isinstance(c, Relink)],
                )
            profiles[profile_id].add(event)
            self.dirty_profiles[profile_id] = None
            self.applied[event.message_id] = resolution
            self.new_applied.append((event.message_id, profile_id, event.received_at))
            result.append(resolution)
        return result

    def _change(self, change: CreateProfile | Attach | Merge | Relink) -> None:
        if isinstance(change, CreateProfile):
            self.profiles[change.profile_id] = ProfileState(change.profile_id)
            self.users[change.profile_id] = set()
            self.dirty_profiles[change.profile_id] = None
        elif isinstance(change, Attach):
            key = (change.kind, change.identifier)
            old = self.owner.get(key)
            if old is not None and change.kind == "user":
                self.users[old].discard(change.identifier)
            self.owner[key] = change.profile_id
            self.dirty_keys[key] = None
            if change.kind == "user":
                self.users[change.profile_id].add(change.identifier)
        elif isinstance(change, Merge):
            source, into = change.from_profile, change.into_profile
            for key, profile_id in self.owner.items():
                if profile_id == source:
                    self.owner[key] = into
            self.users[into] |= self.users.pop(source)
            self.profiles[into].fold(self.profiles.pop(source))
            self.dirty_profiles.pop(source, None)
            self.dirty_profiles[into] = None
            self.deleted.append(source)
            self.merges.append(change)
        else:
            self.relinks.append(change)  # the Attach that follows moves the anonymous id

    async def flush(self) -> None:
        """Write the batch: merges first, as set-based moves of rows the batch never loaded, then
        the history, the loaded identities with their final values, applied messages; profile rows last."""
        bulk = self.bulk
        if self.merges:
            into = {m.from_profile: m.into_profile for m in self.merges}
            moves = []
            for source, target in into.items():
                while target in into:  # merged again later in the batch: go to where the chain ends
                    target = into[target]
                moves.append((source, target))
            await bulk.move(moves)
            await bulk.insert_merges(
                [(m.from_profile, m.into_profile, m.reason, m.at, m.message_id) for m in self.merges]
            )
        if self.relinks:
            await bulk.insert_relinks(
                [(r.anonymous_id, r.from_profile, r.to_profile, r.at, r.message_id) for r in self.relinks]
            )
        await self._write_identities()
        if self.new_applied:
            await bulk.insert_applied(self.new_applied)
        await self._write_profiles()

    async def _write_identities(self) -> None:
        if self.dirty_keys:
            owner = self.owner
            await self.bulk.upsert_identities(
                [(kind, identifier, owner[(kind, identifier)]) for kind, identifier in self.dirty_keys]
            )

    async def _write_profiles(self) -> None:
        if gone := [profile_id for profile_id in self.deleted if profile_id in self.stored_profiles]:
            await self.bulk.delete_profiles(gone)
        if self.dirty_profiles:
            await self.bulk.upsert_profiles([self.profiles[profile_id] for profile_id in self.dirty_profiles])


# --- the store ----------------------------------------------------------------------------------


class SqlProfileStore:
    """What both drivers share: the tables, the queries and the batch logic.

    A driver says where a tenant's tables are (``_transaction``) and how its storage is created and
    dropped. Writes of one tenant are serialised: in-process by an ``asyncio.Lock`` per tenant,
    across processes by the driver (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL table lock).
    """

    driver = "sql"

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    # --- driver hooks ---------------------------------------------------------------------------

    def _transaction(self, tenant_id: str, *, write: bool) -> AbstractAsyncContextManager[AsyncConnection | None]:
        """A connection in a transaction on the tenant's tables; ``None`` when a read finds no storage.

        A write transaction creates the storage if needed and excludes other writers of the tenant.
        """
        raise NotImplementedError

    def _forget(self, tenant_id: str) -> None:
        """Drop cached knowledge of the tenant's storage after an error (another process may have dropped it)."""

    async def _bulk(self, tenant_id: str, conn: AsyncConnection) -> Bulk:
        """The set-based statements of the driver's dialect, on ``conn``'s own driver connection."""
        raise NotImplementedError

    # The driver's own exceptions (statements of ``_bulk`` do not pass through SQLAlchemy).
    _driver_errors: tuple[type[BaseException], ...] = ()

    # --- helpers --------------------------------------------------------------------------------

    def _lock(self, tenant_id: str) -> asyncio.Lock:
        lock = self._locks.get(tenant_id)
        if lock is None:
            lock = self._locks[tenant_id] = asyncio.Lock()
        return lock

    @asynccontextmanager
    async def _guard(self, tenant_id: str, operation: str) -> AsyncIterator[None]:
        """Translate the driver's connection and I/O failures into ``Unavailable`` (retryable)."""
        try:
            yield
        except (DBAPIError, OSError, TimeoutError, *self._driver_errors) as exc:
            # NOTE: data a driver cannot store is refused before any write (``_storable``), so what
            # reaches here is the database being down, locked too long or changed under us (a schema
            # dropped by another process): all worth retrying, after re-checking the storage.
            self._forget(tenant_id)
            raise Unavailable(
                f"profile store ({self.driver}) failed to {operation} for tenant {tenant_id}: {exc}",
                code=UNAVAILABLE,
            ) from exc

    @asynccontextmanager
    async def _reading(self, tenant_id: str, operation: str) -> AsyncIterator[AsyncConnection | None]:
        check_tenant_id(tenant_id)
        async with self._guard(tenant_id, operation), self._transaction(tenant_id, write=False) as conn:
            yield conn

    # --- writes ---------------------------------------------------------------------------------

    async def apply(self, tenant_id: str, events: Sequence[Event]) -> builtins.list[Resolution]:
        check_tenant_id(tenant_id)
        for event in events:
            if event.tenant_id != tenant_id:
                # Fail closed: a batch never writes one tenant's event into another's storage.
                raise ValueError(f"event {event.message_id!r} belongs to tenant {event.tenant_id!r}, not {tenant_id!r}")
            _storable(event)
        if not events:
            return []
        async with self._lock(tenant_id), self._guard(tenant_id, "apply events"):
            async with self._transaction(tenant_id, write=True) as conn:
                assert conn is not None
                batch = _Batch(tenant_id, conn, await self._bulk(tenant_id, conn))
                await batch.load(events)
                result = batch.run(events)
                await batch.flush()
        return result

    async def save_sessions(self, tenant_id: str, states: Mapping[str, bytes | None]) -> None:
        check_tenant_id(tenant_id)
        if not states:
            return
        async with self._lock(tenant_id), self._guard(tenant_id, "save sessions"):
            async with self._transaction(tenant_id, write=True) as conn:
                assert conn is not None
                await (await self._bulk(tenant_id, conn)).save_sessions(states)

    async def purge_applied(self, tenant_id: str, received_before: dt.datetime) -> int:
        async with self._reading(tenant_id, "purge applied messages") as probe:
            if probe is None:
                return 0
        async with self._lock(tenant_id), self._guard(tenant_id, "purge applied messages"):
            async with self._transaction(tenant_id, write=True) as conn:
                assert conn is not None
                t = applied_messages
                result = await conn.execute(sa.delete(t).where(t.c.received_at < received_before))
                return int(result.rowcount or 0)

    # --- reads ----------------------------------------------------------------------------------

    @staticmethod
    async def _live(conn: AsyncConnection, profile_id: str) -> str:
        into = await conn.scalar(sa.select(redirects.c.into_profile).where(redirects.c.profile_id == profile_id))
        return into or profile_id

    @staticmethod
    async def _profiles(conn: AsyncConnection, where: Any) -> builtins.list[Profile]:
        rows = (await conn.execute(sa.select(profiles).where(where).order_by(profiles.c.profile_id))).all()
        if not rows:
            return []
        i = identities
        ids: dict[str, builtins.list[tuple[str, str]]] = {row.profile_id: [] for row in rows}
        for chunk in _chunks(ids):
            query = sa.select(i.c.profile_id, i.c.kind, i.c.identifier).where(i.c.profile_id.in_(chunk))
            for profile_id, kind, identifier in await conn.execute(query):
                ids[profile_id].append((kind, identifier))
        return [_profile(row, ids[row.profile_id]) for row in rows]

    async def load_sessions(self, tenant_id: str, profile_ids: Sequence[str]) -> dict[str, bytes]:
        if not profile_ids:
            return {}
        async with self._reading(tenant_id, "read sessions") as conn:
            if conn is None:
                return {}
            return dict(await (await self._bulk(tenant_id, conn)).load_sessions(profile_ids))

    async def get(self, tenant_id: str, profile_id: str) -> Profile | None:
        async with self._reading(tenant_id, "read a profile") as conn:
            if conn is None:
                return None
            live = await self._live(conn, profile_id)
            found = await self._profiles(conn, profiles.c.profile_id == live)
            return found[0] if found else None

    async def find(
        self, tenant_id: str, *, user_id: str | None = None, anonymous_id: str | None = None
    ) -> Profile | None:
        if (user_id is None) == (anonymous_id is None):
            raise ValueError("find() takes exactly one of user_id and anonymous_id")
        kind, identifier = ("user", user_id) if user_id is not None else ("anonymous", anonymous_id)
        async with self._reading(tenant_id, "find a profile") as conn:
            if conn is None:
                return None
            i = identities
            owner = sa.select(i.c.profile_id).where(i.c.kind == kind, i.c.identifier == identifier).scalar_subquery()
            found = await self._profiles(conn, profiles.c.profile_id == owner)
            return found[0] if found else None

    @staticmethod
    def _in_lineage(column: Any, live: str) -> Any:
        """``column`` names the live profile or one merged into it (redirects are kept flat)."""
        merged = sa.select(redirects.c.profile_id).where(redirects.c.into_profile == live)
        return (column == live) | column.in_(merged)

    async def merges(self, tenant_id: str, profile_id: str) -> builtins.list[MergeRecord]:
        async with self._reading(tenant_id, "read merge history") as conn:
            if conn is None:
                return []
            live = await self._live(conn, profile_id)
            m = merges
            query = sa.select(m).where(self._in_lineage(m.c.into_profile, live)).order_by(m.c.seq)
            return [
                MergeRecord(
                    from_profile=row.from_profile,
                    into_profile=row.into_profile,
                    reason=row.reason,
                    at=row.at,
                    message_id=row.message_id,
                )
                for row in await conn.execute(query)
            ]

    async def relinks(self, tenant_id: str, profile_id: str) -> builtins.list[RelinkRecord]:
        async with self._reading(tenant_id, "read re-link history") as conn:
            if conn is None:
                return []
            live = await self._live(conn, profile_id)
            r = relinks
            involved = self._in_lineage(r.c.from_profile, live) | self._in_lineage(r.c.to_profile, live)
            query = sa.select(r).where(involved).order_by(r.c.seq)
            return [
                RelinkRecord(
                    anonymous_id=row.anonymous_id,
                    from_profile=row.from_profile,
                    to_profile=row.to_profile,
                    at=row.at,
                    message_id=row.message_id,
                )
                for row in await conn.execute(query)
            ]

    async def list(self, tenant_id: str, limit: int = 50, cursor: str | None = None) -> ProfilePage:
        if not 1 <= limit <= MAX_LIMIT:
            raise ValidationFailed(f"limit must be between 1 and {MAX_LIMIT}", code="invalid_limit")
        after = _decode_cursor(cursor) if cursor else None
        async with self._reading(tenant_id, "list profiles") as conn:
            if conn is None:
                return ProfilePage(items=[])
            p = profiles
            page_ids = sa.select(p.c.profile_id).order_by(p.c.profile_id).limit(limit + 1)
            if after is not None:
                page_ids = page_ids.where(p.c.profile_id > after)
            found = await self._profiles(conn, p.c.profile_id.in_(page_ids.scalar_subquery()))
        if len(found) > limit:
            return ProfilePage(items=found[:limit], next_cursor=_encode_cursor(found[limit - 1].profile_id))
        return ProfilePage(items=found)
