"""The profile store on both drivers: identity graph, aggregates, idempotence, crash safety, tenant isolation."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import os
import socket
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import msgspec
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_plane.events import Event
from data_plane.pipeline.identity import IdentityGraph, Resolution, profile_id_for
from data_plane.profiles import MergeRecord, Profile, ProfilesSettings, ProfileStore, create_profile_store
from data_plane.profiles import sql as profiles_sql
from data_plane.profiles.bulk import SQLITE_IDENTITIES, PostgresBulk
from data_plane.profiles.models import applied_messages
from data_plane.profiles.postgres import PostgresProfileStore
from data_plane.profiles.sqlite import SqliteProfileStore
from data_plane.profiles.tenants import schema_name
from kernel.errors import ConfigError, Unavailable, ValidationFailed
from tests.conftest import POSTGRES_URL, require_service

T = TypeVar("T")
Run = Callable[[Awaitable[T]], T]

T0 = dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)
_counter = itertools.count()


# --- fixtures -----------------------------------------------------------------------------------


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def profiles_postgres_url() -> Iterator[str]:
    """A database of its own for this run (and xdist worker), dropped at the end."""
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    name = f"livora_profiles_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    yield f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path, aio: Run[Any]) -> Iterator[Any]:
    """Stores of the test's backend sharing one place (as two workers of one cell would)."""
    url = request.getfixturevalue("profiles_postgres_url") if backend == "postgres" else None
    made: list[ProfileStore] = []

    def make() -> ProfileStore:
        store: ProfileStore = PostgresProfileStore(url) if url else SqliteProfileStore(tmp_path / "cell")
        made.append(store)
        return store

    yield make
    for store in made:
        aio(store.close())


@pytest.fixture
def store(make_store: Callable[[], ProfileStore]) -> ProfileStore:
    return make_store()


def new_tenant() -> str:
    return f"ten_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def tenant() -> str:
    return new_tenant()


def event(tenant_id: str, type: str = "track", *, at: dt.datetime | None = None, **fields: Any) -> Event:
    n = next(_counter)
    fields.setdefault("message_id", f"m{n}")
    return Event(
        tenant_id=tenant_id,
        source_id="src",
        type=type,  # type: ignore[arg-type]
        received_at=T0,
        timestamp=at or T0 + dt.timedelta(seconds=n),
        **fields,
    )


async def apply_ids(store: ProfileStore, tenant_id: str, events: Sequence[Event]) -> list[str]:
    return [resolution.profile_id for resolution in await store.apply(tenant_id, events)]


async def all_profiles(store: ProfileStore, tenant_id: str) -> list[Profile]:
    found, cursor = [], None
    while True:
        page = await store.list(tenant_id, limit=7, cursor=cursor)
        found += page.items
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


async def snapshot(store: ProfileStore, tenant_id: str) -> tuple[list[Profile], list[list[Any]]]:
    """Everything observable about a tenant: its profiles with their merge and re-link history."""
    profiles = await all_profiles(store, tenant_id)
    history = [
        [await store.merges(tenant_id, p.profile_id), await store.relinks(tenant_id, p.profile_id)] for p in profiles
    ]
    return profiles, history


# --- identity -----------------------------------------------------------------------------------


def test_identify_links_the_anonymous_id_to_the_user(store: ProfileStore, tenant: str, aio: Run[Any]) -> None:
    async def scenario() -> None:
        [browsing] = await apply_ids(store, tenant, [event(tenant, "page", anonymous_id="anon-1")])
        assert browsing == profile_id_for(tenant, "anonymous", "anon-1")
        signup = event(tenant, "identify", user_id="u-1", anonymous_id="anon-1", traits={"email": "a@example.com"})
        assert await apply_ids(store, tenant, [signup, event(tenant, user_id="u-1", event="Paid")]) == [
            browsing,
            browsing,
        ]
        by_user = await store.find(tenant, user_id="u-1")
        assert by_user == await store.find(tenant, anonymous_id="anon-1") == await store.get(tenant, browsing)
        assert by_user is not None
        assert (by_user.user_id, by_user.user_ids, by_user.anonymous_ids) == ("u-1", ["u-1"], ["anon-1"])
        assert by_user.traits == {"email": "a@example.com"}
        assert by_user.counts == {"page": 1, "identify": 1, "track": 1} and by_user.event_count == 3
        assert await store.merges(tenant, browsing) == []  # sign-up: the anonymous profile became the user's

    aio(scenario())


