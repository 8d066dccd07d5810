"""Sessions per (tenant, profile): 30 minutes idle or 24 hours at most, an SDK's own session id kept."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping

import msgspec

from data_plane.events import Event

IDLE = dt.timedelta(minutes=30)
MAX_LENGTH = dt.timedelta(hours=24)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_MAX_SDK_ID = 200


def sdk_session_id(event: Event) -> str | None:
    """The session id an SDK sent: ``context.session_id``, then ``context.sessionId`` (Segment and
    RudderStack mobile SDKs), then ``properties.session_id``. Strings and integers (Amplitude-style
    millisecond ids) are accepted; empty, boolean and other values are ignored.
    """
    for value in (
        event.context.get("session_id"),
        event.context.get("sessionId"),
        event.properties.get("session_id"),
    ):
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            return str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()[:_MAX_SDK_ID]
    return None


def session_id_for(tenant_id: str, profile_id: str, opening_message_id: str) -> str:
    """Deterministic: the same events in the same order give the same ids after a crash and replay."""
    digest = hashlib.blake2b(f"{tenant_id}\0{profile_id}\0{opening_message_id}".encode(), digest_size=16)
    return f"ses_{digest.hexdigest()}"


class Session(msgspec.Struct, array_like=True):
    """One session's span in microseconds since the epoch; ``sdk`` when its id came from an SDK."""

    id: str
    start: int
    last: int
    sdk: bool = False


class _Entry(msgspec.Struct, array_like=True):
    tenant_id: str
    profile_id: str
    sessions: list[Session]


