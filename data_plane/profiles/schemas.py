"""What the profile store returns: profiles, their merge and re-link history, pages of profiles."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import msgspec


class Profile(msgspec.Struct, frozen=True, kw_only=True):
    """One live profile of a tenant.

    ``user_id`` is the id the profile is known by: its first user id, replaced by the ``user_id``
    of an alias that resolves to it; ``user_ids`` and ``anonymous_ids`` (sorted) are every
    identifier that resolves here now. ``counts`` holds one entry per event type seen.
    """

    profile_id: str
    user_id: str | None
    user_ids: list[str]
    anonymous_ids: list[str]
    traits: dict[str, Any]
    groups: dict[str, dict[str, Any]]
    first_seen: dt.datetime
    last_seen: dt.datetime
    event_count: int
    counts: dict[str, int]
    last_location: dict[str, Any] | None = None
    last_device: dict[str, Any] | None = None
    last_ip: str | None = None


class MergeRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Profile ``from_profile`` was folded into ``into_profile`` by the event ``message_id``."""

    from_profile: str
    into_profile: str
    reason: Literal["identify", "alias"]
    at: dt.datetime
    message_id: str | None = None


class RelinkRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An anonymous id moved from one known user's profile to another's (no merge)."""

    anonymous_id: str
    from_profile: str
    to_profile: str
    at: dt.datetime
    message_id: str | None = None


class ProfilePage(msgspec.Struct, frozen=True, kw_only=True):
    """Profiles ordered by id; pass ``next_cursor`` back unchanged for the next page (``None``: the end)."""

    items: list[Profile]
    next_cursor: str | None = None