def test_logging_in_on_a_new_device_merges_its_anonymous_profile(
    store: ProfileStore, tenant: str, aio: Run[Any]
) -> None:
    async def scenario() -> None:
        [user] = await apply_ids(store, tenant, [event(tenant, user_id="u-1", at=T0)])
        [device] = await apply_ids(
            store, tenant, [event(tenant, "page", anonymous_id="phone", at=T0 - dt.timedelta(days=2))]
        )
        login = event(tenant, "identify", user_id="u-1", anonymous_id="phone", at=T0 + dt.timedelta(hours=1))
        assert await apply_ids(store, tenant, [login]) == [user]
        merged = await store.get(tenant, device)  # a merged-away id still resolves
        assert merged is not None and merged.profile_id == user
        assert (merged.user_ids, merged.anonymous_ids, merged.event_count) == (["u-1"], ["phone"], 3)
        assert merged.first_seen == T0 - dt.timedelta(days=2) and merged.last_seen == T0 + dt.timedelta(hours=1)
        expected = MergeRecord(
            from_profile=device, into_profile=user, reason="identify", at=login.timestamp, message_id=login.message_id
        )
        assert await store.merges(tenant, user) == await store.merges(tenant, device) == [expected]
        assert [p.profile_id for p in await all_profiles(store, tenant)] == [user]

    aio(scenario())


def test_alias_merges_two_known_users_and_keeps_the_history(store: ProfileStore, tenant: str, aio: Run[Any]) -> None:
    async def scenario() -> None:
        old_id, new_id = await apply_ids(
            store,
            tenant,
            [
                event(tenant, "identify", user_id="old", anonymous_id="web", traits={"plan": "free", "city": "Oslo"}),
                event(tenant, "identify", user_id="new", traits={"plan": "pro"}),
            ],
        )
        assert old_id != new_id
        alias = event(tenant, "alias", previous_id="old", user_id="new")
        assert await apply_ids(store, tenant, [alias]) == [new_id]
        profile = await store.find(tenant, user_id="old")
        assert profile is not None and profile == await store.find(tenant, anonymous_id="web")
        assert profile.profile_id == new_id and profile.user_id == "new"
        assert (profile.user_ids, profile.anonymous_ids) == (["new", "old"], ["web"])
        assert profile.traits == {"plan": "pro", "city": "Oslo"}  # per key, the later identify wins
        assert profile.counts == {"identify": 2, "alias": 1}
        [merge] = await store.merges(tenant, new_id)
        assert (merge.from_profile, merge.into_profile, merge.reason) == (old_id, new_id, "alias")
        assert (merge.at, merge.message_id) == (alias.timestamp, alias.message_id)
        # A chain of merges stays resolvable and its whole history stays with the survivor.
        [third] = await apply_ids(store, tenant, [event(tenant, user_id="third")])
        await apply_ids(store, tenant, [event(tenant, "alias", previous_id="new", user_id="third")])
        assert (await store.get(tenant, old_id)).profile_id == third  # type: ignore[union-attr]
        history = await store.merges(tenant, old_id)
        assert [(m.from_profile, m.into_profile) for m in history] == [(old_id, new_id), (new_id, third)]

    aio(scenario())


def test_a_merge_chain_inside_one_batch_moves_rows_the_batch_never_read(store: ProfileStore, aio: Run[Any]) -> None:
    """A into B into C in one batch: identifiers and redirects of A and B that no event of the batch
    names end on C, exactly as when the same events are applied one at a time."""
    batched, single = new_tenant(), new_tenant()

    def story(tenant_id: str) -> tuple[list[Event], list[Event]]:
        before = [
            event(tenant_id, "identify", user_id="a", anonymous_id="a-phone", at=T0),
            event(tenant_id, "identify", user_id="a", anonymous_id="a-laptop", at=T0),
            event(tenant_id, "identify", user_id="old-a", anonymous_id="old-a-web", at=T0),
            event(tenant_id, "alias", previous_id="old-a", user_id="a", at=T0),  # a redirect into A
            event(tenant_id, "identify", user_id="b", anonymous_id="b-tablet", at=T0),
            event(tenant_id, user_id="c", at=T0),
        ]
        batch = [
            event(tenant_id, "alias", previous_id="a", user_id="b", at=T0 + dt.timedelta(hours=1)),
            event(tenant_id, user_id="b", at=T0 + dt.timedelta(hours=2)),
            event(tenant_id, "alias", previous_id="b", user_id="c", at=T0 + dt.timedelta(hours=3)),
            event(tenant_id, anonymous_id="a-phone", at=T0 + dt.timedelta(hours=4)),
        ]
        return before, batch

    async def scenario() -> None:
        before, batch = story(batched)
        for e in before:
            await store.apply(batched, [e])
        assert await apply_ids(store, batched, batch) == [profile_id_for(batched, "user", u) for u in "bbcc"]
        c = await store.find(batched, anonymous_id="a-laptop")  # named by no event of the batch
        assert c is not None and c.profile_id == profile_id_for(batched, "user", "c")
        assert c.user_ids == ["a", "b", "c", "old-a"]
        assert c.anonymous_ids == ["a-laptop", "a-phone", "b-tablet", "old-a-web"]
        assert c.event_count == len(before) + len(batch)
        for user in ("old-a", "a", "b"):  # every merged-away profile, the older redirect included
            assert await store.get(batched, profile_id_for(batched, "user", user)) == c
        assert [p.profile_id for p in await all_profiles(store, batched)] == [c.profile_id]
        for e in [*before, *batch]:
            await store.apply(single, [msgspec.structs.replace(e, tenant_id=single)])
        users = ["a", "old-a", "b", "c"]
        names = {profile_id_for(single, "user", u): profile_id_for(batched, "user", u) for u in users}
        assert _translate(*await snapshot(store, single), names) == await snapshot(store, batched)

    aio(scenario())


