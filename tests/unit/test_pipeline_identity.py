"""Identity stitching: identify, alias, re-links and merge history, checked against a union-find reference."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_plane.events import Event
from data_plane.pipeline.identity import Identifiers, IdentityGraph, Known, plan, profile_id_for

T0 = dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)
_counter = iter(range(10**9))


def event(tenant: str = "ten_a", type: str = "track", **fields: Any) -> Event:
    n = next(_counter)
    return Event(
        message_id=f"m{n}",
        tenant_id=tenant,
        source_id="src",
        type=type,  # type: ignore[arg-type]
        received_at=T0,
        timestamp=T0 + dt.timedelta(seconds=n),
        **fields,
    )


def resolve(graph: IdentityGraph, **fields: Any) -> str:
    resolution = graph.resolve(event(**fields))
    assert resolution is not None
    return resolution.profile_id


def test_identify_links_the_anonymous_profile_to_the_user() -> None:
    graph = IdentityGraph()
    browsing = resolve(graph, anonymous_id="anon-1")
    assert browsing == profile_id_for("ten_a", "anonymous", "anon-1")
    # Sign-up: the anonymous-only profile simply becomes the user's; nothing is merged.
    assert resolve(graph, type="identify", user_id="u-1", anonymous_id="anon-1") == browsing
    assert resolve(graph, anonymous_id="anon-1") == browsing
    assert resolve(graph, user_id="u-1") == browsing
    assert graph.merges("ten_a") == []
    assert graph.profile("ten_a", browsing) == (browsing, frozenset({"u-1"}), frozenset({"anon-1"}))


def test_logging_in_on_a_new_device_merges_its_anonymous_profile_into_the_users() -> None:
    graph = IdentityGraph()
    user = resolve(graph, user_id="u-1")
    device = resolve(graph, anonymous_id="anon-2")
    login = event(type="identify", user_id="u-1", anonymous_id="anon-2")
    resolution = graph.resolve(login)
    assert resolution is not None and resolution.profile_id == user
    [merge] = resolution.merges
    assert (merge.from_profile, merge.into_profile, merge.reason) == (device, user, "identify")
    assert (merge.at, merge.message_id, merge.tenant_id) == (login.timestamp, login.message_id, "ten_a")
    assert graph.merges("ten_a") == [merge]
    assert graph.canonical("ten_a", device) == user  # ids already written keep resolving
    assert resolve(graph, anonymous_id="anon-2") == user
    assert graph.profile("ten_a", device) == (user, frozenset({"u-1"}), frozenset({"anon-2"}))


def test_a_shared_device_never_merges_two_known_users() -> None:
    graph = IdentityGraph()
    alice = resolve(graph, type="identify", user_id="alice", anonymous_id="family-laptop")
    bob = resolve(graph, user_id="bob")
    # Bob logs in on the laptop Alice used: the anonymous id moves to Bob, the users stay apart.
    assert resolve(graph, type="identify", user_id="bob", anonymous_id="family-laptop") == bob
    assert graph.merges("ten_a") == []
    [relink] = graph.relinks("ten_a")
    assert (relink.anonymous_id, relink.from_profile, relink.to_profile) == ("family-laptop", alice, bob)
    assert resolve(graph, anonymous_id="family-laptop") == bob
    assert graph.profile("ten_a", alice) == (alice, frozenset({"alice"}), frozenset())
    assert graph.profile("ten_a", bob) == (bob, frozenset({"bob"}), frozenset({"family-laptop"}))
    # A track event carrying both ids follows the same rule.
    assert resolve(graph, user_id="alice", anonymous_id="family-laptop") == alice
    assert len(graph.relinks("ten_a")) == 2 and graph.merges("ten_a") == []


def test_alias_is_the_explicit_way_to_merge_two_known_users() -> None:
    graph = IdentityGraph()
    old = resolve(graph, user_id="old-id")
    new = resolve(graph, user_id="new-id")
    assert resolve(graph, type="alias", previous_id="old-id", user_id="new-id") == new
    [merge] = graph.merges("ten_a")
    assert (merge.from_profile, merge.into_profile, merge.reason) == (old, new, "alias")
    assert resolve(graph, user_id="old-id") == new
    assert graph.profile("ten_a", new) == (new, frozenset({"old-id", "new-id"}), frozenset())


def test_alias_from_an_anonymous_id_and_from_an_unseen_id() -> None:
    graph = IdentityGraph()
    device = resolve(graph, anonymous_id="anon-9")
    user = resolve(graph, type="alias", previous_id="anon-9", user_id="u-9")
    assert user == device and graph.merges("ten_a") == []  # the user joined the anonymous profile
    # An unseen previous id may be an old user id or an anonymous id: both now resolve here.
    target = resolve(graph, type="alias", previous_id="legacy-42", user_id="u-9")
    assert target == user
    assert resolve(graph, user_id="legacy-42") == user
    assert resolve(graph, anonymous_id="legacy-42") == user
    assert resolve(graph, type="alias", previous_id="u-9", user_id="u-9") == user


def test_tenants_never_share_identities() -> None:
    graph = IdentityGraph()
    a = resolve(graph, tenant="ten_a", type="identify", user_id="u-1", anonymous_id="x")
    b = resolve(graph, tenant="ten_b", anonymous_id="x")
    assert a != b
    assert resolve(graph, tenant="ten_b", user_id="u-2") != resolve(graph, tenant="ten_a", user_id="u-2")
    resolve(graph, tenant="ten_b", type="identify", user_id="u-2", anonymous_id="x")
    assert graph.merges("ten_a") == [] and len(graph.merges("ten_b")) == 1
    assert graph.profile("ten_a", a) == (a, frozenset({"u-1"}), frozenset({"x"}))
    assert graph.profile("ten_b", a) is None


def test_replaying_the_same_events_gives_the_same_profiles() -> None:
    events = [
        event(anonymous_id="a1"),
        event(user_id="u1"),
        event(type="identify", user_id="u1", anonymous_id="a1"),
        event(type="identify", user_id="u2", anonymous_id="a1"),
        event(type="alias", previous_id="u1", user_id="u2"),
    ]
    first, second = IdentityGraph(), IdentityGraph()
    assert [first.resolve(e) for e in events] == [second.resolve(e) for e in events]


def test_stitch_sets_the_profile_id_and_events_without_ids_are_left_alone() -> None:
    graph = IdentityGraph()
    stitched, resolution = graph.stitch(event(anonymous_id="a", context={"ip": "1.2.3.4"}))
    assert resolution is not None and stitched.context == {"ip": "1.2.3.4", "profile_id": resolution.profile_id}
    nobody = event()
    assert graph.stitch(nobody) == (nobody, None)
    with pytest.raises(ValueError, match="needs a user id or an anonymous id"):
        graph.alias("ten_a", "x", "", at=T0)


def test_plan_is_pure_and_works_from_known_rows_alone() -> None:
    # What a SQL-backed graph does: select the rows for ids.keys(), plan, write the changes.
    ids = Identifiers("u-1", "anon-1", None)
    assert ids.keys() == [("user", "u-1"), ("anonymous", "anon-1")]
    known = {
        ("user", "u-1"): Known("prof_u", frozenset({"u-1"})),
        ("anonymous", "anon-1"): Known("prof_a", frozenset()),
    }
    result = plan("ten_a", ids, known, at=T0, message_id="m")
    assert result is not None and result.profile_id == "prof_u"
    [merge] = result.changes
    assert (merge.from_profile, merge.into_profile) == ("prof_a", "prof_u")  # type: ignore[union-attr]
    assert plan("ten_a", Identifiers(None, None, None), {}, at=T0) is None


# --- the reference model ----------------------------------------------------------------------


class Reference:
    """Union-find over typed ids with the rule. An anonymous id that is re-linked gets a new
    *version* (a fresh node) joined to the new user, so the old version stays with the old profile,
    which is exactly "past events stay, future events follow"."""

    def __init__(self) -> None:
        self.parent: dict[tuple, tuple] = {}
        self.users: dict[tuple, set[str]] = {}
        self.version: dict[str, int] = {}
        self.merges: list[str] = []

    def find(self, node: tuple) -> tuple:
        while self.parent[node] != node:
            node = self.parent[node]
        return node

    def node(self, kind: str, identifier: str) -> tuple:
        """The id's current node, created if new."""
        key = ("u", identifier) if kind == "user" else ("a", identifier, self.version.setdefault(identifier, 0))
        if key not in self.parent:
            self.parent[key] = key
            self.users[key] = {identifier} if kind == "user" else set()
        return key

    def known(self, kind: str, identifier: str) -> bool:
        return ("u", identifier) in self.parent if kind == "user" else identifier in self.version

    def union(self, a: tuple, b: tuple, reason: str | None) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb
            self.users[rb] |= self.users.pop(ra)
            if reason:
                self.merges.append(reason)

    def link(self, user: str, anon: str) -> None:
        user_known, anon_known = self.known("user", user), self.known("anonymous", anon)
        if anon_known:
            owners = self.users[self.find(self.node("anonymous", anon))]
            if owners and user not in owners:  # belongs to another known user: re-link, never merge
                self.version[anon] += 1
                self.union(self.node("anonymous", anon), self.node("user", user), None)
                return
        # A merge is a union of two profiles that both existed before this step.
        reason = "identify" if user_known and anon_known else None
        self.union(self.node("anonymous", anon), self.node("user", user), reason)

    def alias(self, previous: str, user: str) -> None:
        if previous == user:
            self.node("user", user)
            return
        user_known = self.known("user", user)
        if self.known("user", previous):
            source = self.node("user", previous)
        elif self.known("anonymous", previous):
            source = self.node("anonymous", previous)
        else:
            self.union(self.node("user", previous), self.node("user", user), None)
            self.union(self.node("anonymous", previous), self.node("user", user), None)
            return
        self.union(source, self.node("user", user), "alias" if user_known else None)

    def apply(self, e: Event) -> tuple:
        """The node the event resolves to (at its time)."""
        if e.type == "alias" and e.user_id and e.previous_id:
            self.alias(e.previous_id, e.user_id)
        if e.user_id and e.anonymous_id:
            self.link(e.user_id, e.anonymous_id)
        return self.node("user", e.user_id) if e.user_id else self.node("anonymous", e.anonymous_id or "")


