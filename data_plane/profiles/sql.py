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
)
from data_plane.profiles.models import (
    EVENT_TYPES,
    applied_messages,
    identities,
    merges,
    profile_sessions,
    profiles,
    redirects,
    relinks,
)
from data_plane.profiles.schemas import MergeRecord, Profile, ProfilePage, RelinkRecord
from data_plane.profiles.state import ProfileState, from_us, to_us
from data_plane.profiles.tenants import check_tenant_id
from kernel.errors import Unavailable, ValidationFailed
from kernel.pagination import MAX_LIMIT

T = TypeVar("T")
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


def _state_from_row(row: Any) -> ProfileState:
    return ProfileState(
        profile_id=row.profile_id,
        user_id=row.user_id,
        traits=row.traits,
        groups=row.groups,
        first_seen_us=to_us(row.first_seen),
        last_seen_us=to_us(row.last_seen),
        counts={kind: getattr(row, f"{kind}_count") for kind in EVENT_TYPES},
        last_location=row.last_location,
        last_device=row.last_device,
        last_ip=row.last_ip,
        stamps=row.stamps,
    )


def _row_from_state(state: ProfileState) -> dict[str, Any]:
    assert state.first_seen_us is not None and state.last_seen_us is not None, "a profile always has an event"
    return {
        "profile_id": state.profile_id,
        "user_id": state.user_id,
        "traits": state.traits,
        "groups": state.groups,
        "first_seen": from_us(state.first_seen_us),
        "last_seen": from_us(state.last_seen_us),
        "event_count": state.event_count,
        **{f"{kind}_count": state.counts.get(kind, 0) for kind in EVENT_TYPES},
        "last_location": state.last_location,
        "last_device": state.last_device,
        "last_ip": state.last_ip,
        "stamps": state.stamps,
    }


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
    """A unit of work over one tenant's tables inside one write transaction.

    ``load`` reads, in a few set-based queries, every row the batch's events can need: applied
    message ids, the identities of every identifier the events name, those profiles' user ids and
    aggregates. ``run`` then plans and applies each event in memory, in order, exactly as
    ``IdentityGraph`` would; ``flush`` writes the outcome. Rows the batch did not load but a merge
    must move (other identifiers of a merged-away profile, older redirects) are moved by set-based
    UPDATEs, in merge order, before the loaded rows are written with their final values.
    """

    def __init__(self, tenant_id: str, conn: AsyncConnection) -> None:
        self.tenant_id, self.conn = tenant_id, conn
        self.applied: dict[str, Resolution] = {}
        self.owner: dict[Key, str] = {}
        self.stored_keys: set[Key] = set()
        self.users: dict[str, set[str]] = {}
        self.profiles: dict[str, ProfileState] = {}
        self.stored_profiles: set[str] = set()
        self.dirty_keys: dict[Key, None] = {}
        self.dirty_profiles: dict[str, None] = {}
        self.deleted: builtins.list[str] = []
        self.merges: builtins.list[Merge] = []
        self.relinks: builtins.list[Relink] = []
        self.new_applied: builtins.list[dict[str, Any]] = []

    async def load(self, events: Sequence[Event]) -> None:
        await self._load_applied(events)
        conn = self.conn
        keys: dict[Key, None] = {}
        for event in events:
            if event.message_id not in self.applied:
                keys.update(dict.fromkeys(Identifiers.of(event).keys()))
        i = identities
        for kind in ("user", "anonymous"):
            for chunk in _chunks(identifier for k, identifier in keys if k == kind):
                query = sa.select(i.c.identifier, i.c.profile_id).where(i.c.kind == kind, i.c.identifier.in_(chunk))
                for identifier, profile_id in await conn.execute(query):
                    self.owner[(kind, identifier)] = profile_id
        self.stored_keys = set(self.owner)
        involved = set(self.owner.values())
        for profile_id in involved:
            self.users[profile_id] = set()
        for chunk in _chunks(sorted(involved)):
            query = sa.select(i.c.identifier, i.c.profile_id).where(i.c.kind == "user", i.c.profile_id.in_(chunk))
            for identifier, profile_id in await conn.execute(query):
                self.users[profile_id].add(identifier)
            for row in await conn.execute(sa.select(profiles).where(profiles.c.profile_id.in_(chunk))):
                self.profiles[row.profile_id] = _state_from_row(row)
        self.stored_profiles = set(self.profiles)
        if missing := involved - self.stored_profiles:
            raise RuntimeError(f"identities point at missing profiles {sorted(missing)[:5]} (a damaged store)")

    async def _load_applied(self, events: Sequence[Event]) -> None:
        """Events applied before get back what they got then: their profile, merges and re-links."""
        conn, t = self.conn, applied_messages
        found: dict[str, tuple[str, builtins.list[Merge], builtins.list[Relink]]] = {}
        for chunk in _chunks(dict.fromkeys(e.message_id for e in events)):
            query = sa.select(t.c.message_id, t.c.profile_id).where(t.c.message_id.in_(chunk))
            for message_id, profile_id in await conn.execute(query):
                found[message_id] = (profile_id, [], [])
        for chunk in _chunks(found):
            query = sa.select(merges).where(merges.c.message_id.in_(chunk)).order_by(merges.c.seq)
            for row in await conn.execute(query):
                found[row.message_id][1].append(
                    Merge(
                        tenant_id=self.tenant_id,
                        from_profile=row.from_profile,
                        into_profile=row.into_profile,
                        reason=row.reason,
                        at=row.at,
                        message_id=row.message_id,
                    )
                )
            query = sa.select(relinks).where(relinks.c.message_id.in_(chunk)).order_by(relinks.c.seq)
            for row in await conn.execute(query):
                found[row.message_id][2].append(
                    Relink(
                        tenant_id=self.tenant_id,
                        anonymous_id=row.anonymous_id,
                        from_profile=row.from_profile,
                        to_profile=row.to_profile,
                        at=row.at,
                        message_id=row.message_id,
                    )
                )
        self.applied = {message_id: Resolution(*parts) for message_id, parts in found.items()}

    def run(self, events: Sequence[Event]) -> builtins.list[Resolution]:
        result: builtins.list[Resolution] = []
        for event in events:
            done = self.applied.get(event.message_id)
            if done is not None:
                result.append(done)
                continue
            ids = Identifiers.of(event)
            known = {key: Known(p, frozenset(self.users[p])) for key in ids.keys() if (p := self.owner.get(key))}
            outcome = plan(
                self.tenant_id, ids, known, at=event.timestamp, message_id=event.message_id, alias=event.type == "alias"
            )
            if outcome is None:
                raise ValueError(f"event {event.message_id!r} names nobody: it needs a user id or an anonymous id")
            for change in outcome.changes:
                self._change(change)
            self.profiles[outcome.profile_id].add(event)
            self.dirty_profiles[outcome.profile_id] = None
            resolution = Resolution(
                outcome.profile_id,
                [c for c in outcome.changes if isinstance(c, Merge)],
                [c for c in outcome.changes if isinstance(c, Relink)],
            )
            self.applied[event.message_id] = resolution
            self.new_applied.append(
                {"message_id": event.message_id, "profile_id": outcome.profile_id, "received_at": event.received_at}
            )
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
        """Write the batch. Merges first, in order, as set-based moves of rows the batch never loaded;
        then the loaded identities and profiles with their final values. Profile rows go last."""
        conn, i = self.conn, identities
        for merge in self.merges:
            source, into = merge.from_profile, merge.into_profile
            await conn.execute(sa.update(i).where(i.c.profile_id == source).values(profile_id=into))
            await conn.execute(sa.update(redirects).where(redirects.c.into_profile == source).values(into_profile=into))
            await conn.execute(sa.insert(redirects).values(profile_id=source, into_profile=into))
        if self.merges:
            await conn.execute(
                sa.insert(merges),
                [
                    {
                        "from_profile": m.from_profile,
                        "into_profile": m.into_profile,
                        "reason": m.reason,
                        "at": m.at,
                        "message_id": m.message_id,
                    }
                    for m in self.merges
                ],
            )
        if self.relinks:
            await conn.execute(
                sa.insert(relinks),
                [
                    {
                        "anonymous_id": r.anonymous_id,
                        "from_profile": r.from_profile,
                        "to_profile": r.to_profile,
                        "at": r.at,
                        "message_id": r.message_id,
                    }
                    for r in self.relinks
                ],
            )
        await self._write_identities()
        if self.new_applied:
            await conn.execute(sa.insert(applied_messages), self.new_applied)
        await self._write_profiles()

    async def _write_identities(self) -> None:
        conn, i = self.conn, identities
        moved = [
            {"b_kind": kind, "b_identifier": identifier, "profile_id": self.owner[(kind, identifier)]}
            for kind, identifier in self.dirty_keys
            if (kind, identifier) in self.stored_keys
        ]
        added = [
            {"kind": kind, "identifier": identifier, "profile_id": self.owner[(kind, identifier)]}
            for kind, identifier in self.dirty_keys
            if (kind, identifier) not in self.stored_keys
        ]
        if moved:
            where = (i.c.kind == sa.bindparam("b_kind")) & (i.c.identifier == sa.bindparam("b_identifier"))
            await conn.execute(sa.update(i).where(where), moved)
        if added:
            await conn.execute(sa.insert(i), added)

    async def _write_profiles(self) -> None:
        conn, p = self.conn, profiles
        gone = [profile_id for profile_id in self.deleted if profile_id in self.stored_profiles]
        for chunk in _chunks(gone):
            await conn.execute(sa.delete(p).where(p.c.profile_id.in_(chunk)))
        rows = [_row_from_state(self.profiles[profile_id]) for profile_id in self.dirty_profiles]
        added = [row for row in rows if row["profile_id"] not in self.stored_profiles]
        changed = [
            {**row, "b_profile_id": row["profile_id"]} for row in rows if row["profile_id"] in self.stored_profiles
        ]
        if added:
            await conn.execute(sa.insert(p), added)
        if changed:
            await conn.execute(sa.update(p).where(p.c.profile_id == sa.bindparam("b_profile_id")), changed)


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
        except (DBAPIError, OSError, TimeoutError) as exc:
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
                batch = _Batch(tenant_id, conn)
                await batch.load(events)
                result = batch.run(events)
                await batch.flush()
        return result

    async def save_sessions(self, tenant_id: str, states: Mapping[str, bytes | None]) -> None:
        check_tenant_id(tenant_id)
        if not states:
            return
        t = profile_sessions
        async with self._lock(tenant_id), self._guard(tenant_id, "save sessions"):
            async with self._transaction(tenant_id, write=True) as conn:
                assert conn is not None
                for chunk in _chunks(states):
                    await conn.execute(sa.delete(t).where(t.c.profile_id.in_(chunk)))
                rows = [{"profile_id": p, "state": state} for p, state in states.items() if state is not None]
                if rows:
                    await conn.execute(sa.insert(t), rows)

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
        found: dict[str, bytes] = {}
        async with self._reading(tenant_id, "read sessions") as conn:
            if conn is None:
                return found
            t = profile_sessions
            for chunk in _chunks(profile_ids):
                for profile_id, state in await conn.execute(
                    sa.select(t.c.profile_id, t.c.state).where(t.c.profile_id.in_(chunk))
                ):
                    found[profile_id] = bytes(state)
        return found

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