def test_an_anonymous_id_seen_with_two_users_never_merges_them(store: ProfileStore, tenant: str, aio: Run[Any]) -> None:
    async def scenario() -> None:
        [alice] = await apply_ids(store, tenant, [event(tenant, "identify", user_id="alice", anonymous_id="laptop")])
        [bob] = await apply_ids(store, tenant, [event(tenant, "identify", user_id="bob", anonymous_id="laptop")])
        assert alice != bob
        assert await apply_ids(store, tenant, [event(tenant, anonymous_id="laptop")]) == [
            bob
        ]  # future events follow Bob
        assert await store.merges(tenant, alice) == await store.merges(tenant, bob) == []
        [relink] = await store.relinks(tenant, bob)
        assert (relink.anonymous_id, relink.from_profile, relink.to_profile) == ("laptop", alice, bob)
        assert await store.relinks(tenant, alice) == [relink]
        # A track carrying both ids follows the same rule: Alice takes the laptop back, still no merge.
        assert await apply_ids(store, tenant, [event(tenant, user_id="alice", anonymous_id="laptop")]) == [alice]
        a, b = await store.get(tenant, alice), await store.get(tenant, bob)
        assert a is not None and b is not None
        assert (a.user_ids, a.anonymous_ids, a.event_count) == (["alice"], ["laptop"], 2)
        assert (b.user_ids, b.anonymous_ids, b.event_count) == (["bob"], [], 2)  # Bob keeps his past
        assert len(await all_profiles(store, tenant)) == 2

    aio(scenario())


# --- aggregates -----------------------------------------------------------------------------------


def test_counts_seen_times_traits_location_and_device(store: ProfileStore, tenant: str, aio: Run[Any]) -> None:
    paris = {"country_code": "FR", "city": "Paris"}
    oslo = {"country_code": "NO", "city": "Oslo"}
    phone = {"browser": "Safari", "os": "iOS", "device_type": "mobile"}
    at = [T0 + dt.timedelta(minutes=m) for m in range(6)]
    events = [
        event(tenant, "identify", user_id="u", at=at[3], traits={"plan": "pro", "seats": 5}),
        event(tenant, "page", user_id="u", at=at[1], context={"geo": oslo, "ip": "10.0.0.1"}),
        # Arrives late but happened earlier: loses to the newer plan, wins the key nobody else set.
        event(tenant, "identify", user_id="u", at=at[0], traits={"plan": "free", "name": "Ada"}),
        event(tenant, user_id="u", event="Paid", at=at[4], context={"geo": paris, "user_agent_parsed": phone}),
        event(tenant, "screen", user_id="u", at=at[5], context={"ip": "192.0.2.0"}),  # no geo: the last one stays
        event(tenant, "group", user_id="u", group_id="acme", traits={"name": "Acme", "plan": "enterprise"}, at=at[2]),
    ]
    [profile_id, *_] = aio(apply_ids(store, tenant, events[:3]))
    aio(apply_ids(store, tenant, events[3:]))
    profile = aio(store.get(tenant, profile_id))
    assert profile is not None
    assert profile.traits == {"plan": "pro", "seats": 5, "name": "Ada"}
    assert profile.groups == {"acme": {"name": "Acme", "plan": "enterprise"}}  # an account's traits stay apart
    assert (profile.first_seen, profile.last_seen) == (at[0], at[5])
    assert profile.counts == {"identify": 2, "page": 1, "track": 1, "screen": 1, "group": 1}
    assert profile.event_count == 6
    assert (profile.last_location, profile.last_device, profile.last_ip) == (paris, phone, "192.0.2.0")