class Sessionizer:
    """Assigns a session id to each event of a (tenant, profile), in the order events arrive.

    An event without an SDK session id joins the most recently started of the profile's recent
    sessions it *fits*: less than ``idle`` from the session's span and the span, with it, shorter
    than ``max_length``; otherwise it opens a new session named after itself. Boundaries are
    exclusive: exactly 30 minutes of silence, or exactly 24 hours, starts a new session.

    Late events (timestamp before the profile's latest event) follow the same rule, so one that
    falls inside or near a recent session joins it, and one from long ago (an offline mobile
    batch) opens a session of its own that its neighbours then join; spans may grow backwards.
    Only ``recent`` sessions per profile are remembered (the least recently active is dropped).

    State lives in memory; ``snapshot``/``restore`` let a worker checkpoint it with its stream
    offset, since the ids depend on the state and the order of events, not on the clock.
    """

    def __init__(self, idle: dt.timedelta = IDLE, max_length: dt.timedelta = MAX_LENGTH, recent: int = 16) -> None:
        if idle <= dt.timedelta(0) or max_length <= dt.timedelta(0) or recent < 1:
            raise ValueError("idle and max_length must be positive, recent at least 1")
        self.idle_us = idle // _MICROSECOND
        self.max_us = max_length // _MICROSECOND
        self.recent = recent
        self._state: dict[tuple[str, str], list[Session]] = {}
        # Profiles whose sessions changed since ``take_changes``; persisted by the worker at flush.
        self._changed: set[tuple[str, str]] = set()

    def _fits(self, session: Session, t: int) -> bool:
        gap = session.start - t if t < session.start else t - session.last if t > session.last else 0
        return gap < self.idle_us and max(session.last, t) - min(session.start, t) < self.max_us

    def assign(self, tenant_id: str, profile_id: str, event: Event) -> str:
        """The event's session id; updates the profile's sessions."""
        t = (event.timestamp - _EPOCH) // _MICROSECOND
        key = (tenant_id, profile_id)
        sessions = self._state.get(key)
        if sessions is None:
            sessions = self._state[key] = []
        self._changed.add(key)
        sdk_id = sdk_session_id(event)
        chosen: Session | None = None
        if sdk_id is not None:
            chosen = next((s for s in sessions if s.id == sdk_id), None)
        else:
            # Most recently started wins; among equal starts, the one created last (hence >=).
            fits = self._fits
            for session in sessions:
                if fits(session, t) and (chosen is None or session.start >= chosen.start):
                    chosen = session
        if chosen is None:
            chosen = Session(
                sdk_id or session_id_for(tenant_id, profile_id, event.message_id), t, t, sdk_id is not None
            )
            sessions.append(chosen)
            if len(sessions) > self.recent:
                # Never the one just opened: its neighbours in a late batch are about to join it.
                sessions.remove(min(sessions[:-1], key=lambda s: s.last))
        else:
            chosen.start, chosen.last = min(chosen.start, t), max(chosen.last, t)
        return chosen.id

    def sessionize(self, event: Event, profile_id: str) -> Event:
        """The event with ``context.session_id`` set (an SDK's id is kept, as a string)."""
        session = self.assign(event.tenant_id, profile_id, event)
        return msgspec.structs.replace(event, context={**event.context, "session_id": session})

    def sessions(self, tenant_id: str, profile_id: str) -> list[Session]:
        return [msgspec.structs.replace(s) for s in self._state.get((tenant_id, profile_id), ())]

    def rekey(self, tenant_id: str, from_profile: str, into_profile: str) -> None:
        """Carry sessions over when identity merges profiles, so logging in does not cut a session.

        The merged-away profile's sessions count as the more recent ones on ties.
        """
        if from_profile == into_profile:
            return
        moved = self._state.pop((tenant_id, from_profile), None)
        if not moved:
            return
        merged = self._state.get((tenant_id, into_profile), []) + moved
        merged.sort(key=lambda s: s.last)  # stable: keeps the carried-over ones after on ties
        self._state[(tenant_id, into_profile)] = merged[-self.recent :]
        self._changed |= {(tenant_id, from_profile), (tenant_id, into_profile)}

    def evict(self, before: dt.datetime) -> int:
        """Forget profiles with no activity since ``before``; returns how many were dropped."""
        cutoff = (before - _EPOCH) // _MICROSECOND
        stale = [key for key, sessions in self._state.items() if all(s.last < cutoff for s in sessions)]
        for key in stale:
            del self._state[key]
        return len(stale)

    # --- persistence, one profile at a time -------------------------------------------------------

    def unknown(self, tenant_id: str, profile_ids: Iterable[str]) -> list[str]:
        """Profiles of the tenant this sessionizer holds no state for (to ``load`` before use)."""
        return sorted({p for p in profile_ids if (tenant_id, p) not in self._state})

    def load(self, tenant_id: str, states: Mapping[str, bytes]) -> None:
        """Take persisted sessions (from ``take_changes``) for profiles not held yet."""
        for profile_id, data in states.items():
            self._state.setdefault((tenant_id, profile_id), msgspec.msgpack.decode(data, type=list[Session]))

    def take_changes(self) -> dict[str, dict[str, bytes | None]]:
        """Per tenant, the changed profiles' sessions encoded (``None``: the profile has none left)."""
        changes: dict[str, dict[str, bytes | None]] = {}
        for tenant_id, profile_id in self._changed:
            sessions = self._state.get((tenant_id, profile_id))
            changes.setdefault(tenant_id, {})[profile_id] = msgspec.msgpack.encode(sessions) if sessions else None
        self._changed = set()
        return changes

    def restore_changes(self, changes: dict[str, dict[str, bytes | None]]) -> None:
        """Mark ``take_changes``' profiles changed again (their save failed)."""
        for tenant_id, profiles in changes.items():
            self._changed |= {(tenant_id, profile_id) for profile_id in profiles}

    def shrink(self, max_profiles: int) -> int:
        """Drop unchanged profiles' state when more than ``max_profiles`` are held (they are
        persisted, and loaded again when needed); returns how many were dropped."""
        if len(self._state) <= max_profiles:
            return 0
        clean = [key for key in self._state if key not in self._changed]
        for key in clean:
            del self._state[key]
        return len(clean)

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode([_Entry(t, p, s) for (t, p), s in self._state.items() if s])

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot's (taken with the same idle and max_length)."""
        entries = msgspec.msgpack.decode(data, type=list[_Entry])
        self._state = {(e.tenant_id, e.profile_id): e.sessions for e in entries}