USERS = ["u1", "u2", "u3"]
ANONS = ["a1", "a2", "a3", "u1"]  # "u1" also as an anonymous id: the namespaces are separate


@st.composite
def identity_events(draw: st.DrawFn, with_alias: bool = True) -> Event:
    types = ["track", "identify", "page"] + (["alias"] if with_alias else [])
    kind = draw(st.sampled_from(types))
    user = draw(st.sampled_from([None, *USERS])) if kind != "identify" else draw(st.sampled_from(USERS))
    anon = draw(st.sampled_from([None, *ANONS]))
    if user is None and anon is None:
        anon = "a1"
    previous = draw(st.sampled_from(USERS + ANONS + ["legacy"])) if kind == "alias" else None
    tenant = draw(st.sampled_from(["ten_a", "ten_b"]))
    return event(tenant=tenant, type=kind, user_id=user, anonymous_id=anon, previous_id=previous)


def _check_against_reference(events: list[Event]) -> IdentityGraph:
    graph = IdentityGraph()
    references = {"ten_a": Reference(), "ten_b": Reference()}
    seen: list[tuple[str, str, tuple]] = []  # (tenant, profile returned, reference node at the time)
    for e in events:
        resolution = graph.resolve(e)
        assert resolution is not None
        seen.append((e.tenant_id, resolution.profile_id, references[e.tenant_id].apply(e)))

    profile_of_root: dict[str, dict[tuple, str]] = {}
    for tenant, ref in references.items():
        # Current ids: the same partition in both, through a one-to-one map of profiles to roots.
        current = [("user", u) for u in [*USERS, "legacy"] if ref.known("user", u)]
        current += [("anonymous", a) for a in [*ANONS, "legacy"] if ref.known("anonymous", a)]
        root_of_profile: dict[str, tuple] = {}
        roots = profile_of_root[tenant] = {}
        for kind, identifier in current:
            profile = graph.profile_of(tenant, kind, identifier)  # type: ignore[arg-type]
            root = ref.find(ref.node(kind, identifier))
            assert profile is not None
            assert root_of_profile.setdefault(profile, root) == root
            assert roots.setdefault(root, profile) == profile
        for profile in graph.profiles(tenant):
            assert profile.user_ids == ref.users[root_of_profile[profile.profile_id]]
        assert [m.reason for m in graph.merges(tenant)] == ref.merges
    # Every profile id ever handed out still resolves to where its event's identity lives now
    # (for a re-linked anonymous id: the profile it belonged to then, not the one it moved to).
    for tenant, profile, node in seen:
        assert graph.canonical(tenant, profile) == profile_of_root[tenant][references[tenant].find(node)]
    return graph