def test_equal_timestamps_let_the_later_applied_trait_win(store: ProfileStore, tenant: str, aio: Run[Any]) -> None:
    first = event(tenant, "identify", user_id="u", at=T0, traits={"plan": "a"})
    second = event(tenant, "identify", user_id="u", at=T0, traits={"plan": "b"})
    aio(apply_ids(store, tenant, [first, second]))
    assert aio(store.find(tenant, user_id="u")).traits == {"plan": "b"}  # type: ignore[union-attr]


# --- idempotence and crash safety ---------------------------------------------------------------


def _story(tenant: str) -> list[Event]:
    return [
        event(tenant, "page", anonymous_id="a1", context={"geo": {"country_code": "DE"}}),
        event(tenant, "identify", user_id="u1", anonymous_id="a1", traits={"email": "u1@example.com"}),
        event(tenant, user_id="u2", event="Signed Up"),
        event(tenant, "identify", user_id="u2", anonymous_id="a1"),
        event(tenant, "alias", previous_id="u1", user_id="u2"),
        event(tenant, "page", anonymous_id="a2"),
        event(tenant, "identify", user_id="u2", anonymous_id="a2", traits={"plan": "pro"}),
    ]


def test_redelivered_events_change_nothing(store: ProfileStore, tenant: str, aio: Run[Any]) -> None:
    events = _story(tenant)
    first = aio(store.apply(tenant, events))
    assert [len(r.merges) for r in first] == [0, 0, 0, 0, 1, 0, 1] and len(first[3].relinks) == 1
    state = aio(snapshot(store, tenant))
    # Same profile ids, merges and re-links as the first time (sessions re-key on those merges).
    assert aio(store.apply(tenant, events)) == first
    assert aio(store.apply(tenant, events[2:5])) == first[2:5]
    assert aio(snapshot(store, tenant)) == state
    # A batch mixing redelivered and new events applies only the new ones; a repeat inside one batch counts once.
    extra = event(tenant, user_id="u2", event="Paid")
    aio(apply_ids(store, tenant, [events[0], extra, extra, events[-1]]))
    [profile] = aio(all_profiles(store, tenant))
    assert profile.event_count == state[0][0].event_count + 1 == len(events) + 1


@pytest.mark.parametrize("poison", ["names nobody", "other tenant", "not json", "nul"])
def test_a_failing_event_rolls_back_its_whole_batch(
    store: ProfileStore, tenant: str, aio: Run[Any], poison: str
) -> None:
    events = _story(tenant)
    aio(apply_ids(store, tenant, events[:2]))
    before = aio(snapshot(store, tenant))
    bad = {
        "names nobody": event(tenant),
        "other tenant": event("ten_other", user_id="u1"),
        "not json": event(tenant, "identify", user_id="u1", traits={"when": object()}),
        "nul": event(tenant, user_id="u\x001"),
    }[poison]
    with pytest.raises(ValueError):
        aio(apply_ids(store, tenant, [*events[2:5], bad, *events[5:]]))
    assert aio(snapshot(store, tenant)) == before
    aio(apply_ids(store, tenant, events[2:]))  # the same batch without the poison applies, once
    assert sum(p.event_count for p in aio(all_profiles(store, tenant))) == len(events)


