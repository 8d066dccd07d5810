"""Set-based statements per dialect on the driver's own connection: a batch costs a statement per table, not per row.

NOTE: these run on the raw aiosqlite / asyncpg connection of the SQLAlchemy connection that holds
the batch's transaction, so they are inside it (SQLite ``BEGIN IMMEDIATE``; PostgreSQL after the
table lock). They bypass SQLAlchemy's per-row parameter processing, which cost more than the
database did, so they store exactly what SQLAlchemy's column types would and read it back alike:
SQLite times as ``YYYY-MM-DD HH:MM:SS.ffffff`` UTC text, JSON as text (``NULL`` for ``None``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import msgspec

from data_plane.profiles.models import EVENT_TYPES
from data_plane.profiles.state import ProfileState, from_us, to_us

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode
_COUNTS = tuple(f"{kind}_count" for kind in EVENT_TYPES)
PROFILE_COLUMNS = (
    "profile_id",
    "user_id",
    "traits",
    "groups",
    "first_seen",
    "last_seen",
    "event_count",
    *_COUNTS,
    "last_location",
    "last_device",
    "last_ip",
    "stamps",
)
_JSON_COLUMNS = frozenset({"traits", "groups", "last_location", "last_device", "stamps"})

# (kind, identifier, profile_id): an identity; (message_id, profile_id, received_at): an applied message.
IdentityRow = tuple[str, str, str]
AppliedRow = tuple[str, str, dt.datetime]
# (from_profile, into_profile, reason, at, message_id) and (anonymous_id, from, to, at, message_id).
MergeRow = tuple[str, str, str, dt.datetime, str | None]
RelinkRow = tuple[str, str, str, dt.datetime, str | None]


def _json(value: Any) -> str | None:
    return None if value is None else _encode(value).decode()


def _loads(value: str | bytes | None) -> Any:
    return None if value is None else _decode(value)


def _state(row: Sequence[Any], first_seen_us: int, last_seen_us: int) -> ProfileState:
    """A state from a row selected as ``profile_id, user_id, traits, groups, <times>, counts..., last_*, stamps``."""
    counts = dict(zip(EVENT_TYPES, row[6 : 6 + len(EVENT_TYPES)], strict=True))
    tail = 6 + len(EVENT_TYPES)
    return ProfileState(
        profile_id=row[0],
        user_id=row[1],
        traits=_decode(row[2]),
        groups=_decode(row[3]),
        first_seen_us=first_seen_us,
        last_seen_us=last_seen_us,
        counts=counts,
        last_location=_loads(row[tail]),
        last_device=_loads(row[tail + 1]),
        last_ip=row[tail + 2],
        stamps=_decode(row[tail + 3]),
    )


class Bulk(Protocol):
    """What one batch reads and writes, each call one statement (or one executemany) per table."""

    async def applied(self, message_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(message id, profile id) of those already applied."""
        ...

    async def history(self, message_ids: Sequence[str]) -> tuple[list[MergeRow], list[RelinkRow]]:
        """The merges and re-links those messages caused, each oldest first."""
        ...

    async def identities(self, keys: Sequence[tuple[str, str]]) -> tuple[list[IdentityRow], list[tuple[str, str]]]:
        """The stored keys among ``keys`` with their profile, and (user id, profile id) of every user
        identity of those profiles reached only through anonymous keys: one statement.

        NOTE: the identity rules only ask whether a profile has a user id (see ``identity.Known``); a
        profile reached through a user key has one, so its other user ids are not read.
        """
        ...

    async def profiles(self, profile_ids: Sequence[str]) -> list[ProfileState]: ...

    async def move(self, moves: Sequence[tuple[str, str]]) -> None:
        """Merged-away profile -> live profile: re-point its identities and older redirects, add its redirect."""
        ...

    async def insert_merges(self, rows: Sequence[MergeRow]) -> None: ...

    async def insert_relinks(self, rows: Sequence[RelinkRow]) -> None: ...

    async def upsert_identities(self, rows: Sequence[IdentityRow]) -> None: ...

    async def insert_applied(self, rows: Sequence[AppliedRow]) -> None: ...

    async def delete_profiles(self, profile_ids: Sequence[str]) -> None: ...

    async def upsert_profiles(self, states: Sequence[ProfileState]) -> None: ...

    async def load_sessions(self, profile_ids: Sequence[str]) -> list[tuple[str, bytes]]: ...

    async def save_sessions(self, states: Mapping[str, bytes | None]) -> None:
        """Replace each profile's session state; ``None`` deletes it."""
        ...