@settings(max_examples=200, deadline=None)
@given(st.lists(identity_events(), min_size=1, max_size=25))
def test_graph_matches_the_union_find_reference(events: list[Event]) -> None:
    _check_against_reference(events)


@settings(max_examples=150, deadline=None)
@given(st.lists(identity_events(with_alias=False), min_size=1, max_size=25))
def test_without_alias_no_profile_ever_holds_two_known_users(events: list[Event]) -> None:
    graph = _check_against_reference(events)
    for tenant in ("ten_a", "ten_b"):
        assert all(len(p.user_ids) <= 1 for p in graph.profiles(tenant))
        assert all(m.reason == "identify" for m in graph.merges(tenant))


@settings(max_examples=150, deadline=None)
@given(st.lists(identity_events(), min_size=2, max_size=25), st.data())
def test_plan_needs_only_whether_a_profile_has_user_ids(events: list[Event], data: st.DataObject) -> None:
    """A store may pass any non-empty subset of a profile's user ids (``Known``): same plan."""
    graph = IdentityGraph()
    for e in events[:-1]:
        graph.resolve(e)
    last = events[-1]
    ids = Identifiers.of(last)
    full = graph._known(last.tenant_id, ids.keys())
    subset = {
        key: Known(ref.profile_id, frozenset(data.draw(st.sets(st.sampled_from(sorted(ref.user_ids)), min_size=1))))
        if ref.user_ids
        else ref
        for key, ref in full.items()
    }
    options = {"at": last.timestamp, "message_id": last.message_id, "alias": last.type == "alias"}
    assert plan(last.tenant_id, ids, subset, **options) == plan(last.tenant_id, ids, full, **options)  # type: ignore[arg-type]