def test_a_crash_while_writing_leaves_nothing_half_applied(
    store: ProfileStore, tenant: str, aio: Run[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _story(tenant)
    aio(apply_ids(store, tenant, events[:3]))
    before = aio(snapshot(store, tenant))
    written: list[int] = []

    async def crash(self: Any) -> None:
        # Everything but the profile rows is written by now, in the open transaction.
        written.append(await self.conn.scalar(sa.select(sa.func.count()).select_from(applied_messages)))
        raise RuntimeError("worker killed")

    monkeypatch.setattr(profiles_sql._Batch, "_write_profiles", crash)
    with pytest.raises(RuntimeError, match="worker killed"):
        aio(apply_ids(store, tenant, events[3:]))
    assert written == [len(events)]  # the rollback had real writes to undo
    monkeypatch.undo()
    assert aio(snapshot(store, tenant)) == before
    ids = aio(apply_ids(store, tenant, events))  # the stream redelivers the whole batch after the crash
    assert sum(p.event_count for p in aio(all_profiles(store, tenant))) == len(events)
    assert len(aio(store.merges(tenant, ids[-1]))) == 2


def test_concurrent_writers_of_one_tenant_lose_no_update(
    make_store: Callable[[], ProfileStore], tenant: str, aio: Run[Any]
) -> None:
    """Two stores (two workers) apply batches for the same people at once; every event counts once."""
    workers = [make_store(), make_store()]
    batches = [
        [
            event(tenant, "identify", user_id="u", anonymous_id=f"a{n % 3}", traits={f"k{n}": n}),
            *(event(tenant, anonymous_id=f"a{(n + 1) % 3}") for _ in range(4)),
        ]
        for n in range(8)
    ]

    async def scenario() -> None:
        await asyncio.gather(*(workers[n % 2].apply(tenant, batch) for n, batch in enumerate(batches)))

    aio(scenario())
    profiles = aio(all_profiles(workers[0], tenant))
    assert sum(p.event_count for p in profiles) == sum(map(len, batches))
    [user] = [p for p in profiles if p.user_ids]
    assert user.traits == {f"k{n}": n for n in range(8)}
    owners = [a for p in profiles for a in p.anonymous_ids]
    assert sorted(owners) == ["a0", "a1", "a2"]  # every identifier in exactly one profile


# --- tenancy --------------------------------------------------------------------------------------


def _schema_exists(url: str, tenant_id: str) -> bool:
    async def query() -> bool:
        connection = await asyncpg.connect(url)
        try:
            return bool(
                await connection.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema_name(tenant_id))
            )
        finally:
            await connection.close()

    return asyncio.run(query())


def _stored(store: ProfileStore, tenant_id: str, request: pytest.FixtureRequest) -> bool:
    if isinstance(store, SqliteProfileStore):
        return store.path(tenant_id).exists()
    return _schema_exists(request.getfixturevalue("profiles_postgres_url"), tenant_id)


def test_two_tenants_with_identical_ids_stay_apart(
    store: ProfileStore, aio: Run[Any], request: pytest.FixtureRequest
) -> None:
    a, b = new_tenant(), new_tenant()
    story_a = _story(a)
    story_b = [msgspec.structs.replace(e, tenant_id=b) for e in story_a[:4]]  # same message ids, same people
    ids_a = aio(apply_ids(store, a, story_a))
    ids_b = aio(apply_ids(store, b, story_b))  # not mistaken for a redelivery of a's events
    assert not set(ids_a) & set(ids_b)
    assert aio(store.get(b, ids_a[0])) is None and aio(store.get(a, ids_b[2])) is None
    profiles_a, profiles_b = aio(all_profiles(store, a)), aio(all_profiles(store, b))
    assert [p.event_count for p in profiles_a] == [7]
    assert sorted(p.event_count for p in profiles_b) == [2, 2]  # no alias in b: a1 was re-linked, no merge
    assert len(aio(store.merges(a, ids_a[-1]))) == 2 and aio(store.merges(b, ids_b[-1])) == []

    aio(store.drop_tenant(a))
    assert not _stored(store, a, request) and _stored(store, b, request)
    assert aio(all_profiles(store, a)) == [] and aio(store.find(a, user_id="u1")) is None
    assert aio(all_profiles(store, b)) == profiles_b
    aio(store.drop_tenant(a))  # dropping what is gone is a no-op
    # A dropped tenant starts over empty on first use.
    assert aio(apply_ids(store, a, story_a[:1])) == ids_a[:1]
    assert [p.event_count for p in aio(all_profiles(store, a))] == [1]


def test_reads_never_create_a_tenants_storage(
    store: ProfileStore, tenant: str, aio: Run[Any], request: pytest.FixtureRequest
) -> None:
    assert aio(store.get(tenant, "prof_x")) is None
    assert aio(store.find(tenant, anonymous_id="a")) is None
    assert aio(store.merges(tenant, "prof_x")) == [] and aio(store.relinks(tenant, "prof_x")) == []
    assert aio(store.list(tenant)).items == []
    assert aio(store.purge_applied(tenant, T0)) == 0
    assert not _stored(store, tenant, request)
    aio(store.ensure_tenant(tenant))
    assert _stored(store, tenant, request)
    assert aio(store.list(tenant)).items == []


@pytest.mark.parametrize(
    "bad", ["", "../etc", 'a"; DROP SCHEMA public CASCADE; --', "a.b", "a/b", "t x", "x" * 65, "-lead", "é"]
)
def test_unsafe_tenant_ids_are_refused(store: ProfileStore, aio: Run[Any], bad: str) -> None:
    with pytest.raises(ValueError, match="tenant id"):
        aio(apply_ids(store, bad, [event(bad, user_id="u")]))
    for call in (store.get(bad, "p"), store.list(bad), store.drop_tenant(bad), store.ensure_tenant(bad)):
        with pytest.raises(ValueError, match="tenant id"):
            aio(call)


def test_tenant_ids_map_one_to_one_onto_schemas() -> None:
    assert schema_name("ten_01jc8y2m0f6q1w4x8k3d5r7t9v") == "t_ten_01jc8y2m0f6q1w4x8k3d5r7t9v"
    names = {schema_name(t) for t in ["acme", "Acme", "ACME", "ac-me", "ac_me", "x_acme", "tx_acme", "a" * 64]}
    assert len(names) == 8
    assert all(len(n) <= 63 and n.replace("_", "").isalnum() and n.isascii() for n in names)


# --- listing, purging, settings -----------------------------------------------------------------


def test_list_pages_through_every_profile(store: ProfileStore, tenant: str, aio: Run[Any]) -> None:
    ids = aio(apply_ids(store, tenant, [event(tenant, user_id=f"u{n}") for n in range(5)]))
    first = aio(store.list(tenant, limit=2))
    second = aio(store.list(tenant, limit=2, cursor=first.next_cursor))
    third = aio(store.list(tenant, limit=2, cursor=second.next_cursor))
    listed = [p.profile_id for page in (first, second, third) for p in page.items]
    assert listed == sorted(ids) and third.next_cursor is None
    with pytest.raises(ValidationFailed) as bad_cursor:
        aio(store.list(tenant, cursor="not-a-cursor"))
    assert bad_cursor.value.code == "invalid_cursor"
    with pytest.raises(ValidationFailed):
        aio(store.list(tenant, limit=0))


def test_sessions_are_saved_replaced_and_deleted_per_profile(store: ProfileStore, tenant: str, aio: Run[Any]) -> None:
    other = new_tenant()

    async def scenario() -> None:
        assert await store.load_sessions(tenant, ["p1"]) == {}  # no storage yet: reads empty, creates nothing
        # Binary state (NUL bytes included), more profiles than one bound list would hold.
        first = {f"p{n}": bytes([n % 256, 0, 255]) + f"state{n}".encode() for n in range(1200)}
        await store.save_sessions(tenant, first)
        await store.save_sessions(other, {"p1": b"other tenant"})
        assert await store.load_sessions(tenant, [*first, "unknown"]) == first
        await store.save_sessions(tenant, {"p1": b"replaced", "p2": None, "p3": None, "never": None})
        expected = {**first, "p1": b"replaced"}
        del expected["p2"], expected["p3"]
        assert await store.load_sessions(tenant, [*first, "never"]) == expected
        assert await store.load_sessions(other, ["p1", "p2"]) == {"p1": b"other tenant"}
        assert await store.load_sessions(tenant, []) == {}

    aio(scenario())


def test_purge_applied_forgets_old_message_ids(store: ProfileStore, tenant: str, aio: Run[Any]) -> None:
    old = event(tenant, user_id="u")
    new = msgspec.structs.replace(event(tenant, user_id="u"), received_at=T0 + dt.timedelta(days=8))
    aio(apply_ids(store, tenant, [old, new]))
    assert aio(store.purge_applied(tenant, T0 + dt.timedelta(days=1))) == 1
    aio(apply_ids(store, tenant, [old, new]))  # past the retention a redelivery counts again (the documented caveat)
    assert aio(store.find(tenant, user_id="u")).event_count == 3  # type: ignore[union-attr]


def test_sqlite_identity_lookups_search_indexes_never_the_whole_table(tmp_path: Path, aio: Run[Any]) -> None:
    """A batch's identity read costs per identifier it names, not per user the tenant has."""
    store = SqliteProfileStore(tmp_path)
    tenant = new_tenant()
    aio(store.apply(tenant, [event(tenant, user_id=f"u{n}", anonymous_id=f"a{n}") for n in range(50)]))
    aio(store.close())
    with contextlib.closing(sqlite3.connect(store.path(tenant))) as connection:
        plan = [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {SQLITE_IDENTITIES}", ('["u1"]', '["a2"]'))]
    on_identities = [step for step in plan if "identities" in step]
    assert len(on_identities) == 3, plan
    assert all(step.startswith("SEARCH identities USING INDEX") for step in on_identities), plan
    assert all("identifier=?" in step or "profile_id=?" in step for step in on_identities), plan


def test_postgres_identity_lookups_probe_indexes_even_under_a_generic_plan(
    profiles_postgres_url: str, aio: Run[Any]
) -> None:
    """asyncpg prepares statements and PostgreSQL plans them generically after five runs; the
    identity read must stay index probes then too, on a tenant whose tables have no statistics."""
    store = PostgresProfileStore(profiles_postgres_url)
    tenant = new_tenant()

    async def plan() -> str:
        people = [event(tenant, user_id=f"u{n}", anonymous_id=f"a{n}") for n in range(3000)]
        await store.apply(tenant, people)
        connection = await asyncpg.connect(profiles_postgres_url)
        try:
            await connection.execute("SET plan_cache_mode = force_generic_plan")
            query = PostgresBulk(connection, schema_name(tenant)).select_identities
            rows = await connection.fetch(f"EXPLAIN {query}", ["user", "anonymous"], ["u1", "a2"])
            return "\n".join(row[0] for row in rows)
        finally:
            await connection.close()
            await store.drop_tenant(tenant)
            await store.close()

    explained = aio(plan())
    assert "Seq Scan on identities" not in explained and "Hash Join" not in explained, explained
    # One probe per key, one per profile reached only through an anonymous id.
    assert "Index Cond: (((kind)::text = k.kind) AND ((identifier)::text = k.identifier))" in explained, explained
    assert "Index Cond: ((profile_id)::text = (a.profile_id)::text)" in explained, explained


def test_storage_failures_are_unavailable_not_driver_errors(
    backend: str, tmp_path: Path, tenant: str, aio: Run[Any]
) -> None:
    if backend == "postgres":
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        store: ProfileStore = PostgresProfileStore(f"postgresql://postgres@127.0.0.1:{port}/none")
    else:
        (tmp_path / "tenants").write_text("a file where the folder should be")
        store = SqliteProfileStore(tmp_path)
    try:
        for call in (store.apply(tenant, [event(tenant, user_id="u")]), store.ensure_tenant(tenant)):
            with pytest.raises(Unavailable) as failed:
                aio(call)
            assert failed.value.code == "profiles_unavailable"
    finally:
        aio(store.close())


def test_the_driver_is_chosen_by_setting(tmp_path: Path) -> None:
    store = create_profile_store(ProfilesSettings(profiles_sqlite_root=str(tmp_path)))
    assert isinstance(store, SqliteProfileStore) and store.root == tmp_path
    with pytest.raises(ConfigError, match=r"LIVORA_PROFILES_DRIVER.*postgres, sqlite"):
        create_profile_store(ProfilesSettings(profiles_driver="mongo"))
    with pytest.raises(ConfigError, match="LIVORA_PROFILES_DATABASE_URL"):
        create_profile_store(ProfilesSettings(profiles_driver="postgres"))
    with pytest.raises(ConfigError, match="LIVORA_PROFILES_DATABASE_URL"):
        PostgresProfileStore("sqlite:///x.db")


# --- property: batches equal one by one, and equal the in-memory graph -----------------------------

USERS = ["u1", "u2", "u3"]
ANONS = ["a1", "a2", "a3", "u1"]  # "u1" as an anonymous id too: the namespaces are separate
KINDS_AND_IDS = [("user", u) for u in [*USERS, *ANONS, "legacy"]] + [
    ("anonymous", a) for a in [*USERS, *ANONS, "legacy"]
]


@st.composite
def stories(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[int]]:
    """Event fields (tenant-free) with distinct, shuffled timestamps, and the cut points of a batching."""
    size = draw(st.integers(1, 16))
    times = draw(st.permutations(range(size)))
    fields = []
    for n in range(size):
        kind = draw(st.sampled_from(["track", "identify", "page", "alias", "group"]))
        user = draw(st.sampled_from(USERS if kind in ("identify", "alias") else [None, *USERS]))
        anon = draw(st.sampled_from([None, *ANONS]))
        if user is None and anon is None:
            anon = "a1"
        item: dict[str, Any] = {
            "type": kind,
            "user_id": user,
            "anonymous_id": anon,
            "timestamp": T0 + dt.timedelta(seconds=times[n]),
            "context": {"geo": {"city": draw(st.sampled_from(["Oslo", "Lima"]))}} if draw(st.booleans()) else {},
        }
        if kind == "alias" or draw(st.integers(0, 5)) == 0:
            # Only alias reads a previous id; on other events it must change nothing.
            item["previous_id"] = draw(st.sampled_from([*USERS, *ANONS, "legacy"]))
        if kind in ("identify", "group"):
            item["traits"] = draw(st.dictionaries(st.sampled_from(["plan", "name", "seats"]), st.integers(0, 3)))
        if kind == "group":
            item["group_id"] = draw(st.sampled_from(["g1", "g2"]))
        fields.append(item)
    cuts = sorted(draw(st.sets(st.integers(1, max(1, size - 1)), max_size=4)))
    return fields, cuts


def _batches(events: Sequence[Event], cuts: list[int]) -> list[list[Event]]:
    bounds = [0, *cuts, len(events)]
    return [list(events[lo:hi]) for lo, hi in itertools.pairwise(bounds) if hi > lo]


def _translate(profiles: list[Profile], history: list[list[Any]], names: dict[str, str]) -> Any:
    def rename(value: Any) -> Any:
        fields = msgspec.structs.asdict(value)
        for key in ("profile_id", "from_profile", "into_profile", "to_profile"):
            if key in fields:
                fields[key] = names[fields[key]]
        return type(value)(**fields)

    pairs = sorted(
        ((rename(p), [[rename(r) for r in records] for records in h]) for p, h in zip(profiles, history, strict=True)),
        key=lambda pair: pair[0].profile_id,
    )
    return [p for p, _ in pairs], [h for _, h in pairs]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(story=stories())
def test_batches_give_the_same_profiles_as_one_by_one_and_as_the_graph(
    store: ProfileStore, aio: Run[Any], story: tuple[list[dict[str, Any]], list[int]]
) -> None:
    fields, cuts = story
    single, batched = new_tenant(), new_tenant()
    events = [
        Event(message_id=f"m{n}", tenant_id=single, source_id="s", received_at=T0, **f) for n, f in enumerate(fields)
    ]
    other = [msgspec.structs.replace(e, tenant_id=batched) for e in events]
    names = {profile_id_for(single, k, i): profile_id_for(batched, k, i) for k, i in KINDS_AND_IDS}  # type: ignore[arg-type]

    async def scenario() -> tuple[list[Resolution], list[str], Any, Any]:
        one_by_one = [r for e in events for r in await store.apply(single, [e])]
        in_batches = [pid for batch in _batches(other, cuts) for pid in await apply_ids(store, batched, batch)]
        await store.apply(batched, _batches(other, cuts)[-1])  # a redelivered batch changes nothing
        return one_by_one, in_batches, await snapshot(store, single), await snapshot(store, batched)

    resolutions, in_batches, (profiles, history), state_batched = aio(scenario())
    one_by_one = [r.profile_id for r in resolutions]
    assert [names[p] for p in one_by_one] == in_batches
    assert _translate(profiles, history, names) == state_batched

    # The in-memory graph resolves every event the same way (profile, merges, re-links) and ends
    # with the same partition of identifiers.
    graph = IdentityGraph()
    assert [graph.resolve(e) for e in events] == resolutions
    assert sorted((p.profile_id, sorted(p.user_ids), sorted(p.anonymous_ids)) for p in graph.profiles(single)) == [
        (p.profile_id, p.user_ids, p.anonymous_ids) for p in profiles
    ]
    stored_merges = sorted(
        (m.from_profile, m.into_profile, m.reason, m.at, m.message_id) for h in history for m in h[0]
    )
    assert stored_merges == sorted(
        (m.from_profile, m.into_profile, m.reason, m.at, m.message_id) for m in graph.merges(single)
    )

    # Brute force: a profile's aggregates are those of the events whose profile now resolves to it.
    by_profile = {p.profile_id: p for p in profiles}
    mine: dict[str, list[Event]] = {p: [] for p in by_profile}
    for e, pid in zip(events, one_by_one, strict=True):
        mine[graph.canonical(single, pid)].append(e)
    for pid, own in mine.items():
        profile = by_profile[pid]
        assert profile.event_count == len(own)
        assert (profile.first_seen, profile.last_seen) == (min(e.timestamp for e in own), max(e.timestamp for e in own))
        traits: dict[str, tuple[dt.datetime, Any]] = {}
        for e in own:
            if e.type == "identify":
                for key, value in e.traits.items():
                    if key not in traits or traits[key][0] < e.timestamp:
                        traits[key] = (e.timestamp, value)
        assert profile.traits == {key: value for key, (_, value) in traits.items()}
        located = [e for e in own if e.context.get("geo")]
        assert profile.last_location == (max(located, key=lambda e: e.timestamp).context["geo"] if located else None)