# Profiles the batch reached only through anonymous ids: whether they have a user id is not known yet.
_ANONYMOUS_ONLY = (
    "SELECT profile_id FROM owner WHERE kind = 'anonymous' EXCEPT SELECT profile_id FROM owner WHERE kind = 'user'"
)


def _upsert_columns() -> str:
    return ", ".join(f"{c} = excluded.{c}" for c in PROFILE_COLUMNS[1:])


# --- SQLite -------------------------------------------------------------------------------------


_NAIVE_EPOCH = dt.datetime(1970, 1, 1)
_MICROSECOND = dt.timedelta(microseconds=1)


def _sqlite_time(moment: dt.datetime) -> str:
    """SQLAlchemy's SQLite DATETIME text (naive UTC), so the ORM-side reads parse what this side wrote."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    if moment.tzinfo is not dt.UTC:
        moment = moment.astimezone(dt.UTC)
    return moment.replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_us(text: str) -> int:
    return (dt.datetime.fromisoformat(text) - _NAIVE_EPOCH) // _MICROSECOND


def _sqlite_from_us(value: int) -> str:
    return (_NAIVE_EPOCH + dt.timedelta(microseconds=value)).isoformat(" ", "microseconds")


_IN = "IN (SELECT value FROM json_each(?))"
_SQLITE_PROFILE_SELECT = ", ".join(c for c in PROFILE_COLUMNS if c != "event_count")


# The stored keys among the user ids (?1) and anonymous ids (?2), then the user ids of profiles
# reached only through anonymous ids. INDEXED BY: on ``kind = 'user'`` alone the planner would
# walk every user of the tenant.
SQLITE_IDENTITIES = (
    "WITH owner AS ("
    f" SELECT kind, identifier, profile_id FROM identities WHERE kind = 'user' AND identifier {_IN}"
    " UNION ALL"
    f" SELECT kind, identifier, profile_id FROM identities WHERE kind = 'anonymous' AND identifier {_IN})"
    " SELECT 1, kind, identifier, profile_id FROM owner"
    " UNION ALL"
    " SELECT 0, kind, identifier, profile_id FROM identities INDEXED BY ix_identities_profile_id"
    f" WHERE profile_id IN ({_ANONYMOUS_ONLY}) AND kind = 'user'"
)


class SqliteBulk:
    """``json_each`` turns one JSON array parameter into a set, so no IN list is ever chunked."""

    def __init__(self, conn: Any) -> None:
        self.db = conn  # an aiosqlite.Connection
        # The time texts read this transaction, so an unchanged first/last seen is not formatted again.
        self._texts: dict[int, str] = {}

    async def _fetch(self, sql: str, *params: Any) -> list[Any]:
        return list(await self.db.execute_fetchall(sql, params))

    async def applied(self, message_ids: Sequence[str]) -> list[tuple[str, str]]:
        sql = f"SELECT message_id, profile_id FROM applied_messages WHERE message_id {_IN}"
        return await self._fetch(sql, _json(message_ids))

    async def history(self, message_ids: Sequence[str]) -> tuple[list[MergeRow], list[RelinkRow]]:
        ids = _json(message_ids)
        found = await self._fetch(
            f"SELECT from_profile, into_profile, reason, at, message_id FROM merges WHERE message_id {_IN}"
            " ORDER BY seq",
            ids,
        )
        moved = await self._fetch(
            f"SELECT anonymous_id, from_profile, to_profile, at, message_id FROM relinks WHERE message_id {_IN} "
            "ORDER BY seq",
            ids,
        )
        return (
            [(a, b, c, from_us(_sqlite_us(at)), m) for a, b, c, at, m in found],
            [(a, b, c, from_us(_sqlite_us(at)), m) for a, b, c, at, m in moved],
        )

    async def identities(self, keys: Sequence[tuple[str, str]]) -> tuple[list[IdentityRow], list[tuple[str, str]]]:
        users = [identifier for kind, identifier in keys if kind == "user"]
        anons = [identifier for kind, identifier in keys if kind == "anonymous"]
        rows = await self._fetch(SQLITE_IDENTITIES, _json(users), _json(anons))
        owners = [(kind, identifier, profile_id) for mine, kind, identifier, profile_id in rows if mine]
        members = [(identifier, profile_id) for mine, _, identifier, profile_id in rows if not mine]
        return owners, members

    async def profiles(self, profile_ids: Sequence[str]) -> list[ProfileState]:
        rows = await self._fetch(
            f"SELECT {_SQLITE_PROFILE_SELECT} FROM profiles WHERE profile_id {_IN}", _json(profile_ids)
        )
        texts = self._texts
        states = []
        for row in rows:
            first, last = _sqlite_us(row[4]), _sqlite_us(row[5])
            texts[first], texts[last] = row[4], row[5]
            states.append(_state(row, first, last))
        return states

    def _time(self, value: int) -> str:
        text = self._texts.get(value)
        if text is None:
            text = self._texts[value] = _sqlite_from_us(value)
        return text

    async def move(self, moves: Sequence[tuple[str, str]]) -> None:
        pairs = [(into, source) for source, into in moves]
        await self.db.executemany("UPDATE identities SET profile_id = ? WHERE profile_id = ?", pairs)
        await self.db.executemany("UPDATE redirects SET into_profile = ? WHERE into_profile = ?", pairs)
        await self.db.executemany("INSERT INTO redirects (profile_id, into_profile) VALUES (?, ?)", moves)

    async def insert_merges(self, rows: Sequence[MergeRow]) -> None:
        await self.db.executemany(
            "INSERT INTO merges (from_profile, into_profile, reason, at, message_id) VALUES (?, ?, ?, ?, ?)",
            [(a, b, c, _sqlite_time(at), m) for a, b, c, at, m in rows],
        )

    async def insert_relinks(self, rows: Sequence[RelinkRow]) -> None:
        await self.db.executemany(
            "INSERT INTO relinks (anonymous_id, from_profile, to_profile, at, message_id) VALUES (?, ?, ?, ?, ?)",
            [(a, b, c, _sqlite_time(at), m) for a, b, c, at, m in rows],
        )

    async def upsert_identities(self, rows: Sequence[IdentityRow]) -> None:
        await self.db.executemany(
            "INSERT INTO identities (kind, identifier, profile_id) VALUES (?, ?, ?)"
            " ON CONFLICT (kind, identifier) DO UPDATE SET profile_id = excluded.profile_id",
            rows,
        )

    async def insert_applied(self, rows: Sequence[AppliedRow]) -> None:
        await self.db.executemany(
            "INSERT INTO applied_messages (message_id, profile_id, received_at) VALUES (?, ?, ?)",
            [(m, p, _sqlite_time(at)) for m, p, at in rows],
        )

    async def delete_profiles(self, profile_ids: Sequence[str]) -> None:
        await self.db.execute(f"DELETE FROM profiles WHERE profile_id {_IN}", (_json(profile_ids),))

    async def upsert_profiles(self, states: Sequence[ProfileState]) -> None:
        marks = ", ".join("?" * len(PROFILE_COLUMNS))
        await self.db.executemany(
            f"INSERT INTO profiles ({', '.join(PROFILE_COLUMNS)}) VALUES ({marks})"
            f" ON CONFLICT (profile_id) DO UPDATE SET {_upsert_columns()}",
            [
                (
                    s.profile_id,
                    s.user_id,
                    _encode(s.traits).decode(),
                    _encode(s.groups).decode(),
                    self._time(s.first_seen_us),  # type: ignore[arg-type]
                    self._time(s.last_seen_us),  # type: ignore[arg-type]
                    s.event_count,
                    *[s.counts.get(kind, 0) for kind in EVENT_TYPES],
                    _json(s.last_location),
                    _json(s.last_device),
                    s.last_ip,
                    _encode(s.stamps).decode(),
                )
                for s in states
            ],
        )

    async def load_sessions(self, profile_ids: Sequence[str]) -> list[tuple[str, bytes]]:
        sql = f"SELECT profile_id, state FROM profile_sessions WHERE profile_id {_IN}"
        return [(p, bytes(state)) for p, state in await self._fetch(sql, _json(profile_ids))]

    async def save_sessions(self, states: Mapping[str, bytes | None]) -> None:
        gone = [p for p, state in states.items() if state is None]
        if gone:
            await self.db.execute(f"DELETE FROM profile_sessions WHERE profile_id {_IN}", (_json(gone),))
        kept = [(p, state) for p, state in states.items() if state is not None]
        if kept:
            await self.db.executemany(
                "INSERT INTO profile_sessions (profile_id, state) VALUES (?, ?)"
                " ON CONFLICT (profile_id) DO UPDATE SET state = excluded.state",
                kept,
            )


# --- PostgreSQL ---------------------------------------------------------------------------------

_PG_TYPES = {
    "first_seen": "timestamptz",
    "last_seen": "timestamptz",
    "event_count": "bigint",
    **dict.fromkeys(_COUNTS, "bigint"),
    **dict.fromkeys(_JSON_COLUMNS, "jsonb"),
}


# Staging tables of the connection's session (temporary, emptied at every commit): a batch's rows
# go in by binary COPY, then one INSERT … SELECT … ON CONFLICT moves them into the tenant's table.
# NOTE: COPY costs the least CPU, client and server together: ``unnest`` arrays have asyncpg inspect
# every element in Python, ``json_to_recordset`` has the server parse every row's JSON twice
# (measured for 1,000 profile rows: about 1.3 and 1.9 times COPY's). JSON columns are staged as text
# and cast on the move, so the staging tables depend on no codec. They are declared (IF NOT EXISTS)
# in each write transaction, so a rolled-back first use or a pooler that resets sessions is harmless.
_STAGE_TYPES = {**_PG_TYPES, **dict.fromkeys(_JSON_COLUMNS, "text"), "received_at": "timestamptz"}
_STAGED = {
    "profiles": PROFILE_COLUMNS,
    "identities": ("kind", "identifier", "profile_id"),
    "applied_messages": ("message_id", "profile_id", "received_at"),
}


def _stage_ddl(table: str, columns: Sequence[str]) -> str:
    shape = ", ".join(f"{c} {_STAGE_TYPES.get(c, 'text')}" for c in columns)
    return f"CREATE TEMPORARY TABLE IF NOT EXISTS livora_stage_{table} ({shape}) ON COMMIT DELETE ROWS;"


_STAGE_DDL = "".join(_stage_ddl(table, columns) for table, columns in _STAGED.items())


class PostgresBulk:
    """Reads bind id sets as arrays (``= ANY``); writes COPY into a staging table and move the rows with
    one statement; history rows (rare) are ``unnest``-ed arrays. Nothing depends on the batch size.

    Table names are qualified with the tenant's schema (checked by ``tenants.schema_name``, quoted
    here): ``schema_translate_map`` does not reach statements sent on the driver's connection.
    """

    def __init__(self, conn: Any, schema: str) -> None:
        self.db = conn  # an asyncpg.Connection
        quoted = '"' + schema.replace('"', '""') + '"'
        self.t = {
            name: f"{quoted}.{name}"
            for name in (
                "applied_messages",
                "identities",
                "merges",
                "relinks",
                "redirects",
                "profiles",
                "profile_sessions",
            )
        }
        columns = ", ".join(PROFILE_COLUMNS)
        values = ", ".join(f"{c}::jsonb" if c in _JSON_COLUMNS else c for c in PROFILE_COLUMNS)
        self._upsert_profiles = (
            f"INSERT INTO {self.t['profiles']} ({columns}) SELECT {values} FROM livora_stage_profiles"
            f" ON CONFLICT (profile_id) DO UPDATE SET {_upsert_columns()}"
        )
        self._staged: set[str] = set()
        selected = ", ".join(f"{c}::text" if c in _JSON_COLUMNS else c for c in PROFILE_COLUMNS if c != "event_count")
        self._select_profiles = f"SELECT {selected} FROM {self.t['profiles']} WHERE profile_id = ANY($1::text[])"
        i = self.t["identities"]
        # The stored keys among (kind $1, identifier $2), then the user ids of profiles reached only
        # through anonymous ids.
        # NOTE: one index probe per key, whatever the statistics say: each LATERAL subquery is fenced
        # (LIMIT / OFFSET) so it cannot be flattened into a join. asyncpg prepares statements and
        # PostgreSQL plans them generically after five runs; without the fence that plan walked
        # every user of the tenant (kind = 'user' alone) or hashed the whole table, 5 to 30 times
        # the cost of the probes. The members' subquery filters on profile_id only, so only its
        # index can serve it.
        self.select_identities = (
            "WITH owner AS ("
            " SELECT o.kind, o.identifier, o.profile_id FROM unnest($1::text[], $2::text[]) AS k(kind, identifier),"
            f" LATERAL (SELECT kind, identifier, profile_id FROM {i}"
            " WHERE kind = k.kind AND identifier = k.identifier LIMIT 1) AS o)"
            " SELECT true, kind, identifier, profile_id FROM owner"
            " UNION ALL"
            f" SELECT false, m.kind, m.identifier, m.profile_id FROM ({_ANONYMOUS_ONLY}) AS a,"
            f" LATERAL (SELECT kind, identifier, profile_id FROM {i} WHERE profile_id = a.profile_id OFFSET 0) AS m"
            " WHERE m.kind = 'user'"
        )

    async def applied(self, message_ids: Sequence[str]) -> list[tuple[str, str]]:
        rows = await self.db.fetch(
            f"SELECT message_id, profile_id FROM {self.t['applied_messages']} WHERE message_id = ANY($1::text[])",
            list(message_ids),
        )
        return [(row[0], row[1]) for row in rows]

    async def history(self, message_ids: Sequence[str]) -> tuple[list[MergeRow], list[RelinkRow]]:
        ids = list(message_ids)
        found = await self.db.fetch(
            f"SELECT from_profile, into_profile, reason, at, message_id FROM {self.t['merges']}"
            " WHERE message_id = ANY($1::text[]) ORDER BY seq",
            ids,
        )
        moved = await self.db.fetch(
            f"SELECT anonymous_id, from_profile, to_profile, at, message_id FROM {self.t['relinks']}"
            " WHERE message_id = ANY($1::text[]) ORDER BY seq",
            ids,
        )
        return [tuple(row) for row in found], [tuple(row) for row in moved]  # type: ignore[misc]

    async def identities(self, keys: Sequence[tuple[str, str]]) -> tuple[list[IdentityRow], list[tuple[str, str]]]:
        rows = await self.db.fetch(
            self.select_identities, [kind for kind, _ in keys], [identifier for _, identifier in keys]
        )
        owners = [(row[1], row[2], row[3]) for row in rows if row[0]]
        members = [(row[2], row[3]) for row in rows if not row[0]]
        return owners, members

    async def profiles(self, profile_ids: Sequence[str]) -> list[ProfileState]:
        rows = await self.db.fetch(self._select_profiles, list(profile_ids))
        return [_state(row, to_us(row[4]), to_us(row[5])) for row in rows]

    async def move(self, moves: Sequence[tuple[str, str]]) -> None:
        sources, targets = [s for s, _ in moves], [t for _, t in moves]
        pairs = "unnest($1::text[], $2::text[]) AS m(source, target)"
        await self.db.execute(
            f"UPDATE {self.t['identities']} AS i SET profile_id = m.target FROM {pairs} WHERE i.profile_id = m.source",
            sources,
            targets,
        )
        await self.db.execute(
            f"UPDATE {self.t['redirects']} AS r SET into_profile = m.target FROM {pairs}"
            " WHERE r.into_profile = m.source",
            sources,
            targets,
        )
        await self.db.execute(
            f"INSERT INTO {self.t['redirects']} (profile_id, into_profile)"
            " SELECT * FROM unnest($1::text[], $2::text[])",
            sources,
            targets,
        )

    async def _insert_history(self, table: str, columns: str, rows: Sequence[tuple[Any, ...]]) -> None:
        # ORDER BY the array position: ``seq`` must follow the batch's order of events.
        await self.db.execute(
            f"INSERT INTO {self.t[table]} ({columns}) SELECT a, b, c, d, e FROM"
            " unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])"
            " WITH ORDINALITY AS u(a, b, c, d, e, n) ORDER BY n",
            *(list(column) for column in zip(*rows, strict=True)),
        )

    async def insert_merges(self, rows: Sequence[MergeRow]) -> None:
        await self._insert_history("merges", "from_profile, into_profile, reason, at, message_id", rows)

    async def insert_relinks(self, rows: Sequence[RelinkRow]) -> None:
        await self._insert_history("relinks", "anonymous_id, from_profile, to_profile, at, message_id", rows)

    async def _stage(self, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
        # CAUTION: the staging table empties only at commit, so a second use in one transaction
        # would move the first rows again.
        if table in self._staged:
            raise RuntimeError(f"livora_stage_{table} is already used in this transaction")
        if not self._staged:
            await self.db.execute(_STAGE_DDL)
        self._staged.add(table)
        await self.db.copy_records_to_table(f"livora_stage_{table}", records=rows, columns=_STAGED[table])

    async def upsert_identities(self, rows: Sequence[IdentityRow]) -> None:
        await self._stage("identities", rows)
        await self.db.execute(
            f"INSERT INTO {self.t['identities']} (kind, identifier, profile_id)"
            " SELECT kind, identifier, profile_id FROM livora_stage_identities"
            " ON CONFLICT (kind, identifier) DO UPDATE SET profile_id = excluded.profile_id"
        )

    async def insert_applied(self, rows: Sequence[AppliedRow]) -> None:
        await self._stage("applied_messages", rows)
        await self.db.execute(
            f"INSERT INTO {self.t['applied_messages']} (message_id, profile_id, received_at)"
            " SELECT message_id, profile_id, received_at FROM livora_stage_applied_messages"
        )

    async def delete_profiles(self, profile_ids: Sequence[str]) -> None:
        await self.db.execute(f"DELETE FROM {self.t['profiles']} WHERE profile_id = ANY($1::text[])", list(profile_ids))

    async def upsert_profiles(self, states: Sequence[ProfileState]) -> None:
        rows = [
            (
                s.profile_id,
                s.user_id,
                _encode(s.traits).decode(),
                _encode(s.groups).decode(),
                from_us(s.first_seen_us),  # type: ignore[arg-type]
                from_us(s.last_seen_us),  # type: ignore[arg-type]
                s.event_count,
                *[s.counts.get(kind, 0) for kind in EVENT_TYPES],
                _json(s.last_location),
                _json(s.last_device),
                s.last_ip,
                _encode(s.stamps).decode(),
            )
            for s in states
        ]
        await self._stage("profiles", rows)
        await self.db.execute(self._upsert_profiles)

    async def load_sessions(self, profile_ids: Sequence[str]) -> list[tuple[str, bytes]]:
        rows = await self.db.fetch(
            f"SELECT profile_id, state FROM {self.t['profile_sessions']} WHERE profile_id = ANY($1::text[])",
            list(profile_ids),
        )
        return [(row[0], bytes(row[1])) for row in rows]

    async def save_sessions(self, states: Mapping[str, bytes | None]) -> None:
        table = self.t["profile_sessions"]
        gone = [p for p, state in states.items() if state is None]
        if gone:
            await self.db.execute(f"DELETE FROM {table} WHERE profile_id = ANY($1::text[])", gone)
        kept = [(p, state) for p, state in states.items() if state is not None]
        if kept:
            await self.db.execute(
                f"INSERT INTO {table} (profile_id, state) SELECT * FROM unnest($1::text[], $2::bytea[])"
                " ON CONFLICT (profile_id) DO UPDATE SET state = excluded.state",
                [p for p, _ in kept],
                [state for _, state in kept],
            )
