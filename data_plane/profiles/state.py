"""The pure part of a profile: what an event adds to it and how two profiles fold into one."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from data_plane.events import Event
from data_plane.profiles.models import EVENT_TYPES

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
LAST_FIELDS = ("last_location", "last_device", "last_ip")


def to_us(moment: dt.datetime) -> int:
    """Event time in integer microseconds: exact, and equal on both dialects."""
    if moment.tzinfo is None:
        raise ValueError("event timestamps must be timezone-aware")
    return (moment - _EPOCH) // _MICROSECOND


def from_us(value: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=value)


def _lww_update(values: dict[str, Any], stamps: dict[str, int], updates: dict[str, Any], at: int) -> None:
    """Each key of ``updates`` is written unless the stored value is from a strictly later event.

    NOTE: values are shared with the event, not copied: decoded events are never changed in place
    (enrichment builds new dicts), and neither are a profile's values (a key is replaced whole).
    """
    for key, value in updates.items():
        if stamps.get(key, at) <= at:
            values[key] = value
            stamps[key] = at


def _lww_fold(
    values: dict[str, Any], stamps: dict[str, int], other: dict[str, Any], other_stamps: dict[str, int]
) -> None:
    """Fold another profile's values in: a key is taken only when strictly newer (ties keep the survivor's)."""
    for key, value in other.items():
        theirs = other_stamps.get(key, 0)
        if key not in values or theirs > stamps.get(key, 0):
            values[key] = value
            stamps[key] = theirs


def _object(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) and value else None


@dataclass(slots=True)
class ProfileState:
    """A profile's aggregates while a batch is applied; ``stamps`` is the persisted ``stamps`` column:
    ``{"traits": {key: us}, "groups": {group: {key: us}}, "last_location": us, ...}``.
    """

    profile_id: str
    user_id: str | None = None
    traits: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_seen_us: int | None = None
    last_seen_us: int | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVENT_TYPES, 0))
    last_location: dict[str, Any] | None = None
    last_device: dict[str, Any] | None = None
    last_ip: str | None = None
    stamps: dict[str, Any] = field(default_factory=dict)

    @property
    def event_count(self) -> int:
        return sum(self.counts.values())

    def _set_last(self, name: str, value: object, at: int) -> None:
        if value is not None and self.stamps.get(name, at) <= at:
            setattr(self, name, value)
            self.stamps[name] = at

    def add(self, event: Event) -> None:
        """Count the event and take what it says about the person.

        Traits (identify) and group traits (group, under ``groups[group_id]``) are merged key by key,
        last write by event timestamp wins (equal timestamps: the event applied later). The same
        rule keeps ``last_location`` (``context.geo``), ``last_device`` (``context.user_agent_parsed``)
        and ``last_ip`` (``context.ip`` as stored, so anonymised when the tenant asked); an event
        without one of them leaves the previous value.
        """
        at = to_us(event.timestamp)
        self.first_seen_us = at if self.first_seen_us is None else min(self.first_seen_us, at)
        self.last_seen_us = at if self.last_seen_us is None else max(self.last_seen_us, at)
        self.counts[event.type] = self.counts.get(event.type, 0) + 1
        if event.type == "alias" and event.user_id:
            self.user_id = event.user_id  # an alias names the id the person goes by from now on
        elif self.user_id is None and event.user_id:
            self.user_id = event.user_id
        if event.type == "identify" and event.traits:
            _lww_update(self.traits, self.stamps.setdefault("traits", {}), event.traits, at)
        if event.type == "group" and event.group_id:
            group = self.groups.setdefault(event.group_id, {})
            group_stamps = self.stamps.setdefault("groups", {}).setdefault(event.group_id, {})
            _lww_update(group, group_stamps, event.traits, at)
        context = event.context
        self._set_last("last_location", _object(context.get("geo")), at)
        self._set_last("last_device", _object(context.get("user_agent_parsed")), at)
        ip = context.get("ip")
        self._set_last("last_ip", ip if isinstance(ip, str) and ip else None, at)

    def fold(self, other: ProfileState) -> None:
        """Fold a merged-away profile into this survivor: counts summed, first seen min, last seen max,
        traits, groups and last_* by the later event time (ties keep the survivor's)."""
        for kind, count in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + count
        if other.first_seen_us is not None:
            mine = self.first_seen_us
            self.first_seen_us = other.first_seen_us if mine is None else min(mine, other.first_seen_us)
        if other.last_seen_us is not None:
            mine = self.last_seen_us
            self.last_seen_us = other.last_seen_us if mine is None else max(mine, other.last_seen_us)
        if self.user_id is None:
            self.user_id = other.user_id
        _lww_fold(self.traits, self.stamps.setdefault("traits", {}), other.traits, other.stamps.get("traits", {}))
        their_groups = other.stamps.get("groups", {})
        for group_id, traits in other.groups.items():
            group_stamps = self.stamps.setdefault("groups", {}).setdefault(group_id, {})
            _lww_fold(self.groups.setdefault(group_id, {}), group_stamps, traits, their_groups.get(group_id, {}))
        for name in LAST_FIELDS:
            theirs, value = other.stamps.get(name), getattr(other, name)
            if value is not None and theirs is not None and theirs > self.stamps.get(name, -1):
                setattr(self, name, value)
                self.stamps[name] = theirs
