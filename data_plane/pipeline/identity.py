"""Identity stitching: anonymous and user ids resolved to profiles, merged only by the rules below."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Literal, NamedTuple

import msgspec

from data_plane.events import Event

Kind = Literal["user", "anonymous"]
Key = tuple[Kind, str]


def profile_id_for(tenant_id: str, kind: Kind, identifier: str) -> str:
    """Deterministic id of the profile an identifier creates, so a replay creates the same ids.

    NOTE: unique because an identifier creates a profile only while it is unknown, and once known
    it always belongs to some profile (users never leave theirs; anonymous ids only move).
    """
    digest = hashlib.blake2b(f"{tenant_id}\0{kind}\0{identifier}".encode(), digest_size=12).hexdigest()
    return f"prof_{digest}"


class Known(NamedTuple):
    """What the rules need to know about one known identifier: its profile and that profile's user ids.

    NOTE: the rules only ask whether ``user_ids`` is empty (is the profile a known user's?), so a
    store may pass any non-empty subset of them; the SQL store does, to read fewer rows.
    """

    profile_id: str
    user_ids: frozenset[str]


class Merge(msgspec.Struct, frozen=True, kw_only=True):
    """Profile ``from_profile`` was folded into ``into_profile``; its ids now resolve to the latter."""

    tenant_id: str
    from_profile: str
    into_profile: str
    reason: Literal["identify", "alias"]
    at: dt.datetime
    message_id: str | None = None


class Relink(msgspec.Struct, frozen=True, kw_only=True):
    """An anonymous id moved to another profile (a device used by a second known user); no merge."""

    tenant_id: str
    anonymous_id: str
    from_profile: str
    to_profile: str
    at: dt.datetime
    message_id: str | None = None


class CreateProfile(NamedTuple):
    profile_id: str


class Attach(NamedTuple):
    """Point an identifier at a profile (it was unknown, or it is the subject of a Relink)."""

    kind: Kind
    identifier: str
    profile_id: str


Change = CreateProfile | Attach | Merge | Relink


class Plan(NamedTuple):
    profile_id: str
    changes: list[Change]


class _Planner:
    """Applies the rules to a local view of the few identifiers one event touches."""

    def __init__(self, tenant_id: str, known: Mapping[Key, Known], at: dt.datetime, message_id: str | None) -> None:
        self.tenant_id, self.at, self.message_id = tenant_id, at, message_id
        self.view: dict[Key, Known] = dict(known)
        self.changes: list[Change] = []

    def _retarget(self, old: set[str], new: Known) -> None:
        for key, ref in self.view.items():
            if ref.profile_id in old:
                self.view[key] = new

    def attach(self, kind: Kind, identifier: str, profile: str) -> str:
        current = self.view.get((kind, identifier))
        users = current.user_ids if current and current.profile_id == profile else None
        if users is None:
            users = next((r.user_ids for r in self.view.values() if r.profile_id == profile), frozenset())
        self.changes.append(Attach(kind, identifier, profile))
        joined = Known(profile, users | {identifier} if kind == "user" else users)
        self._retarget({profile}, joined)
        self.view[(kind, identifier)] = joined
        return profile

    def get_or_create(self, kind: Kind, identifier: str) -> str:
        ref = self.view.get((kind, identifier))
        if ref is not None:
            return ref.profile_id
        profile = profile_id_for(self.tenant_id, kind, identifier)
        self.changes.append(CreateProfile(profile))
        return self.attach(kind, identifier, profile)

    def merge(self, source: Known, target: Known, reason: Literal["identify", "alias"]) -> None:
        self.changes.append(
            Merge(
                tenant_id=self.tenant_id,
                from_profile=source.profile_id,
                into_profile=target.profile_id,
                reason=reason,
                at=self.at,
                message_id=self.message_id,
            )
        )
        self._retarget(
            {source.profile_id, target.profile_id}, Known(target.profile_id, source.user_ids | target.user_ids)
        )

    def link(self, user_id: str, anonymous_id: str) -> str:
        """identify(user, anonymous): the anonymous id joins the user, never two known users."""
        user, anon = self.view.get(("user", user_id)), self.view.get(("anonymous", anonymous_id))
        if anon is None:
            return self.attach("anonymous", anonymous_id, self.get_or_create("user", user_id))
        if user is not None and user.profile_id == anon.profile_id:
            return user.profile_id
        if not anon.user_ids:
            # An anonymous-only profile becomes (or joins) the user's: the usual sign-up/log-in.
            if user is None:
                return self.attach("user", user_id, anon.profile_id)
            self.merge(anon, user, "identify")
            return user.profile_id
        # The anonymous id already belongs to another known user (shared device): its future
        # events follow the new user; the two users' profiles and past events stay apart.
        target = self.get_or_create("user", user_id)
        self.changes.append(
            Relink(
                tenant_id=self.tenant_id,
                anonymous_id=anonymous_id,
                from_profile=anon.profile_id,
                to_profile=target,
                at=self.at,
                message_id=self.message_id,
            )
        )
        return self.attach("anonymous", anonymous_id, target)

    def alias(self, previous_id: str, user_id: str) -> str:
        """alias(previous, user): an explicit statement that both are one person, so profiles merge."""
        if previous_id == user_id:
            return self.get_or_create("user", user_id)
        previous = self.view.get(("user", previous_id)) or self.view.get(("anonymous", previous_id))
        user = self.view.get(("user", user_id))
        if previous is None:
            # Unseen previous id: Segment allows either an old user id or an anonymous id, so it is
            # registered as both, and later events under either resolve to this profile.
            profile = self.get_or_create("user", user_id)
            self.attach("user", previous_id, profile)
            return self.attach("anonymous", previous_id, profile)
        if user is None:
            return self.attach("user", user_id, previous.profile_id)
        if previous.profile_id != user.profile_id:
            self.merge(previous, user, "alias")
        return user.profile_id


class Identifiers(NamedTuple):
    user_id: str | None
    anonymous_id: str | None
    previous_id: str | None

    @classmethod
    def of(cls, event: Event) -> Identifiers:
        return cls(event.user_id or None, event.anonymous_id or None, event.previous_id or None)

    def keys(self) -> list[Key]:
        """The identifiers whose ``Known`` rows ``plan`` needs (a SQL store selects these for update)."""
        keys: list[Key] = []
        if self.user_id:
            keys.append(("user", self.user_id))
        if self.anonymous_id:
            keys.append(("anonymous", self.anonymous_id))
        if self.previous_id:
            keys += [("user", self.previous_id), ("anonymous", self.previous_id)]
        return keys


def plan(
    tenant_id: str,
    ids: Identifiers,
    known: Mapping[Key, Known],
    *,
    at: dt.datetime,
    message_id: str | None = None,
    alias: bool = False,
) -> Plan | None:
    """The persistence-agnostic core: the changes one event makes, from what is known of its ids.

    ``known`` holds the entries of ``ids.keys()`` that exist. Any event carrying both a user id and
    an anonymous id links them (as identify does); ``alias=True`` with a previous id merges first.
    ``None`` when the event names nobody.
    """
    planner = _Planner(tenant_id, known, at, message_id)
    user, anon, previous = ids
    if alias and user and previous:
        profile = planner.alias(previous, user)
        if anon:
            profile = planner.link(user, anon)
    elif user and anon:
        profile = planner.link(user, anon)
    elif user:
        profile = planner.get_or_create("user", user)
    elif anon:
        profile = planner.get_or_create("anonymous", anon)
    else:
        return None
    return Plan(profile, planner.changes)


class Profile(NamedTuple):
    profile_id: str
    user_ids: frozenset[str]
    anonymous_ids: frozenset[str]


class Resolution(NamedTuple):
    """The event's profile and what resolving it changed (merges let sessions follow the profile)."""

    profile_id: str
    merges: list[Merge]
    relinks: list[Relink]


class IdentityGraph:
    """In-memory identity state for many tenants; every key carries the tenant, so tenants never meet.

    Rules (``plan``): ``identify(user, anon)`` attaches the anonymous id to the user's profile, or
    folds an anonymous-only profile into the user's. Two profiles that each have a known user id
    merge only through ``alias``. An anonymous id already tied to user A that shows up with user
    B is *re-linked* to B: later events of that id go to B, A keeps its past; no merge happens.
    Every merge and re-link is kept, in order, with its reason, time and message id.
    """

    def __init__(self) -> None:
        self._owner: dict[tuple[str, Kind, str], str] = {}
        self._members: dict[tuple[str, str], tuple[set[str], set[str]]] = {}
        self._redirect: dict[tuple[str, str], str] = {}
        self._merges: dict[str, list[Merge]] = {}
        self._relinks: dict[str, list[Relink]] = {}

    # --- reads ------------------------------------------------------------------------------

    def profile_of(self, tenant_id: str, kind: Kind, identifier: str) -> str | None:
        return self._owner.get((tenant_id, kind, identifier))

    def canonical(self, tenant_id: str, profile_id: str) -> str:
        """The live profile an id resolves to now (itself, unless it was merged away)."""
        seen = profile_id
        while (nxt := self._redirect.get((tenant_id, seen))) is not None:
            seen = nxt
        if seen != profile_id:
            self._redirect[(tenant_id, profile_id)] = seen  # path compression for long merge chains
        return seen

    def profile(self, tenant_id: str, profile_id: str) -> Profile | None:
        live = self.canonical(tenant_id, profile_id)
        members = self._members.get((tenant_id, live))
        if members is None:
            return None
        return Profile(live, frozenset(members[0]), frozenset(members[1]))

    def profiles(self, tenant_id: str) -> list[Profile]:
        return [Profile(p, frozenset(u), frozenset(a)) for (t, p), (u, a) in self._members.items() if t == tenant_id]

    def merges(self, tenant_id: str) -> list[Merge]:
        return list(self._merges.get(tenant_id, ()))

    def relinks(self, tenant_id: str) -> list[Relink]:
        return list(self._relinks.get(tenant_id, ()))

    # --- writes -----------------------------------------------------------------------------

    def _known(self, tenant_id: str, keys: list[Key]) -> dict[Key, Known]:
        known = {}
        for kind, identifier in keys:
            profile = self._owner.get((tenant_id, kind, identifier))
            if profile is not None:
                known[(kind, identifier)] = Known(profile, frozenset(self._members[(tenant_id, profile)][0]))
        return known

    def _apply(self, tenant_id: str, changes: list[Change]) -> None:
        for change in changes:
            if isinstance(change, CreateProfile):
                self._members[(tenant_id, change.profile_id)] = (set(), set())
            elif isinstance(change, Attach):
                key = (tenant_id, change.kind, change.identifier)
                old = self._owner.get(key)
                if old is not None:
                    self._members[(tenant_id, old)][1 if change.kind == "anonymous" else 0].discard(change.identifier)
                self._owner[key] = change.profile_id
                self._members[(tenant_id, change.profile_id)][0 if change.kind == "user" else 1].add(change.identifier)
            elif isinstance(change, Merge):
                users, anons = self._members.pop((tenant_id, change.from_profile))
                into = self._members[(tenant_id, change.into_profile)]
                for identifier in users:
                    self._owner[(tenant_id, "user", identifier)] = change.into_profile
                for identifier in anons:
                    self._owner[(tenant_id, "anonymous", identifier)] = change.into_profile
                into[0].update(users)
                into[1].update(anons)
                self._redirect[(tenant_id, change.from_profile)] = change.into_profile
                self._merges.setdefault(tenant_id, []).append(change)
            else:  # Relink: the Attach that follows it moves the id.
                self._relinks.setdefault(tenant_id, []).append(change)

    def _run(self, tenant_id: str, ids: Identifiers, at: dt.datetime, message_id: str | None, alias: bool) -> Plan:
        result = plan(tenant_id, ids, self._known(tenant_id, ids.keys()), at=at, message_id=message_id, alias=alias)
        if result is None:
            raise ValueError("an identity step needs a user id or an anonymous id")
        self._apply(tenant_id, result.changes)
        return result

    def identify(
        self, tenant_id: str, user_id: str, anonymous_id: str, *, at: dt.datetime, message_id: str | None = None
    ) -> str:
        return self._run(tenant_id, Identifiers(user_id, anonymous_id, None), at, message_id, False).profile_id

    def alias(
        self, tenant_id: str, previous_id: str, user_id: str, *, at: dt.datetime, message_id: str | None = None
    ) -> str:
        return self._run(tenant_id, Identifiers(user_id, None, previous_id), at, message_id, True).profile_id

    def resolve(self, event: Event) -> Resolution | None:
        """The event's profile (``None`` if it names nobody), applying any link, alias or merge it implies."""
        ids = Identifiers.of(event)
        if not (ids.user_id or ids.anonymous_id):
            return None
        result = self._run(event.tenant_id, ids, event.timestamp, event.message_id, event.type == "alias")
        return Resolution(
            result.profile_id,
            [c for c in result.changes if isinstance(c, Merge)],
            [c for c in result.changes if isinstance(c, Relink)],
        )

    def stitch(self, event: Event) -> tuple[Event, Resolution | None]:
        """The event with ``context.profile_id`` set, and the resolution behind it."""
        resolution = self.resolve(event)
        if resolution is None:
            return event, None
        context = {**event.context, "profile_id": resolution.profile_id}
        return msgspec.structs.replace(event, context=context), resolution
